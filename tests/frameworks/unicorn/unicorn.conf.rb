# unicorn under baton (README "Frameworks"; by hand: tests/it/frameworks.rs,
# `-- --ignored`). Debian: apt-get install unicorn.
# - The socket: unicorn takes LISTEN_FDS/LISTEN_PID by itself.
# - Readiness: no sd_notify; baton waits for "master process ready"
#   (`[readiness] mode = "log"`), logged after preload_app loaded the app.
# - Stop: SIGQUIT is unicorn's graceful stop (SIGTERM stops at once).
worker_processes 2
preload_app true
timeout 30
