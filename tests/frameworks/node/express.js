// Express under baton (tests/it/frameworks.rs; README "Frameworks"), as
// written for PM2: app.listen(PORT || 3000). baton's preload
// ([node] inherit_listen) maps the listen onto fd 3, says 'ready' on the
// first 'listening' and drains on the stop signal. BROKEN_RELEASE: the app
// throws at start (the broken release).
if (process.env.BROKEN_RELEASE) throw new Error('this release is broken (BROKEN_RELEASE is set)');
const express = require('express');
const app = express();
app.get('/', (req, res) => {
  res.type('text/plain').send(`hello from generation ${process.env.BATON_GENERATION} pid ${process.pid}\n`);
});
app.listen(process.env.PORT || 3000);
