"""Twisted Web (a WSGI app) on baton's socket (README "Frameworks"; by
hand: tests/it/frameworks.rs, `-- --ignored`). The app is
tests/frameworks/gunicorn/app.py (PYTHONPATH).

- The socket: `reactor.adoptStreamPort(3, AF_INET, site)` after making fd 3
  non-blocking, what the endpoint `systemd:domain=INET:index=0`
  (`twist web --listen …`) does. Without O_NONBLOCK, accept blocks the
  reactor when another worker took the connection, and requests time out.
- Readiness: the "serving on baton's socket" line below (baton's
  `mode = "log"`); Twisted has no sd_notify.
- Stop: on SIGTERM Twisted's own handler stops the reactor at once, which
  closes every connection, those whose request is in progress and those
  accepted but not read yet (the client gets no response). Here SIGTERM
  stops accepting (queued connections stay in baton's socket for the next
  generation), gives the accepted connections 0.5 s to send their request,
  waits for the requests in progress (up to 20 s), closes the idle
  connections, then stops the reactor.
"""

import signal
import socket
import time

from twisted.internet import fdesc, reactor
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from app import app

channels = set()


class TrackedSite(Site):
    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        lost = channel.connectionLost

        def connection_lost(reason):
            channels.discard(channel)
            return lost(reason)

        channel.connectionLost = connection_lost
        channels.add(channel)
        return channel


site = TrackedSite(WSGIResource(reactor, reactor.getThreadPool(), app))
fdesc.setNonBlocking(3)  # as the endpoint does: a blocking accept would stall the reactor
port = reactor.adoptStreamPort(3, socket.AF_INET, site)


def drain(deadline):
    if any(c.requests for c in channels) and time.monotonic() < deadline:
        reactor.callLater(0.05, drain, deadline)
        return
    for channel in list(channels):
        channel.transport.loseConnection()
    reactor.callLater(0.1, reactor.stop)


def stop():
    port.stopReading()  # stop accepting on baton's socket
    reactor.callLater(0.5, drain, time.monotonic() + 20)


signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stop))
reactor.callWhenRunning(lambda: print("twisted: serving on baton's socket", flush=True))
reactor.run(installSignalHandlers=False)
