// Everything PM2 does that baton leaves to systemd, journald or the deploy,
// plus a key PM2 does not have.
module.exports = {
  apps: [
    {
      name: 'shop@eu west',
      script: 'index.js',
      interpreter: 'node@18.19.0',
      uid: 'www-data',
      gid: 'www-data',
      watch: ['src'],
      ignore_watch: ['node_modules'],
      autorestart: false,
      out_file: './logs/out.log',
      error_file: './logs/err.log',
      merge_logs: true,
      log_date_format: 'YYYY-MM-DD HH:mm Z',
      cron_restart: '0 3 * * *',
      min_uptime: '10s',
      namespace: 'shop',
      pid_file: './shop.pid',
      instance_var: 'INSTANCE_ID',
      treekill: false,
      pmx: true,
      restart_delay: 0,
      colour: 'blue',
      env: {
        PORT: 4000,
        LISTEN_FDS: '1',
        FEATURES: { beta: true },
      },
      env_production: { NODE_ENV: 'production' },
      env_staging: { NODE_ENV: 'staging' },
    },
  ],
  deploy: {
    production: { user: 'deploy', host: 'shop.example.com', ref: 'origin/main' },
  },
};
