// Test fixture for tests/node.rs: a worker that abuses baton's IPC channel.
// It serves HTTP on fd 3 like a real app, but around process.send('ready') it
// sends everything a buggy or hostile app could: raw garbage bytes written
// straight to the channel's fd, objects, numbers, nested arrays, 1 MB strings,
// floods of thousands of messages, and a 2 MB line with no end. baton must
// ignore all of it and keep working. It logs "junk done" when it is through.
//
// With JUNK_FOREVER_WORKER=N, worker N then keeps flooding whole JSON lines
// for as long as it lives, as fast as baton reads, and logs how much every
// 2 s ("flooded N MB so far").
//
// On SIGUSR2 it sends a message that carries a file descriptor (SCM_RIGHTS,
// process.send(message, handle)), then writes 2 MB more straight to the fd,
// and logs "wrote 2 MB after the handle" once all of it went out, which
// needs baton to keep reading past the message with the fd. The first time
// the channel is full after the handle, it creates the file named by
// JUNK_FULL_FILE, if set.
//
// JUNK_SKIP=1 leaves out the junk around ready (for the SIGUSR2 test, which
// wants nothing else in the channel).

'use strict';

const fs = require('fs');
const http = require('http');
const net = require('net');

const tag = `generation ${process.env.BATON_GENERATION} worker ${process.env.BATON_WORKER} pid ${process.pid}`;
// Node removes NODE_CHANNEL_FD from process.env once it has opened the channel.
const channelFd = process.channel ? process.channel.fd : Number.NaN;
const log = (line) => console.log(`junk: ${tag}: ${line}`);

if (!process.send || !Number.isInteger(channelFd)) {
  console.error(`junk: no IPC channel (process.channel is ${process.channel})`);
  process.exit(2);
}

// Bytes written past Node's own framing. Every chunk ends with a newline so
// that the framing is back in step before the next real message.
function rawGarbage() {
  return [
    Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x0a]),
    Buffer.from('{"cmd": "NODE_HANDLE", "type": "net.Native", "msg": \n'),
    Buffer.from('{not json at all}\n'),
    Buffer.from('"unterminated string\n'),
    Buffer.from('\n\n\n\r\n'),
    Buffer.from(`${'['.repeat(100000)}\n`),
    Buffer.from(`${'{"a":'.repeat(50000)}1${'}'.repeat(50000)}\n`),
    Buffer.concat([Buffer.from('"'), Buffer.alloc(4096, 0xc3), Buffer.from('"\n')]),
  ];
}

// Straight to the fd, bypassing Node. The fd is non-blocking: retry EAGAIN.
function writeRaw(buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(channelFd, buf, off);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  }
}

function nested(depth) {
  let v = [1];
  for (let i = 0; i < depth; i++) v = [v, i, 'x'];
  return v;
}

const megabyte = 'm'.repeat(1024 * 1024);
function junkMessages() {
  return [
    { hello: 'baton' },
    { cmd: 'NODE_SOMETHING', data: [1, 2, 3] },
    { type: 'process:msg', data: { success: true } },
    42, -1, 0, 1.5e308, 123456789012345678901234567890,
    null, true, false,
    'shutdown', 'online', '',
    nested(10), nested(500), [[[[[]]]]],
    megabyte, `${megabyte}${megabyte}`, { big: megabyte },
  ];
}

// Sends each message with process.send and resolves when the last one has
// been written to the channel.
function sendAll(messages) {
  return new Promise((resolve, reject) => {
    if (messages.length === 0) return resolve();
    messages.forEach((m, i) => {
      process.send(m, (err) => {
        if (err) reject(err);
        else if (i === messages.length - 1) resolve();
      });
    });
  });
}

const flood = (n, from) => Array.from({ length: n }, (_, i) => ({ seq: from + i, pad: 'f'.repeat(i % 64) }));

const server = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from ${tag}\n`);
});

let draining = false;
process.on('message', (m) => {
  if (m === 'shutdown' && !draining) {
    draining = true;
    log('shutdown message: draining');
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  }
});
process.on('SIGTERM', () => {
  draining = true;
  log('SIGTERM');
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

async function main() {
  await new Promise((resolve) => server.listen({ fd: 3 }, resolve));

  const junk = process.env.JUNK_SKIP !== '1';
  if (junk) {
    // Before ready.
    for (const chunk of rawGarbage()) writeRaw(chunk);
    await sendAll(junkMessages());
    await sendAll(flood(5000, 0));
    for (const chunk of rawGarbage()) writeRaw(chunk);
  }

  await sendAll(['ready']);
  log('sent ready after the junk');

  if (junk) {
    // After ready.
    await sendAll(junkMessages());
    await sendAll(flood(5000, 5000));
    for (const chunk of rawGarbage()) writeRaw(chunk);
    // Garbage in the middle of Node's own messages, while they are queued.
    process.send({ between: megabyte });
    writeRaw(Buffer.from('\x01\x02garbage in the middle\n'));
    await sendAll([{ after: 'the middle' }]);

    // A 2 MB line that never ends, straight to the fd.
    writeRaw(Buffer.alloc(2 * 1024 * 1024, 'z'));
    writeRaw(Buffer.from('\n'));
  }
  log('junk done');

  if (process.env.JUNK_FOREVER_WORKER === process.env.BATON_WORKER) {
    // Raw bytes (whole JSON lines), as fast as baton reads, without ever
    // blocking the event loop.
    const line = Buffer.from(`${JSON.stringify({ forever: 'x'.repeat(200) })}\n`.repeat(200));
    let sent = 0;
    const again = () => {
      if (draining) return;
      try {
        sent += fs.writeSync(channelFd, line);
        setImmediate(again);
      } catch (err) {
        if (err.code !== 'EAGAIN') return log(`flood stopped: ${err.code}`);
        setTimeout(again, 1);
      }
    };
    again();
    setInterval(() => log(`flooded ${(sent / 1048576).toFixed(1)} MB so far`), 2000).unref();
  }
}

// Writes `buf` straight to the channel's fd without blocking the event loop
// (the fd is non-blocking; on EAGAIN, try again in a millisecond).
function writeRawAsync(buf, onFull) {
  return new Promise((resolve, reject) => {
    let off = 0;
    const more = () => {
      try {
        while (off < buf.length) off += fs.writeSync(channelFd, buf, off);
        resolve();
      } catch (err) {
        if (err.code !== 'EAGAIN') return reject(err);
        if (onFull) onFull();
        onFull = null;
        setTimeout(more, 1);
      }
    };
    more();
  });
}

process.on('SIGUSR2', async () => {
  // Node waits for an acknowledgement of a handle before it sends any other
  // message, and baton sends none; raw writes are all that can follow.
  const extra = net.createServer();
  await new Promise((resolve) => extra.listen({ host: '127.0.0.1', port: 0 }, resolve));
  const inode = fs.fstatSync(extra._handle.fd).ino;
  process.send('take this fd', extra);
  log(`sent a handle: socket:[${inode}]`);
  const lines = Buffer.from(`${JSON.stringify({ after: 'the handle', pad: 'h'.repeat(1000) })}\n`.repeat(2000));
  await writeRawAsync(lines, () => {
    if (process.env.JUNK_FULL_FILE) fs.writeFileSync(process.env.JUNK_FULL_FILE, 'full\n');
  });
  log('wrote 2 MB after the handle');
});

main().catch((err) => {
  console.error(`junk: ${tag}: ${err.stack}`);
  process.exit(1);
});
