// A PM2-style Express app: app.listen(PORT || 3000), no 'ready'.
const express = require('express');
const app = express();
let server;
let port;
app.get('/', (req, res) => {
  res.send(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid} port ${port}\n`);
});
server = app.listen(process.env.PORT || 3000, () => {
  port = server.address().port;
  console.log('express listening');
});
