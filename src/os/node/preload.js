// baton's Node preload (README "Node apps without code changes").
//
// baton loads it with `--require` in NODE_OPTIONS when the config says
// [node] inherit_listen = true. It lets an app written for PM2 run
// unchanged:
//
// - listen(port), listen(port, host), listen({port, host}) and listen(path)
//   (through http, https, http2, express, fastify, koa: they all end in
//   net.Server.prototype.listen) use the socket baton passed (fd 3..,
//   LISTEN_FDS) with that port or path, or the only one there is. A listen
//   that matches none fails, naming the sockets baton holds; it never binds
//   a socket of its own. listen({fd}) and listen(handle) are left alone; a
//   listen by the cluster module's primary (for its workers) fails.
// - Readiness: unless BATON_NODE_WAIT_READY=1 (PM2's wait_ready: the app
//   sends 'ready' itself), the first 'listening' of a mapped server sends
//   'ready' over the IPC channel.
// - With BATON_NODE_DRAIN=1, the stop signal (BATON_STOP_SIGNAL) or the stop
//   message (BATON_STOP_MESSAGE) starts a drain that closes no connection a
//   client may be using: the mapped servers stop accepting (connections
//   still queued stay in the shared socket for the other generation), each
//   connection's next response says `Connection: close`, a connection is
//   closed by the server only after it has been idle for the grace
//   (BATON_NODE_DRAIN_GRACE_MS), and the process exits once none is left,
//   unless the app handles the signal itself (then the app decides when).
//
// It reads only baton's variables, and does nothing in a process whose pid
// is not LISTEN_PID (a child of the worker).

'use strict';

(function batonPreload() {
  const env = process.env;
  const fdCount = Number.parseInt(env.LISTEN_FDS || '', 10);
  if (env.LISTEN_PID !== String(process.pid) || !(fdCount > 0)) {
    return;
  }
  const net = require('net');
  const os = require('os');
  const path = require('path');
  if (net.Server.prototype.listen.batonPatched) {
    return;
  }

  const names = (env.LISTEN_FDNAMES || '').split(':');
  let addresses = [];
  try {
    addresses = JSON.parse(env.BATON_LISTEN_ADDRESSES || '[]');
  } catch (_) {
    addresses = [];
  }
  const sockets = [];
  for (let i = 0; i < fdCount; i++) {
    const address = typeof addresses[i] === 'string' ? addresses[i] : '?';
    sockets.push({ fd: 3 + i, name: names[i] || 'unknown', address, port: portOf(address), used: false });
  }
  const waitReady = env.BATON_NODE_WAIT_READY === '1';
  const drainOn = env.BATON_NODE_DRAIN === '1';
  const grace = Math.max(0, Number.parseInt(env.BATON_NODE_DRAIN_GRACE_MS || '', 10) || 1500);
  const stopSignal = env.BATON_STOP_SIGNAL || 'SIGTERM';
  const stopMessage = env.BATON_STOP_MESSAGE || null;

  function portOf(address) {
    const m = /^(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.%\w]*\]):(\d+)$/.exec(address);
    return m ? Number(m[1]) : null;
  }

  function log(line) {
    try {
      process.stderr.write(`baton: ${line}\n`);
    } catch (_) {
      // stderr gone: nothing to tell.
    }
  }

  function describe(s) {
    return `fd ${s.fd} (${s.name}, ${s.address})`;
  }

  function held() {
    return sockets.map(describe).join(', ');
  }

  // What a listen() call asks for: { kind: 'pass' } for fd and handle
  // listens, else the port (a number, 0 or null for "any") or the path, the
  // host, and the options to keep. Mirrors Node's normalizeArgs.
  function requested(args) {
    const first = args[0];
    if (first !== null && typeof first === 'object') {
      if (first.fd !== undefined || first._handle !== undefined || first.handle !== undefined) {
        return { kind: 'pass' };
      }
      if (first.path !== undefined && first.path !== null) {
        return { kind: 'path', path: String(first.path), options: first };
      }
      return { kind: 'port', port: first.port, host: first.host, options: first };
    }
    // Node's isPipeName: a string is a path unless Number() makes it a
    // number >= 0, so '8080', ' 80 ', '0x4774' and '1e3' are ports.
    if (typeof first === 'string' && !(Number(first) >= 0)) {
      return { kind: 'path', path: first, options: {} };
    }
    const host = typeof args[1] === 'string' ? args[1] : undefined;
    return { kind: 'port', port: typeof first === 'function' ? undefined : first, host, options: {} };
  }

  function callbackOf(args) {
    const last = args[args.length - 1];
    return typeof last === 'function' ? last : undefined;
  }

  function shown(req) {
    if (req.kind === 'path') return JSON.stringify(req.path);
    const port = req.port === undefined || req.port === null ? '' : String(req.port);
    return req.host ? `${port}, ${JSON.stringify(req.host)}` : port;
  }

  function unixPathOf(address) {
    return address.startsWith('/') ? address : null;
  }

  // The inherited socket for a request, or an error message.
  function choose(req) {
    const free = sockets.filter((s) => !s.used);
    let match = [];
    if (req.kind === 'path') {
      const wanted = req.path.startsWith('\0') ? `@${req.path.slice(1)}` : path.resolve(req.path);
      match = free.filter((s) => s.address === wanted || unixPathOf(s.address) === wanted);
    } else {
      const port = Number(req.port);
      if (req.port !== undefined && req.port !== null && Number.isInteger(port) && port > 0) {
        match = free.filter((s) => s.port === port);
        if (match.length > 1 && req.host) {
          const exact = match.filter((s) => s.address === `${req.host}:${port}` || s.address === `[${req.host}]:${port}`);
          if (exact.length > 0) match = exact;
        }
      }
    }
    if (match.length > 0) return match[0];
    if (sockets.length === 1 && free.length === 1) return free[0];
    if (sockets.length === 1) {
      return `listen(${shown(req)}): the one socket baton holds, ${held()}, is already used by another server in this process`;
    }
    return `listen(${shown(req)}) matches none of the sockets baton holds: ${held()}; listen on one of their ports or paths (baton never binds another)`;
  }

  // A listen() by the cluster module's primary on behalf of its workers
  // (Node's RoundRobinHandle). Mapped, the primary would say 'ready' and
  // accept on baton's socket while every cluster worker fails its port
  // check and dies: connections would hang with baton reporting ready.
  function fromCluster() {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 8;
    const stack = String(new Error().stack);
    Error.stackTraceLimit = limit;
    return stack.includes('node:internal/cluster/');
  }

  function clusterRefused(req) {
    return `listen(${shown(req)}) by the cluster module's primary for its workers: the preload does not map listens of Node's cluster module; run the app without cluster (baton's \`workers\` runs that many processes on its sockets)`;
  }

  let readySent = false;
  function ready() {
    if (readySent || waitReady) return;
    readySent = true;
    if (typeof process.send === 'function' && process.connected) {
      process.send('ready');
    }
  }

  const mapped = new Set();
  const originalListen = net.Server.prototype.listen;
  function listen(...args) {
    const req = requested(args);
    if (req.kind === 'pass' || this.batonSocket) {
      return originalListen.apply(this, args);
    }
    const cb = callbackOf(args);
    const socket = fromCluster() ? clusterRefused(req) : choose(req);
    if (typeof socket === 'string') {
      const err = new Error(`baton: ${socket}`);
      err.code = 'EADDRNOTAVAIL';
      // The cluster module passes errno (not code) on to its worker.
      err.errno = -((os.constants.errno || {}).EADDRNOTAVAIL || 99);
      err.syscall = 'listen';
      log(socket);
      process.nextTick(() => this.emit('error', err));
      return this;
    }
    socket.used = true;
    this.batonSocket = socket;
    log(`listen(${shown(req)}) → inherited ${describe(socket)}`);
    mapped.add(this);
    this.once('listening', ready);
    this.once('close', () => {
      // libuv closed the fd with the server; it cannot be listened on again.
      mapped.delete(this);
      checkDrained();
    });
    track(this);
    const options = { fd: socket.fd };
    if (req.options && req.options.signal) options.signal = req.options.signal;
    return cb ? originalListen.call(this, options, cb) : originalListen.call(this, options);
  }
  listen.batonPatched = true;
  net.Server.prototype.listen = listen;

  // --- The drain ---------------------------------------------------------

  let draining = false;
  let drainTimer = null;
  let appExits = false;

  // Per connection: requests in flight, when the last one ended (or the
  // connection came), and the responses in flight.
  function track(server) {
    if (!drainOn) return;
    if (typeof server.closeIdleConnections === 'function') {
      trackHttp(server);
    }
    // http2: a session ends gracefully with GOAWAY (session.close()).
    server.on('session', (session) => {
      server.batonSessions = server.batonSessions || new Set();
      server.batonSessions.add(session);
      session.once('close', () => server.batonSessions.delete(session));
      if (draining) session.close();
    });
  }

  function trackHttp(server) {
    const conns = new Set();
    server.batonConns = conns;
    const connState = (socket) => {
      if (!socket.batonConn) {
        socket.batonConn = { active: 0, since: Date.now(), read: socket.bytesRead, responses: new Set() };
        conns.add(socket);
        socket.once('close', () => conns.delete(socket));
      }
      return socket.batonConn;
    };
    // https hands requests the TLS socket, which 'secureConnection' gives;
    // until then its TCP socket stands for it, so that one whose handshake
    // never comes is closed like an idle connection, not waited for.
    server.on('connection', connState);
    if (typeof server.addContext === 'function') {
      server.on('secureConnection', (socket) => {
        if (socket._parent) conns.delete(socket._parent);
        connState(socket);
      });
    }
    server.prependListener('request', (req, res) => {
      const conn = req.socket;
      if (!conn) return;
      const state = connState(conn);
      state.active++;
      state.responses.add(res);
      if (draining) closeAfter(res);
      let done = false;
      const finished = () => {
        if (done) return;
        done = true;
        state.active--;
        state.responses.delete(res);
        state.since = Date.now();
        state.read = conn.bytesRead;
      };
      res.once('finish', finished);
      res.once('close', finished);
    });
    // Node >= 19 closes every idle connection on close(), including one
    // whose next request is already on its way; during a drain only those
    // idle for longer than the grace go.
    const own = server.closeIdleConnections;
    server.closeIdleConnections = function closeIdleConnections(...args) {
      if (draining) return closeIdle(server);
      return own.apply(this, args);
    };
  }

  function closeAfter(res) {
    if (!res.headersSent) {
      try {
        res.setHeader('Connection', 'close');
      } catch (_) {
        res.shouldKeepAlive = false;
      }
    }
  }

  // A connection whose next request is still arriving (its head comes in
  // slowly, byte by byte: no 'request' yet) is not idle: bytes read since
  // the last look restart its idle time.
  //
  // A look that comes late (the process was stalled: a loaded machine, a
  // long GC) closes nothing: bytes that arrived meanwhile are still unread
  // in the kernel, so a connection would look idle while its request
  // waits, and closing it would reset that request. The next look, after
  // the event loop has read them, decides. The first look of a drain counts
  // as late for the same reason.
  function closeIdle(server) {
    const now = Date.now();
    const late = server.batonLastLook === undefined || now - server.batonLastLook > Math.max(grace / 2, 100);
    server.batonLastLook = now;
    for (const socket of server.batonConns || []) {
      const state = socket.batonConn;
      if (!state || state.active !== 0) continue;
      const read = socket.bytesRead;
      if (read !== state.read) {
        state.read = read;
        state.since = now;
      } else if (!late && now - state.since >= grace) {
        socket.destroy();
      }
    }
  }

  const originalClose = net.Server.prototype.close;
  function close(cb) {
    if (this.batonDrained) {
      // The drain closed it already; the app's own close() waits for the
      // same end instead of failing with ERR_SERVER_NOT_RUNNING.
      if (typeof cb === 'function') {
        if (this.listening || mapped.has(this)) this.once('close', () => cb());
        else process.nextTick(cb);
      }
      return this;
    }
    return originalClose.apply(this, arguments);
  }
  close.batonPatched = true;
  net.Server.prototype.close = close;

  function startDrain(why) {
    if (draining) return;
    draining = true;
    log(`draining (${why}): ${mapped.size} server(s) stop accepting; each connection closes after its next response or ${grace} ms idle`);
    for (const server of mapped) {
      for (const socket of server.batonConns || []) {
        for (const res of socket.batonConn.responses) closeAfter(res);
      }
      for (const session of server.batonSessions || []) session.close();
      if (server.listening) {
        server.batonDrained = true;
        originalClose.call(server, () => {});
        if (typeof server.closeIdleConnections === 'function') {
          // http's own close() would have stopped it.
          const interval = Object.getOwnPropertySymbols(server).find((s) => String(s) === 'Symbol(http.server.connectionsCheckingInterval)');
          if (interval) clearInterval(server[interval]);
        }
      }
    }
    drainTimer = setInterval(() => {
      for (const server of mapped) closeIdle(server);
      checkDrained();
    }, Math.min(250, Math.max(10, Math.floor(grace / 4))));
    checkDrained();
  }

  function checkDrained() {
    if (!draining || mapped.size > 0) return;
    if (drainTimer) clearInterval(drainTimer);
    drainTimer = null;
    if (appExits) {
      log('drained; the app handles the stop itself');
      return;
    }
    log('drained; exiting');
    process.exit(0);
  }

  if (drainOn) {
    const onSignal = () => {
      // The app's own handler (added after this one) runs too, and then
      // decides when to exit; with none, Node would have exited at once.
      appExits = process.listenerCount(stopSignal) > 1;
      startDrain(stopSignal);
    };
    try {
      process.on(stopSignal, onSignal);
    } catch (e) {
      log(`cannot handle ${stopSignal}: ${e.message}; no drain on it`);
    }
    if (stopMessage && process.channel) {
      process.on('message', (message) => {
        if (message !== stopMessage || draining) return;
        // The app's own 'message' listeners run after this one.
        appExits = process.listenerCount('message') > 1 || process.listenerCount(stopSignal) > 1;
        startDrain(`message ${JSON.stringify(stopMessage)}`);
      });
      // Node keeps a process alive while a 'message' listener is on; this
      // one must not, so the channel holds the event loop as the app's own
      // listeners make it (no listener: it does not).
      if (typeof process.channel.unrefCounted === 'function') {
        process.channel.unrefCounted();
      } else {
        process.channel.unref();
      }
    }
  }
})();
