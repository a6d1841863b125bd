# puma under baton (README "Frameworks"; by hand: tests/it/frameworks.rs,
# `-- --ignored`). Debian: apt-get install puma ruby-sd-notify.
# - The socket: without bind_to_activated_sockets 'only', puma also binds
#   its default, 0.0.0.0:9292.
# - Readiness: puma's systemd plugin sends READY=1 (it needs the sd_notify
#   gem, and NOTIFY_SOCKET as a path: baton's default).
# - Stop: SIGTERM, puma's graceful stop.
bind_to_activated_sockets "only"
workers 2
preload_app!
rackup File.expand_path("../unicorn/config.ru", __dir__)
