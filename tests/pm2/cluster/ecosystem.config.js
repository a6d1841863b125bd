// A cluster with graceful start and stop, PM2 style, and a second app that
// uses camelCase keys, a relative cwd and the options that map with a
// difference.
module.exports = {
  apps: [
    {
      name: 'api',
      script: './server.js',
      exec_mode: 'cluster',
      instances: 'max',
      wait_ready: true,
      listen_timeout: 10000,
      kill_timeout: 5000,
      shutdown_with_message: true,
      max_memory_restart: '300M',
      node_args: '--max-old-space-size=512 --enable-source-maps',
      args: ['--color', 'never'],
      exp_backoff_restart_delay: 100,
      max_restarts: 10,
      env: {
        NODE_ENV: 'production',
        PORT: '8080',
        DATABASE_URL: 'postgres://db.internal/api',
      },
    },
    {
      name: 'api-admin',
      script: 'admin.js',
      cwd: 'admin',
      execMode: 'cluster_mode',
      instances: -1,
      killTimeout: 3000,
      shutdown_with_message: true,
      maxMemoryRestart: 1073741824,
      restart_delay: 2000,
      port: 8081,
      env: { NODE_ENV: 'production' },
    },
  ],
};
