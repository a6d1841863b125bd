// A PM2-style Koa app: app.listen(PORT || 3000), no 'ready'.
const Koa = require('koa');
const app = new Koa();
let server;
let port;
app.use(async (ctx) => {
  ctx.body = `hello from generation ${process.env.BATON_GENERATION} pid ${process.pid} port ${port}\n`;
});
server = app.listen(process.env.PORT || 3000, () => {
  port = server.address().port;
  console.log('koa listening');
});
