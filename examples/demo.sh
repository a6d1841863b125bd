#!/usr/bin/env bash
# The demo: build baton and the example HTTP app, then supervise four
# workers of it on 127.0.0.1:8080 (PORT=... to change), standalone, without
# systemd. From a second terminal:
#   curl http://127.0.0.1:8080/          # which generation and worker answered
#   ./target/release/baton reload        # zero-downtime reload
#   ./target/release/baton status
# Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-8080}"
cargo build --release --quiet --bin baton --example hello
cat <<MSG

baton demo: 4 'hello' workers on http://127.0.0.1:${port}/
In another terminal, try:
  curl http://127.0.0.1:${port}/
  ./target/release/baton reload      # new generation, old one drained, no request lost
  ./target/release/baton status
  kill -HUP \$(pgrep -f 'baton run --name hello')   # same as baton reload
Ctrl-C here stops everything gracefully.

MSG
exec ./target/release/baton run --name hello --listen "127.0.0.1:${port}" --workers 4 -- ./target/release/examples/hello
