// An Express app written the way baton expects a Node app to be. It also runs
// alone (`node server.js`), under PM2, or under systemd socket activation.
//
// Under baton:
//
// 1. It listens on the socket baton passes (fd 3, announced by LISTEN_FDS)
//    instead of binding a port. Every generation of workers gets that same
//    socket, so the port never closes during a reload.
// 2. It says when it is ready with process.send('ready'), over the Node IPC
//    channel that baton opens when [readiness] mode = "node-ipc" (as PM2's
//    wait_ready). Until then baton keeps the previous generation serving.
// 3. It drains on the 'shutdown' message ([stop] message = "shutdown", as
//    PM2's shutdown_with_message) and on SIGTERM/SIGINT: stop accepting (the
//    connections still queued in the shared socket are left to the next
//    generation), let in-flight requests finish, tell each keep-alive
//    client "Connection: close" on its next answer, close a connection only
//    after 1.5 s without a request, then exit 0. (Closing idle keep-alive
//    connections at once, the usual drain, loses the request a busy client
//    had already sent on one: README "Keep-alive and the drain".)
//
// Routes:
//   GET /           hello from generation G worker W pid P
//   GET /slow?ms=N  answers after N milliseconds (at most 60000)

'use strict';

const net = require('node:net');
const express = require('express');

const generation = process.env.BATON_GENERATION || '-';
const worker = process.env.BATON_WORKER || '-';
const instance = process.env.NODE_APP_INSTANCE || '-';
const tag = `generation ${generation} worker ${worker} pid ${process.pid}`;

let draining = false;
// Responses being written, so that a drain can tell their keep-alive clients
// not to send another request on the connection.
const inFlight = new Set();

const app = express();

app.use((req, res, next) => {
  inFlight.add(res);
  res.on('close', () => inFlight.delete(res));
  // The quiet time of a keep-alive connection starts when its answer ends.
  res.on('finish', () => connections.has(req.socket) && connections.set(req.socket, Date.now()));
  if (draining) {
    res.set('Connection', 'close');
  }
  next();
});

app.get('/', (req, res) => {
  res.type('text').send(`hello from ${tag}\n`);
});

app.get('/slow', (req, res) => {
  const ms = Math.min(Number.parseInt(req.query.ms, 10) || 0, 60000);
  setTimeout(() => res.type('text').send(`slow done after ${ms} ms\n`), ms);
});

// The one line an existing app changes: listen on the passed socket when
// there is one. (LISTEN_PID is not checked: baton sets it to this process,
// and under `node --inspect` or a wrapper script the pid may differ.)
const where = process.env.LISTEN_FDS ? { fd: 3 } : { port: Number(process.env.PORT) || 3000 };
const server = app.listen(where, () => {
  const how = where.fd ? 'fd 3 from LISTEN_FDS' : `port ${where.port}`;
  console.log(`express: ${tag} (NODE_APP_INSTANCE ${instance}) listening on ${how}`);
  // process.send exists only when a parent opened an IPC channel (baton's
  // node-ipc mode, PM2, child_process.fork).
  if (process.send) {
    process.send('ready');
    console.log('express: ready sent over IPC');
  }
});

server.on('error', (err) => {
  console.error(`express: cannot listen: ${err.message}`);
  process.exit(1);
});

// How long a keep-alive connection may sit without a request during a
// drain before it is closed (BATON_EXAMPLE_IDLE_GRACE_MS; 0 = at once, the
// usual drain, which loses a request per connection under keep-alive load).
const IDLE_GRACE_MS = Number(process.env.BATON_EXAMPLE_IDLE_GRACE_MS ?? 1500);

// Every open connection, with when it last carried a byte or a response.
const connections = new Map();
server.on('connection', (socket) => {
  connections.set(socket, Date.now());
  socket.on('data', () => connections.set(socket, Date.now()));
  socket.on('close', () => connections.delete(socket));
});
function busy(socket) {
  for (const res of inFlight) {
    if (res.socket === socket) {
      return true;
    }
  }
  return false;
}

function drain(trigger) {
  if (draining) {
    console.log(`express: ${trigger} while draining`);
    return;
  }
  draining = true;
  console.log(`express: ${trigger}: draining ${tag}, ${inFlight.size} request(s) in flight`);
  // A response still to be written tells its client to close the
  // connection after it. The requests that arrive from now on get the same
  // (the middleware at the top), so each keep-alive client learns on its
  // next answer, and nothing it sent is lost.
  for (const res of inFlight) {
    if (!res.headersSent) {
      res.set('Connection', 'close');
    }
  }
  // Stop accepting: only this process's copy of the socket closes; the
  // connections still queued in it are left to the next generation. This is
  // net.Server's close, not http.Server's: since Node 19 the latter also
  // closes every idle keep-alive connection at once, and a client may have
  // sent its next request on one of them already.
  net.Server.prototype.close.call(server, () => {
    console.log('express: drained, exiting');
    // The IPC channel would keep the process alive: exit explicitly.
    process.exit(0);
  });
  // A connection is closed only once it has been quiet for the grace: no
  // request in progress and no byte received. A sweep that runs late (the
  // process was stalled: a loaded machine, a long GC) closes nothing: bytes
  // that arrived meanwhile are still unread, so a connection would look
  // quiet while its request waits, and closing it would reset that request.
  // The next sweep, after the event loop has read them, decides. The first
  // sweep counts as late for the same reason.
  let lastSweep;
  const sweep = () => {
    const now = Date.now();
    const late = lastSweep === undefined || now - lastSweep > Math.max(IDLE_GRACE_MS / 2, 100);
    lastSweep = now;
    for (const [socket, last] of connections) {
      if (!late && !busy(socket) && now - last >= IDLE_GRACE_MS) {
        socket.destroy();
      }
    }
  };
  sweep();
  setInterval(sweep, 100).unref();
}

process.on('message', (message) => {
  if (message === 'shutdown') {
    drain('shutdown message');
  }
});
process.on('SIGTERM', () => drain('SIGTERM'));
process.on('SIGINT', () => drain('SIGINT'));
