"""hypercorn on baton's socket (README "Frameworks"; by hand:
tests/it/frameworks.rs, `-- --ignored`). The app is
tests/frameworks/uvicorn/app.py (PYTHONPATH).

`hypercorn --bind fd://3` serves baton's socket, but at shutdown it closes
every connection that has no request in progress, including one it accepted
a moment ago whose request it has not read yet: the client sees the
connection closed without a response (4 of 10,384 requests over 8 reloads).
This launcher runs hypercorn in-process (no child workers to signal), and on
SIGTERM first stops accepting (queued connections stay in baton's socket for
the next generation), gives the connections already accepted 0.5 s to send
their request, then lets hypercorn shut down gracefully.
"""

import asyncio
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config

from app import app

config = Config()
config.bind = ["fd://3"]
config.graceful_timeout = 20


async def main():
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    async def shutdown_trigger():
        await stopping.wait()
        loop.remove_reader(3)  # stop accepting on baton's socket
        await asyncio.sleep(0.5)

    await serve(app, config, shutdown_trigger=shutdown_trigger)


asyncio.run(main())
