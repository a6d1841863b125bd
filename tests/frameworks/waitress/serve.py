"""waitress on baton's socket (README "Frameworks"; by hand:
tests/it/frameworks.rs, `-- --ignored`). The app is
tests/frameworks/gunicorn/app.py (PYTHONPATH).

- The socket: waitress-serve cannot take an fd; create_server(sockets=...)
  can.
- Readiness: the "Serving on" line below (baton's `mode = "log"`).
- Stop: waitress has no SIGTERM handler, so Python's default killed it at
  once: requests in progress and connections accepted but not yet read
  were lost (7 of 9,101 requests over 8 reloads: closed without a
  response, a short body, a reset). Here SIGTERM stops accepting (queued
  connections stay in baton's socket for the next generation), gives the
  accepted connections 0.5 s to send their request, lets the requests in
  progress finish (up to 20 s), then exits.
"""

import signal
import socket
import sys
import time

import waitress
from app import app

sock = socket.socket(fileno=3)
server = waitress.create_server(app, sockets=[sock])
print("Serving on http://%s:%d" % sock.getsockname(), flush=True)

stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))


def step():
    server.asyncore.loop(timeout=0.1, map=server._map, use_poll=True, count=1)


def busy():
    return any(ch.requests or ch.total_outbufs_len for ch in list(server.active_channels.values()))


while not stopping:
    step()
server.accepting = False
grace, deadline = time.monotonic() + 0.5, time.monotonic() + 20
while time.monotonic() < grace or (busy() and time.monotonic() < deadline):
    step()
server.task_dispatcher.shutdown()
sys.exit(0)
