"""A bare WSGI app for tests/it/frameworks.rs: GET / answers
`hello from generation G pid P`. With BROKEN_RELEASE set it cannot be
imported (the broken release; preload_app makes that fail before READY=1)."""

import os

if os.environ.get("BROKEN_RELEASE"):
    raise RuntimeError("this release is broken (BROKEN_RELEASE is set)")

GENERATION = os.environ.get("BATON_GENERATION", "-")


def app(environ, start_response):
    body = f"hello from generation {GENERATION} pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
