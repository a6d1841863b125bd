// A PM2-style node:https app on a throwaway self-signed certificate (made
// by the test with openssl): listens on PORT or 3000, no 'ready'.
const fs = require('fs');
const https = require('https');
const options = { key: fs.readFileSync(process.env.TLS_KEY), cert: fs.readFileSync(process.env.TLS_CERT) };
let port;
const server = https.createServer(options, (req, res) => {
  res.end(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid} port ${port}\n`);
});
server.listen(process.env.PORT || 3000, () => (port = server.address().port));
