// The app hard-codes its port, so --listen says where the socket unit listens.
module.exports = {
  apps: [{ name: 'legacy', script: 'app.js' }],
};
