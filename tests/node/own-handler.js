// A PM2-style app with its own SIGINT handler, as PM2's docs show it:
// close the server, then exit in its callback.
const http = require('http');
let port;
const server = http.createServer((req, res) => {
  res.end(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid} port ${port}\n`);
});
server.listen(process.env.PORT || 3000, () => (port = server.address().port));
process.on('SIGINT', () => {
  server.close((err) => process.exit(err ? 1 : 0));
});
