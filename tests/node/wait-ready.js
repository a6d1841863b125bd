// PM2's wait_ready: the app says 'ready' itself, here a while after it
// listens (a cache to warm, say); the preload must not say it earlier.
const http = require('http');
let port;
const server = http.createServer((req, res) => {
  res.end(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid} port ${port}\n`);
});
server.listen(process.env.PORT || 3000, () => {
  port = server.address().port;
  setTimeout(() => process.send('ready'), Number(process.env.READY_AFTER_MS || 1500));
});
