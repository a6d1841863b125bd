"""uvicorn on baton's socket (tests/it/frameworks.rs; README "Frameworks").

- The socket: `uvicorn --fd 3` wraps the fd as AF_UNIX, so asyncio never
  sets TCP_NODELAY on the connections (about 40 ms per keep-alive request).
  socket(fileno=3) reads the real family (AF_INET) from the fd, and
  Server.run(sockets=...) serves it as is.
- Readiness: the "serving on baton's socket" line below, after startup
  (baton's `[readiness] mode = "log"`); uvicorn has no sd_notify.
- Stop (SIGTERM): uvicorn's shutdown closes every connection that has no
  request in progress, including one it accepted a moment ago whose request
  it has not read yet: closed with unread data, the client gets a reset
  (strace: accept4 -> 7, close(3), close(7), no recvfrom). That was the
  loss under connection-per-request load across reloads. Here the server
  stops accepting first (queued connections stay in baton's socket for the
  next generation), and the connections already accepted get 0.5 s to send
  their request before uvicorn's own shutdown runs.
"""

import asyncio
import logging
import socket

import uvicorn

log = logging.getLogger("uvicorn.error")


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        log.info("serving on baton's socket %s", sockets[0].getsockname())

    async def shutdown(self, sockets=None):
        for server in self.servers:
            server.close()
        await asyncio.sleep(0.5)
        await super().shutdown(sockets)


Server(uvicorn.Config("app:app", lifespan="off", timeout_graceful_shutdown=20)).run(sockets=[socket.socket(fileno=3)])
