# puma under baton (README "Frameworks"; by hand: tests/it/frameworks.rs,
# `-- --ignored`). Debian: apt-get install puma ruby-sd-notify.
# - The socket: without bind_to_activated_sockets 'only', puma also binds
#   its default, 0.0.0.0:9292.
# - Readiness: puma's systemd plugin sends READY=1 (it needs the sd_notify
#   gem, and NOTIFY_SOCKET as a path: baton's default).
# - Stop: SIGTERM, puma's graceful stop. With its reactor (queue_requests,
#   the default) puma times out, at shutdown, the connections it accepted
#   whose request has not arrived yet: closed without a response (1 of
#   32,943 requests over 8 reloads). queue_requests false has a thread read
#   each request, and the graceful stop waits for the threads.
bind_to_activated_sockets "only"
workers 2
preload_app!
queue_requests false
rackup File.expand_path("../unicorn/config.ru", __dir__)
