// A PM2-style Fastify app: fastify.listen({ port: PORT || 3000 }), no 'ready'.
const fastify = require('fastify')();
let port;
fastify.get('/', async () => `hello from generation ${process.env.BATON_GENERATION} pid ${process.pid} port ${port}\n`);
fastify.listen({ port: Number(process.env.PORT || 3000), host: '127.0.0.1' }).then((addr) => {
  port = fastify.server.address().port;
  console.log(`fastify listening on ${addr}`);
}, (err) => {
  console.error(err);
  process.exit(1);
});
