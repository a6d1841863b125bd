"""A bare ASGI app for tests/it/frameworks.rs: GET / answers
`hello from generation G pid P`. With BROKEN_RELEASE set it cannot be
imported (the broken release)."""

import os

if os.environ.get("BROKEN_RELEASE"):
    raise RuntimeError("this release is broken (BROKEN_RELEASE is set)")

GENERATION = os.environ.get("BATON_GENERATION", "-")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"hello from generation {GENERATION} pid {os.getpid()}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
