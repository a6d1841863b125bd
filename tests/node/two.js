// Two servers, as an app with a public port and a unix socket for a proxy:
// listen(PORT) and listen(SOCKET_PATH) each map onto their own inherited fd.
const http = require('http');
const handler = (name) => (req, res) => {
  res.end(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid} server ${name}\n`);
};
http.createServer(handler('tcp')).listen(process.env.PORT || 3000);
http.createServer(handler('unix')).listen(process.env.SOCKET_PATH);
