#!/usr/bin/env bash
# Benchmark: keep-alive requests lost per reload, and how evenly workers
# share new connections, in one run on one machine.
#
#   1. wrk -t2 -c16 (keep-alive connections sending back to back) during
#      RELOADS reloads of 2 workers, for:
#      - baton + the Node preload with its drain: an unchanged PM2-style app
#        (tests/node/http.js: `listen(PORT)`, no 'ready', no signal handler)
#        with `[node] inherit_listen = true`, `drain = true`; and the same
#        with `drain = false` (Node's own SIGINT: exit at once), for "before";
#      - baton + examples/node (Express, its own drain in server.js);
#      - baton + examples/hello.rs (its drain), and with
#        HELLO_IDLE_GRACE_MS=0 (idle connections closed at once: the usual
#        drain), for "before";
#      - baton + examples/python (gunicorn, sync workers), and the same with
#        gthread workers (real keep-alive; GUNICORN_CMD_ARGS);
#      - PM2 7 in cluster mode, `pm2 reload`, on the same http.js.
#      wrk's errors (connect, read, write, timeout) and non-2xx responses
#      are the failures; per reload = failures / RELOADS.
#   2. The share of new connections each worker served, for 4 workers of
#      examples/node, examples/python (4 gunicorn masters of 1 sync worker
#      each) and examples/hello.rs: a client opens a new connection per
#      request and counts the pid each answer names, with 1 and with 8
#      client threads.
#
# PM2 is installed with npm into target/bench-pm2/ and runs with its own
# PM2_HOME under /tmp; the gunicorn venv is tests/it/python.rs's
# (target/examples-python-venv, made here when missing); everything started
# here is stopped on exit.
#
# Needs: node, npm, wrk, python3 (with venv), curl. Writes docs/bench/keepalive.md.
# Usage: nice -n 10 bench/keepalive.sh [RELOADS]   (default 10; about 5
#        minutes; BENCH_KEEP=1 keeps the temporary directory and its logs)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RELOADS=${1:-10}
CONNECTIONS=16
WORKERS=2
PM2_VERSION=7.0.4
for c in node npm wrk python3 curl; do
  command -v "$c" >/dev/null || { echo "$c is missing" >&2; exit 2; }
done

bench_build
if [[ ! -d examples/node/node_modules/express ]]; then
  (cd examples/node && flock "$repo/target/examples-node.lock" npm ci --no-audit --no-fund >&2)
fi
pm2_dir=$repo/target/bench-pm2
pm2_bin=$pm2_dir/node_modules/.bin/pm2
if [[ "$(node -p "require('$pm2_dir/node_modules/pm2/package.json').version" 2>/dev/null)" != "$PM2_VERSION" ]]; then
  mkdir -p "$pm2_dir"
  npm install --prefix "$pm2_dir" --no-audit --no-fund "pm2@$PM2_VERSION" >&2
fi
venv=$repo/target/examples-python-venv
requirements=$repo/examples/python/requirements.txt
if ! cmp -s "$requirements" "$venv/.baton-installed-from-requirements.txt" ||
   ! "$venv/bin/gunicorn" --version >/dev/null 2>&1; then
  flock "$repo/target/examples-python-venv.lock" sh -c "
    rm -rf '$venv' && python3 -m venv '$venv' &&
    '$venv/bin/pip' install --disable-pip-version-check --quiet -r '$requirements' &&
    cp '$requirements' '$venv/.baton-installed-from-requirements.txt'" >&2
fi

work=$(mktemp -d /tmp/bench-keepalive.XXXXXX)
export PM2_HOME=$work/pm2home PM2_DISCRETE_MODE=true
export BATON_RUNTIME_DIR=$work/run
pids=()   # our own children still running: wrk, baton, the python client
# Processes started by this run, and only those: their environment holds
# this run's own BATON_RUNTIME_DIR (the PM2 daemon and its workers too).
ours() { grep -qzxF "BATON_RUNTIME_DIR=$BATON_RUNTIME_DIR" "/proc/$1/environ" 2>/dev/null; }
cleanup() {
  set +e
  for p in "${pids[@]}"; do ours "$p" && kill -TERM "$p"; done
  [[ -d "$PM2_HOME" ]] && timeout 30 "$pm2_bin" kill >/dev/null 2>&1
  sleep 1
  local d p
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [[ "$p" == "$$" || "$p" == "$BASHPID" ]] && continue
    ours "$p" && kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  if [[ -n "${BENCH_KEEP:-}" ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget() { local keep=() p; for p in "${pids[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done; pids=("${keep[@]}"); }
t_start=$SECONDS
phase() { echo "[$((SECONDS - t_start))s] $*" >&2; }
wait_http() { for _ in $(seq 1 300); do curl -sf -m 1 "http://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.1; done; echo "no answer on port $1" >&2; return 1; }

# The PM2-style app: tests/node/http.js, made to listen on 127.0.0.1 only
# (under PM2 it binds the port itself; under baton the preload maps
# listen(port, host) onto baton's socket all the same).
pm2app=$work/pm2app
mkdir -p "$pm2app"
sed "s/server.listen(process.env.PORT || 3000, /server.listen(process.env.PORT || 3000, '127.0.0.1', /" \
  tests/node/http.js > "$pm2app/http.js"
grep -q "'127.0.0.1'," "$pm2app/http.js" || { echo "tests/node/http.js changed: update bench/keepalive.sh" >&2; exit 1; }

# --------------------------------------------------------------- clients
# `balance PORT SECONDS THREADS`: a new connection per request; prints JSON
# {pid: answers} and the failures.
cat > "$work/balance.py" <<'EOF'
import collections, json, re, socket, sys, threading, time
port, seconds, threads = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
counts = [collections.Counter() for _ in range(threads)]
deadline = time.time() + seconds
def run(c):
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(REQ)
                buf = b""
                while chunk := s.recv(65536):
                    buf += chunk
            m = re.search(rb" pid (\d+)", buf)
            c[m.group(1).decode() if m else "failed"] += 1
        except OSError:
            c["failed"] += 1
ts = [threading.Thread(target=run, args=(c,)) for c in counts]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(sum(counts, collections.Counter())))
EOF

# wrk during $RELOADS reloads (the command in "$@"), 1 s apart; wrk starts
# 1 s before the first and stops 3 s after the last (after the drains'
# 1.5 s idle grace). Prints "requests failures non2xx connect read write
# timeout reload_median_s".
wrk_during_reloads() {
  local port=$1; shift
  wrk -t2 -c"$CONNECTIONS" -d600s "http://127.0.0.1:$port/" > "$work/wrk.out" 2>&1 & local w=$!; pids+=("$w")
  sleep 1
  : > "$work/reload-times"
  for _ in $(seq 1 "$RELOADS"); do
    local t0; t0=$(now_ns)
    timeout 60 "$@" >> "$work/reload.log" 2>&1 || { echo "reload failed: $*" >&2; tail -20 "$work/reload.log" >&2; exit 1; }
    echo $(( ($(now_ns) - t0) / 1000000 )) >> "$work/reload-times"
    sleep 1
  done
  sleep 3
  kill -INT "$w"; wait "$w" || true; forget "$w"
  local med; med=$(awk '{print $1/1000}' "$work/reload-times" | median)
  awk -v med="$med" '/requests in/ {req=$1}
       /Socket errors/ {gsub(",",""); c=$4; r=$6; w=$8; t=$10}
       /Non-2xx/ {n=$5}
       END {printf "%d %d %d %d %d %d %d %.2f\n", req, c+r+w+t+n, n, c, r, w, t, med}' "$work/wrk.out"
}

rows=$work/rows   # "label|requests failures non2xx connect read write timeout reload_s"
row() { echo "$1|$2" >> "$rows"; }

# Starts `baton run` with NAME's config (the [[listen]] on a fresh port is
# added here), waits until it answers; sets $bport, $bpid.
baton_up() {
  local name=$1 body=$2
  bport=$(port)
  printf 'name = "%s"\n%s\n\n[[listen]]\nname = "http"\naddress = "127.0.0.1:%s"\n' "$name" "$body" "$bport" \
    > "$work/$name.toml"
  "$baton" run --config "$work/$name.toml" > "$work/$name.log" 2>&1 & bpid=$!; pids+=("$bpid")
  wait_http "$bport" || { tail -30 "$work/$name.log" >&2; exit 1; }
}
baton_down() {
  kill -TERM "$bpid"; wait "$bpid" || true; forget "$bpid"
}
baton_row() {   # label name config
  phase "$1: $RELOADS reloads under wrk -c$CONNECTIONS"
  baton_up "$2" "$3"
  row "$1" "$(wrk_during_reloads "$bport" "$baton" reload --config "$work/$2.toml")"
  baton_down
}

# The configs. Each [environment], if any, comes before [stop].
preload_cfg() {  # drain=true|false
  cat <<EOF
command = ["node", "http.js"]
directory = "$pm2app"
workers = $WORKERS

[stop]
signal = "SIGINT"
timeout = "10s"

[node]
inherit_listen = true
drain = $1
EOF
}
node_cfg() {  # workers
  cat <<EOF
command = ["node", "server.js"]
directory = "$repo/examples/node"
workers = $1

[environment]
NODE_ENV = "production"

[readiness]
mode = "node-ipc"
timeout = "30s"

[stop]
message = "shutdown"
signal = "SIGTERM"
timeout = "10s"
EOF
}
hello_cfg() {  # workers [idle grace ms]
  echo "command = [\"$hello\"]"
  echo "workers = $1"
  [[ -n "${2:-}" ]] && printf '\n[environment]\nHELLO_IDLE_GRACE_MS = "%s"\n' "$2"
  printf '\n[stop]\ntimeout = "10s"\n'
}
gunicorn_cfg() {  # baton workers, gunicorn workers each[, GUNICORN_CMD_ARGS]: examples/python/baton.toml, here
  sed -e "s|\".venv/bin/gunicorn\"|\"$venv/bin/gunicorn\"|" \
      -e "s|^PYTHONUNBUFFERED = \"1\"|&${3:+\\nGUNICORN_CMD_ARGS = \"$3\"}|" \
      -e "s|^directory = \".\"|directory = \"$repo/examples/python\"|" \
      -e "s|^workers = 2$|workers = $1|" \
      -e "s|^GUNICORN_WORKERS = \"2\"|GUNICORN_WORKERS = \"$2\"|" \
      -e '/^name = /d' examples/python/baton.toml |
    awk '/^\[\[listen\]\]/ {skip=1; next} /^\[/ {skip=0} !skip'
}

# ------------------------------------------------------ 1. keep-alive loss
baton_row "baton + Node preload, \`drain = true\`" preload "$(preload_cfg true)"
baton_row "baton + Node preload, \`drain = false\` (before)" preload-nodrain "$(preload_cfg false)"
baton_row "baton + examples/node (its own drain)" node "$(node_cfg $WORKERS)"
baton_row "baton + examples/hello.rs (its drain, idle grace 1.5 s)" hello "$(hello_cfg $WORKERS)"
baton_row "baton + examples/hello.rs, \`HELLO_IDLE_GRACE_MS=0\` (before)" hello-grace0 "$(hello_cfg $WORKERS 0)"
baton_row "baton + examples/python (gunicorn, sync workers: the example)" gunicorn "$(gunicorn_cfg $WORKERS 2)"
baton_row "baton + examples/python with \`--worker-class gthread --threads 4\`" gthread \
  "$(gunicorn_cfg $WORKERS 2 "--worker-class gthread --threads 4")"

phase "PM2 $PM2_VERSION cluster mode: $RELOADS reloads under wrk -c$CONNECTIONS"
pport=$(port)
cat > "$work/ecosystem.config.js" <<EOF
module.exports = { apps: [{
  name: "bench",
  script: "http.js",
  cwd: "$pm2app",
  exec_mode: "cluster",
  instances: $WORKERS,
  env: { PORT: "$pport" },
}] };
EOF
timeout 60 "$pm2_bin" start "$work/ecosystem.config.js" > "$work/pm2-start.log" 2>&1
wait_http "$pport"
row "PM2 $PM2_VERSION cluster mode, \`pm2 reload\`" "$(wrk_during_reloads "$pport" "$pm2_bin" reload bench)"
timeout 60 "$pm2_bin" kill > /dev/null 2>&1 || true

# ------------------------------------------------------------ 2. balance
balance_rows=$work/balance   # "label|threads|json"
balance() {  # label name config
  phase "$1: balance over 4 workers"
  baton_up "$2" "$3"
  sleep 1
  local t
  for t in 1 8; do
    echo "$1|$t|$(python3 "$work/balance.py" "$bport" 5 "$t")" >> "$balance_rows"
  done
  baton_down
}
balance "examples/node (Express)" node4 "$(node_cfg 4)"
balance "examples/python (gunicorn, 4 masters × 1 sync worker)" gunicorn4 "$(gunicorn_cfg 4 1)"
balance "examples/hello.rs (hyper, one thread)" hello4 "$(hello_cfg 4)"

# --------------------------------------------------------------- report
out=docs/bench/keepalive.md
# The reading of the figures, written by hand at the end of the doc, stays.
notes=$(sed -n '/^## Reading the figures/,$p' "$out" 2>/dev/null || true)
{
  echo "# Keep-alive loss per reload, and how workers share connections"
  echo
  bench_header
  echo "node $(node --version), PM2 $PM2_VERSION, $("$venv/bin/gunicorn" --version 2>&1 | head -1), $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')."
  echo
  echo "## 1. Keep-alive requests lost per reload"
  echo
  echo "\`wrk -t2 -c$CONNECTIONS\` (keep-alive connections sending back to back) during $RELOADS"
  echo "reloads of $WORKERS workers, 1 s apart; wrk starts 1 s before the first reload and"
  echo "stops 3 s after the last. Failures: wrk's socket errors (connect, read, write,"
  echo "timeout: none answered in 2 s) plus non-2xx responses. A response with"
  echo "\`Connection: close\` followed by a close is not a failure: wrk reconnects."
  echo
  echo "| setup | requests | failed | failed per reload | read / write / timeout / connect errors | non-2xx | reload, median |"
  echo "|---|---|---|---|---|---|---|"
  while IFS='|' read -r label res; do
    read -r req fail non conn rd wr to med <<< "$res"
    echo "| $label | $req | $fail | $(python3 -c "print(f'{$fail/$RELOADS:.1f}')") | $rd / $wr / $to / $conn | $non | $med s |"
  done < "$rows"
  echo
  echo "## 2. The share of new connections each worker served"
  echo
  echo "4 workers, a new connection per request for 5 s, with 1 and with 8 client"
  echo "threads; the share of answers by each worker process (from the pid in the"
  echo "body), highest first."
  echo
  echo "| app | client threads | answers | shares, highest first | highest / lowest |"
  echo "|---|---|---|---|---|"
  while IFS='|' read -r label threads j; do
    python3 - "$label" "$threads" "$j" <<'EOF'
import json, sys
label, threads, counts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
failed = counts.pop("failed", 0)
total = sum(counts.values())
shares = sorted((v / total for v in counts.values()), reverse=True) if total else []
shares += [0.0] * (4 - len(shares))
spread = f"{shares[0] / shares[-1]:.1f}" if shares[-1] else "∞ (a worker served none)"
extra = f" ({failed} failed)" if failed else ""
print(f"| {label} | {threads} | {total}{extra} | {' / '.join(f'{s:.0%}' for s in shares)} | {spread} |")
EOF
  done < "$balance_rows"
  if [[ -n "$notes" ]]; then echo; echo "$notes"; fi
} > "$out"
cat "$out"
