"""A WSGI app for the gunicorn example. Nothing in it knows about baton:
gunicorn takes the socket and does the readiness and the drain (see
gunicorn.conf.py).

Routes:
    GET /           hello from generation G worker W pid P (gunicorn master M)
    GET /slow?ms=N  answers after N milliseconds (at most 60000)
"""

import os
import time
from urllib.parse import parse_qs

GENERATION = os.environ.get("BATON_GENERATION", "-")
WORKER = os.environ.get("BATON_WORKER", "-")


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        body = (
            f"hello from generation {GENERATION} worker {WORKER} pid {os.getpid()} "
            f"(gunicorn master {os.getppid()})\n"
        )
    elif path == "/slow":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            ms = min(int(query.get("ms", ["0"])[0]), 60000)
        except ValueError:
            ms = 0
        time.sleep(ms / 1000)
        body = f"slow done after {ms} ms\n"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
