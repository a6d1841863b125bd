"""gunicorn settings for running under baton (and anywhere else).

- The socket: baton passes it as fd 3 with LISTEN_FDS, and LISTEN_PID set to
  the worker's own pid, which is gunicorn's master here. gunicorn honours
  that by itself (as under systemd socket activation) and then ignores
  `bind`. Without LISTEN_FDS, it binds `bind`, so it also runs on its own.
- Readiness: READY=1 on $NOTIFY_SOCKET from the when_ready hook below.
  preload_app imports the app in the master before that, so a release that
  cannot even be imported fails before it is ready, and baton's reload fails
  with the old generation still serving.
- Stop: baton sends SIGTERM; gunicorn stops accepting, lets its workers finish
  the requests they are on for up to graceful_timeout, and exits. Keep
  graceful_timeout below baton's [stop] timeout.
- Keep-alive: the sync worker answers every request with "Connection: close"
  and closes the connection after it, so a reload never closes a connection
  a client is about to use: 0 failed requests over 20 reloads under
  keep-alive load (tests/it/python.rs). The price is a new connection per
  request. gthread workers keep connections alive; on stop they answer the
  next request on each with "Connection: close" and close one only once it
  has been idle for its keep-alive timeout (2 s by default), 2 s after the
  stop at the latest (gunicorn 27). See the README's "Keep-alive and the
  drain".
"""

import os
import socket

bind = [os.environ.get("BIND", "127.0.0.1:8000")]  # used only without LISTEN_FDS
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "sync"
preload_app = True
graceful_timeout = 20
timeout = 30

# gunicorn (since 25.1) opens a control socket at one fixed path per user.
# Under baton several gunicorn masters run at once (workers, and two
# generations during a reload), and one that exits would delete the socket of
# another. baton status and baton reload do that job.
control_socket_disable = True


def sd_notify(message):
    """Sends one datagram to $NOTIFY_SOCKET, a path or an abstract @name."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def when_ready(server):
    # Called in the master once it has its listening socket and the app is
    # loaded, right before it forks the workers. Connections that arrive in
    # the meantime wait in the socket's queue.
    listeners = ", ".join(str(listener) for listener in server.LISTENERS)
    sd_notify(f"READY=1\nSTATUS=gunicorn {os.getpid()}: {server.num_workers} workers on {listeners}")
