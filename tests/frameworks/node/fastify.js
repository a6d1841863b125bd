// Fastify under baton (tests/it/frameworks.rs; README "Frameworks"), as
// written for PM2: listen({ port: PORT || 3000 }), and its own SIGINT
// handler that closes Fastify. baton's preload ([node] inherit_listen) maps
// the listen onto fd 3, says 'ready' and drains. return503OnClosing: false,
// or Fastify answers 503 to the requests that reach it after its own
// close() (a connection accepted just before). BROKEN_RELEASE: the app
// throws at start (the broken release).
if (process.env.BROKEN_RELEASE) throw new Error('this release is broken (BROKEN_RELEASE is set)');
const fastify = require('fastify')({ return503OnClosing: false });
fastify.get('/', async () => `hello from generation ${process.env.BATON_GENERATION} pid ${process.pid}\n`);
fastify.listen({ port: Number(process.env.PORT || 3000), host: '127.0.0.1' }).catch((err) => {
  console.error(err);
  process.exit(1);
});
process.on('SIGINT', () => {
  fastify.close().then(() => process.exit(0));
});
