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
//    generation), let in-flight requests finish, close idle keep-alive
//    connections, then exit 0.
//
// Routes:
//   GET /           hello from generation G worker W pid P
//   GET /slow?ms=N  answers after N milliseconds (at most 60000)

'use strict';

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

function drain(trigger) {
  if (draining) {
    console.log(`express: ${trigger} while draining; closing idle connections again`);
    server.closeIdleConnections();
    return;
  }
  draining = true;
  console.log(`express: ${trigger}: draining ${tag}, ${inFlight.size} request(s) in flight`);
  for (const res of inFlight) {
    if (!res.headersSent) {
      res.set('Connection', 'close');
    }
    // A response whose headers already went out leaves an idle keep-alive
    // connection behind when it ends: close that too.
    res.on('finish', () => setImmediate(() => server.closeIdleConnections()));
  }
  // Stop accepting. This closes only this process's copy of the socket;
  // the callback runs once every connection has closed.
  server.close(() => {
    console.log(`express: drained, exiting`);
    // The IPC channel would keep the process alive: exit explicitly.
    process.exit(0);
  });
  // Keep-alive connections with no request in progress close now. Node
  // counts a connection that has not sent its first request yet as active,
  // so a request that is on its way is still answered.
  server.closeIdleConnections();
}

process.on('message', (message) => {
  if (message === 'shutdown') {
    drain('shutdown message');
  }
});
process.on('SIGTERM', () => drain('SIGTERM'));
process.on('SIGINT', () => drain('SIGINT'));
