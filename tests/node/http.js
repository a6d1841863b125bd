// A PM2-style app on plain node:http: listens on PORT or 3000, never
// mentions fd 3, never sends 'ready'. The body names the port the server
// really serves, so a test can tell baton's socket from one of its own.
const http = require('http');
// The port, read once it listens (address() is null once the server closes).
let port;
const server = http.createServer((req, res) => {
  res.end(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid} port ${port} heap_mib ${Math.round(require('v8').getHeapStatistics().heap_size_limit / 1048576)} node_options ${process.env.NODE_OPTIONS}\n`);
});
server.listen(process.env.PORT || 3000, () => (port = server.address().port) && console.log(`listening on ${JSON.stringify(server.address())}`));
