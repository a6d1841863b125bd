"""daphne on baton's socket (README "Frameworks"; by hand:
tests/it/frameworks.rs, `-- --ignored`). The app is
tests/frameworks/uvicorn/app.py (PYTHONPATH).

- The socket: the endpoint `fd:fileno=3`, what `daphne --fd 3` builds.
- Readiness: the "serving on baton's socket" line below (baton's
  `mode = "log"`); daphne has no sd_notify.
- Stop: on SIGTERM daphne (Twisted's handler) stops the reactor at once: it
  cancels the application of every request in progress and closes every
  connection, including those it accepted but has not read yet, so the
  client gets a connection closed without a response. Here SIGTERM stops
  accepting (queued connections stay in baton's socket for the next
  generation), gives the accepted connections 0.5 s to send their request,
  waits for the requests in progress (up to 20 s), closes the idle
  connections, then stops the reactor.
"""

import signal
import sys
import time

from daphne.server import Server
from twisted.internet import reactor
from twisted.internet.tcp import Port

from app import app

server = Server(app, endpoints=["fd:fileno=3"], signal_handlers=False)


def ready():
    reactor.callWhenRunning(lambda: print("daphne: serving on baton's socket", flush=True))


server.ready_callable = ready


def busy(protocol, details):
    if "disconnected" in details:
        return False
    app_running = "application_instance" in details and not details["application_instance"].done()
    return app_running or bool(getattr(protocol, "requests", None))


def drain(deadline):
    live = {p: d for p, d in server.connections.items() if "disconnected" not in d}
    if any(busy(p, d) for p, d in live.items()) and time.monotonic() < deadline:
        reactor.callLater(0.05, drain, deadline)
        return
    for protocol in live:
        protocol.transport.loseConnection()
    reactor.callLater(0.1, reactor.stop)


def stop():
    for reader in reactor.getReaders():
        if isinstance(reader, Port):
            reader.stopReading()  # stop accepting on baton's socket
    reactor.callLater(0.5, drain, time.monotonic() + 20)


signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stop))
server.run()
sys.exit(0)
