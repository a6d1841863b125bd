// The simplest migration: one app in fork mode, its port in env.
module.exports = {
  apps: [
    {
      name: 'hello',
      script: 'server.js',
      env: {
        NODE_ENV: 'production',
        PORT: 3000,
      },
    },
  ],
};
