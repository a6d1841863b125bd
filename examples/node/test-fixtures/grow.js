// Test fixture for tests/node.rs: a worker whose memory keeps growing, for
// baton's [limits] memory. It serves HTTP on fd 3, says ready over IPC, and
// then allocates GROW_MB_PER_SEC megabytes a second (default 10) and keeps
// them. It drains on the 'shutdown' message and on SIGTERM, and logs which.
//
// The "ready" and "draining" lines carry the CLOCK_MONOTONIC time in ms (the
// same clock in every process), so that a test can tell which came first
// even when baton passes on the lines of two workers out of order.

'use strict';

const http = require('http');

const tag = `generation ${process.env.BATON_GENERATION} worker ${process.env.BATON_WORKER} pid ${process.pid}`;
const log = (line) => console.log(`grow: ${tag}: ${line}`);
const perSecond = Number(process.env.GROW_MB_PER_SEC || 10);
const monotonic = () => `monotonic ${(Number(process.hrtime.bigint() / 1000n) / 1000).toFixed(3)} ms`;

const server = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from ${tag}\n`);
});

const kept = [];
const started = Date.now();
server.listen({ fd: 3 }, () => {
  // Logged first: baton may act on the message before this line is out.
  log(`ready (${monotonic()})`);
  process.send('ready');
  // 1 MB every 1000/perSecond ms. Filled, so that every page is resident.
  setInterval(() => kept.push(Buffer.alloc(1024 * 1024, kept.length % 251)), 1000 / perSecond);
  setInterval(() => {
    const rss = process.memoryUsage.rss() / 1048576;
    log(`rss ${rss.toFixed(0)} MiB after ${((Date.now() - started) / 1000).toFixed(1)} s, ${kept.length} MB kept`);
  }, 1000);
});

let draining = false;
function drain(trigger) {
  log(`${trigger}: draining (${monotonic()})`);
  if (draining) return;
  draining = true;
  server.close(() => {
    log('drained, exiting');
    process.exit(0);
  });
  server.closeIdleConnections();
}
process.on('message', (m) => {
  if (m === 'shutdown') drain('shutdown message');
});
process.on('SIGTERM', () => drain('SIGTERM'));
