"""waitress on baton's socket (README "Frameworks"; by hand:
tests/it/frameworks.rs, `-- --ignored`). waitress-serve cannot take an fd;
create_server(sockets=...) can. The app is tests/frameworks/gunicorn/app.py
(PYTHONPATH)."""

import socket

import waitress
from app import app

server = waitress.create_server(app, sockets=[socket.socket(fileno=3)])
server.print_listen("Serving on http://{}:{}")
server.run()
