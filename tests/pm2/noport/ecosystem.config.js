// Two apps; the second binds a port baton cannot see, so it is refused and
// the first is still imported.
module.exports = {
  apps: [
    { name: 'web', script: 'web.js', env: { PORT: 7000 } },
    { name: 'queue', script: 'queue.js', env: { REDIS_URL: 'redis://localhost' } },
  ],
};
