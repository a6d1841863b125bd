"""gunicorn under baton (tests/it/frameworks.rs; README "Frameworks").

- Socket: gunicorn takes LISTEN_FDS/LISTEN_PID by itself and then ignores
  `bind` (left at its default, 127.0.0.1:8000: the test checks nothing
  listens but baton's socket).
- Readiness: READY=1 on $NOTIFY_SOCKET (a path by default) from when_ready,
  after preload_app imported the app.
- Stop: SIGTERM, graceful_timeout below baton's [stop] timeout.
- control_socket_disable (gunicorn >= 25.1, `--no-control-socket`): one
  fixed control socket path per user would be shared, and deleted, by the
  masters of two generations.
"""

import os
import socket

workers = 2
preload_app = True
graceful_timeout = 20
control_socket_disable = True


def when_ready(server):
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(b"READY=1")
