#!/usr/bin/env bash
# Benchmark: baton against PM2, on the same Express app (examples/node), in
# one run on one machine:
#
#   1. the supervisor's own memory: the PM2 daemon ("PM2 vX: God Daemon")
#      against baton, VmRSS after a warm-up and after 10 and 20 reloads; the
#      app workers' RSS apart, for context
#   2. 10 `pm2 reload` against 10 `baton reload` under wrk (keep-alive), and
#      10 more of each under a client that opens a new connection per
#      request; non-2xx responses and socket errors by kind
#   3. a broken release (server.js throws on start): `pm2 reload` against
#      `baton reload`: exit code, message, and a probe every 100 ms for 15 s
#      after the reload returns
#
# Both run a copy of examples/node/server.js in a temporary directory, with
# 2 instances: PM2 in cluster mode with wait_ready and shutdown_with_message,
# baton with node-ipc readiness and the 'shutdown' message. PM2 is installed
# with npm into target/bench-pm2/ and runs with its own PM2_HOME under /tmp;
# everything started here, the PM2 daemon included, is stopped on exit.
#
# Needs: node, npm, wrk, python3, curl. Writes docs/bench/pm2.md.
# Usage: bench/pm2.sh        (about 3 minutes; BENCH_KEEP=1 keeps the
#                             temporary directory and its logs)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PM2_VERSION=7.0.4
RELOADS=10
for c in node npm wrk python3 curl; do
  command -v "$c" >/dev/null || { echo "$c is missing" >&2; exit 2; }
done

cargo build --release --quiet --bin baton
baton=$root/target/release/baton

# The app's dependencies, as tests/it/node.rs installs them (same lock file).
if [[ ! -d examples/node/node_modules/express ]]; then
  (cd examples/node && flock "$root/target/examples-node.lock" npm ci --no-audit --no-fund >&2)
fi
# PM2, locally and pinned: never a global install.
pm2_dir=$root/target/bench-pm2
pm2_bin=$pm2_dir/node_modules/.bin/pm2
if [[ "$(node -p "require('$pm2_dir/node_modules/pm2/package.json').version" 2>/dev/null)" != "$PM2_VERSION" ]]; then
  mkdir -p "$pm2_dir"
  npm install --prefix "$pm2_dir" --no-audit --no-fund "pm2@$PM2_VERSION" >&2
fi

work=$(mktemp -d /tmp/bench-pm2.XXXXXX)
# Every pm2 command, even `pm2 --version`, starts a daemon in PM2_HOME:
# keep it in $work, never in ~/.pm2.
export PM2_HOME=$work/pm2home PM2_DISCRETE_MODE=true
export BATON_RUNTIME_DIR=$work/run
pids=()          # our own children still running: wrk, the python clients
god=""           # the PM2 daemon
bpid=""          # baton run
forget() { local keep=() p; for p in "${pids[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done; pids=("${keep[@]}"); }
# Processes started by this run, and only those: their environment holds
# this run's own BATON_RUNTIME_DIR (the PM2 daemon and its workers too).
ours() { grep -qzxF "BATON_RUNTIME_DIR=$BATON_RUNTIME_DIR" "/proc/$1/environ" 2>/dev/null; }
cleanup() {
  set +e
  for p in "${pids[@]}"; do ours "$p" && kill -TERM "$p"; done
  if [[ -d "$PM2_HOME" ]]; then
    timeout 30 "$pm2_bin" kill >/dev/null 2>&1
  fi
  if [[ -n "$bpid" ]] && ours "$bpid"; then
    kill -TERM "$bpid"
    for _ in $(seq 1 100); do ours "$bpid" || break; sleep 0.1; done
  fi
  # Whatever is left (a daemon that ignored `pm2 kill`, orphaned workers).
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

# ---------------------------------------------------------------- helpers
# The new-connection-per-request client. `load PORT SECONDS THREADS` loops
# until SIGTERM or SECONDS; `probe PORT SECONDS` sends one request every
# 100 ms. Both print JSON. `summary FILE T0 T1` reads a probe's JSON;
# `pm2-states` reads `pm2 jlist`.
cat > "$work/client.py" <<'EOF'
import collections, errno, json, signal, socket, sys, threading, time

REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
signal.signal(signal.SIGINT, lambda *a: stop.set())

def name(e):
    return errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__

def one(port, timeout):
    """One request on a new connection: 'ok' or the kind of failure."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(("127.0.0.1", port))
        except TimeoutError:
            return "connect timeout"
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return "client out of local ports"
            return "connect " + name(e)
        try:
            s.sendall(REQ)
        except TimeoutError:
            return "write timeout"
        except OSError as e:
            return "write " + name(e)
        buf = bytearray()
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                buf += b
        except TimeoutError:
            return "read timeout"
        except OSError as e:
            return "read " + name(e)
        if not buf:
            return "read EOF before a response"
        head, sep, body = bytes(buf).partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].split()
        if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/"):
            return "read truncated response"
        if not 200 <= int(status[1]) < 300:
            return "non-2xx"
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length" and len(body) < int(v):
                return "read truncated response"
        return "ok"
    finally:
        s.close()

def load(port, seconds, threads):
    counts = [collections.Counter() for _ in range(threads)]
    def run(c):
        while not stop.is_set():
            c[one(port, 2.0)] += 1
    ts = [threading.Thread(target=run, args=(c,)) for c in counts]
    t0 = time.time()
    for t in ts:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in ts:
        t.join()
    total = sum(counts, collections.Counter())
    print(json.dumps({"seconds": time.time() - t0, "kinds": total}))

def probe(port, seconds):
    out, t0, i = [], time.time(), 0
    while not stop.is_set() and time.time() - t0 < seconds:
        out.append([time.time(), one(port, 1.0)])
        i += 1
        stop.wait(max(0.0, t0 + i * 0.1 - time.time()))
    print(json.dumps(out))

def summary(path, t0, t1):
    """Probes sent from t0 (reload issued) to t1 (end of the window)."""
    ps = [p for p in json.load(open(path)) if t0 <= p[0] <= t1]
    fails = [p for p in ps if p[1] != "ok"]
    longest, run_start = 0.0, None
    for i, (t, r) in enumerate(ps):
        if r != "ok":
            run_start = t if run_start is None else run_start
            end = ps[i + 1][0] if i + 1 < len(ps) else t
            longest = max(longest, end - run_start)
        else:
            run_start = None
    kinds = collections.Counter(r for _, r in fails)
    print(json.dumps({
        "probes": len(ps), "failed": len(fails),
        "first": round(fails[0][0] - t0, 1) if fails else None,
        "last": round(fails[-1][0] - t0, 1) if fails else None,
        "longest": round(longest, 1),
        "down_at_end": bool(ps) and all(r != "ok" for _, r in ps[-5:]),
        "window": round(t1 - t0, 1),
        "kinds": ", ".join(f"{k} {v}" for k, v in kinds.most_common()) or "none",
    }))

def pm2_states():
    """`pm2 jlist` on stdin: each process's id, status and restart count."""
    txt = sys.stdin.read()
    apps = json.loads(txt[txt.index("["):]) if "[" in txt else []
    print("; ".join(f"{a['pm_id']}: {a['pm2_env']['status']}, restart_time {a['pm2_env']['restart_time']}"
                    for a in apps) or "no processes")

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "pm2-states":
        pm2_states()
    elif mode == "load":
        load(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    elif mode == "probe":
        probe(int(sys.argv[2]), float(sys.argv[3]))
    else:
        summary(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
EOF
client() { python3 "$work/client.py" "$@"; }
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 300); do curl -sf -m 1 "http://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.1; done; echo "no answer on port $1" >&2; return 1; }
now() { date +%s.%N; }
t_start=$(date +%s)
phase() { echo "[$(( $(date +%s) - t_start ))s] $*" >&2; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }
# "N KIB": the number of children of $1 and the sum of their VmRSS.
kids_kib() { local n=0 sum=0 r; for c in $(ps -o pid= --ppid "$1"); do r=$(kib "$c"); n=$((n + 1)); sum=$((sum + r)); done; echo "$n $sum"; }
json() { python3 -c "import json,sys; print(json.load(open('$1'))$2)"; }

# The app: a copy of server.js, its node_modules linked. Without LISTEN_FDS
# (under PM2) the copy binds PORT on 127.0.0.1 only; the original binds all
# interfaces. Under baton it listens on fd 3, as the original does.
app=$work/app
make_app() {
  rm -rf "$app"; mkdir -p "$app"
  ln -s "$root/examples/node/node_modules" "$app/node_modules"
  sed 's/{ port: Number(process.env.PORT) || 3000 }/{ port: Number(process.env.PORT) || 3000, host: "127.0.0.1" }/' \
    examples/node/server.js > "$app/server.js"
  grep -q 'host: "127.0.0.1"' "$app/server.js" || { echo "examples/node/server.js changed: update bench/pm2.sh" >&2; exit 1; }
}
# The broken release: the same file, throwing on start.
break_app() {
  { echo "throw new Error('bench: this release fails on start');"; cat "$app/server.js"; } > "$app/server.js.new"
  mv "$app/server.js.new" "$app/server.js"
}

# wrk in the background while $RELOADS reloads run; then SIGINT, which
# makes wrk print its totals. Writes "requests rps connect read write
# timeout non2xx" to $work/wrk.res; the reload results go to $work/reloads.
wrk_during_reloads() {
  local port=$1; shift
  wrk -t2 -c32 -d240s "http://127.0.0.1:$port/" > "$work/wrk.out" 2>&1 & local w=$!; pids+=("$w")
  sleep 1; reload_loop "$@"; sleep 1
  kill -INT "$w"; wait "$w" || true; forget "$w"
  awk '/requests in/ {req=$1} /Requests\/sec/ {rps=$2}
       /Socket errors/ {gsub(",",""); c=$4; r=$6; w=$8; t=$10}
       /Non-2xx/ {n=$5}
       END {printf "%s %s %d %d %d %d %d\n", req, rps, c, r, w, t, n}' "$work/wrk.out" > "$work/wrk.res"
}
# The python client, 4 threads, during $RELOADS reloads. JSON to $work/conn.json.
conn_during_reloads() {
  local port=$1; shift
  python3 "$work/client.py" load "$port" 240 4 > "$work/conn.json" & local c=$!; pids+=("$c")
  sleep 1; reload_loop "$@"; sleep 1
  kill -TERM "$c"; wait "$c" || true; forget "$c"
}
# $RELOADS times: the reload command, its exit code and duration; a pause of
# 1 s between reloads; stops after 150 s whatever happens.
reload_loop() {
  : > "$work/reloads"
  local start; start=$(date +%s)
  for _ in $(seq 1 "$RELOADS"); do
    (( $(date +%s) - start < 150 )) || break
    local t0 rc=0; t0=$(now)
    timeout 60 "$@" >> "$work/reload.log" 2>&1 || rc=$?
    echo "$rc $(secs "$t0" "$(now)")" >> "$work/reloads"
    sleep 1
  done
}
# "ok failed median max" of $work/reloads.
reload_stats() {
  python3 - "$work/reloads" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
ok = sum(r[0] == "0" for r in rows); d = [float(r[1]) for r in rows]
print(ok, len(rows) - ok, f"{statistics.median(d):.1f}" if d else "-", f"{max(d):.1f}" if d else "-")
EOF
}
conn_stats() {  # "requests rps connect read other non2xx details"
  python3 - "$work/conn.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); k = j["kinds"]
req = sum(k.values())
conn = sum(v for n, v in k.items() if n.startswith("connect"))
read = sum(v for n, v in k.items() if n.startswith(("read", "write")))
other = sum(v for n, v in k.items() if n.startswith("client"))
details = ", ".join(f"{n} {v}" for n, v in sorted(k.items()) if n != "ok") or "none"
print(req, f"{req / j['seconds']:.0f}", conn, read, other, k.get("non-2xx", 0), details.replace(" ", "_"))
EOF
}
# The broken release: probe from before the reload until 15 s after it
# returned. Sets b_rc and b_took, writes $work/broken.json.
broken_reload() {
  local port=$1; shift
  python3 "$work/client.py" probe "$port" 90 > "$work/probe.json" & local p=$!; pids+=("$p")
  sleep 0.5
  local t0 t1; t0=$(now); b_rc=0
  timeout 60 "$@" > "$work/broken.out" 2>&1 || b_rc=$?
  t1=$(now); b_took=$(secs "$t0" "$t1")
  after_broken_reload     # the caller's hook: status right after the reload
  sleep 15
  kill -TERM "$p"; wait "$p" || true; forget "$p"
  client summary "$work/probe.json" "$t0" "$(python3 -c "print($t1 + 15)")" > "$work/broken.json"
}

# ---------------------------------------------------------------- PM2
load_avg=$(cut -d' ' -f1-3 /proc/loadavg)
phase "PM2 $PM2_VERSION: start, 2 instances in cluster mode"
pm2() { timeout 60 "$pm2_bin" "$@"; }
make_app
pport=$(port)
cat > "$work/ecosystem.config.js" <<EOF
module.exports = { apps: [{
  name: "bench",
  script: "server.js",
  cwd: "$app",
  exec_mode: "cluster",
  instances: 2,
  wait_ready: true,              // listen_timeout: PM2's default, 3000 ms
  shutdown_with_message: true,   // kill_timeout: PM2's default, 1600 ms
  env: { NODE_ENV: "production", PORT: "$pport" },
}] };
EOF
pm2 start "$work/ecosystem.config.js" > "$work/pm2-start.log" 2>&1
god=$(cat "$PM2_HOME/pm2.pid")
grep -q "God Daemon" "/proc/$god/cmdline" || { echo "pid $god is not the PM2 daemon" >&2; exit 1; }
wait_http "$pport"

phase "PM2: warm-up, 5 s of wrk"
wrk -t2 -c32 -d5s "http://127.0.0.1:$pport/" > /dev/null
sleep 1
p_sup0=$(kib "$god"); read -r p_n0 p_app0 < <(kids_kib "$god")

phase "PM2: $RELOADS reloads under wrk"
wrk_during_reloads "$pport" "$pm2_bin" reload bench
read -r p_w_req p_w_rps p_w_conn p_w_read p_w_write p_w_to p_w_non < "$work/wrk.res"
read -r p_w_ok p_w_fail p_w_med p_w_max < <(reload_stats)
sleep 2
p_sup1=$(kib "$god"); read -r p_n1 p_app1 < <(kids_kib "$god")

phase "PM2: $RELOADS reloads under new-connection load"
conn_during_reloads "$pport" "$pm2_bin" reload bench
read -r p_c_req p_c_rps p_c_conn p_c_read p_c_other p_c_non p_c_det < <(conn_stats)
read -r p_c_ok p_c_fail p_c_med p_c_max < <(reload_stats)
sleep 2
p_sup2=$(kib "$god"); read -r p_n2 p_app2 < <(kids_kib "$god")

phase "PM2: a broken release"
pm2_states() { timeout 30 "$pm2_bin" jlist 2>/dev/null | python3 "$work/client.py" pm2-states; }
after_broken_reload() { p_b_state0=$(pm2_states); }
break_app
broken_reload "$pport" "$pm2_bin" reload bench
p_b_rc=$b_rc; p_b_took=$b_took; p_b_state1=$(pm2_states); cp "$work/broken.json" "$work/p_broken.json"
p_b_msg=$(sed 's/\x1b\[[0-9;]*m//g' "$work/broken.out" | grep -v '^\s*$' | tail -n 1)
pm2_version=$(node -p "require('$pm2_dir/node_modules/pm2/package.json').version")
pm2 kill > /dev/null 2>&1 || true
for _ in $(seq 1 50); do ours "$god" || break; sleep 0.1; done
ours "$god" && { echo "the PM2 daemon survived pm2 kill" >&2; exit 1; }
rm -rf "$PM2_HOME"

# ---------------------------------------------------------------- baton
phase "baton: start, 2 workers"
make_app
bport=$(port)
cat > "$work/baton.toml" <<EOF
name = "bench-pm2"
command = ["node", "server.js"]
directory = "$app"
workers = 2

[environment]
NODE_ENV = "production"

[[listen]]
address = "127.0.0.1:$bport"

[readiness]
mode = "node-ipc"
timeout = "30s"

[stop]
message = "shutdown"
signal = "SIGTERM"
timeout = "30s"
EOF
"$baton" run --config "$work/baton.toml" > "$work/baton.log" 2>&1 & bpid=$!
wait_http "$bport"
breload=("$baton" reload --config "$work/baton.toml")

phase "baton: warm-up, 5 s of wrk"
wrk -t2 -c32 -d5s "http://127.0.0.1:$bport/" > /dev/null
sleep 1
b_sup0=$(kib "$bpid"); read -r b_n0 b_app0 < <(kids_kib "$bpid")

phase "baton: $RELOADS reloads under wrk"
wrk_during_reloads "$bport" "${breload[@]}"
read -r b_w_req b_w_rps b_w_conn b_w_read b_w_write b_w_to b_w_non < "$work/wrk.res"
read -r b_w_ok b_w_fail b_w_med b_w_max < <(reload_stats)
sleep 2
b_sup1=$(kib "$bpid"); read -r b_n1 b_app1 < <(kids_kib "$bpid")

phase "baton: $RELOADS reloads under new-connection load"
conn_during_reloads "$bport" "${breload[@]}"
read -r b_c_req b_c_rps b_c_conn b_c_read b_c_other b_c_non b_c_det < <(conn_stats)
read -r b_c_ok b_c_fail b_c_med b_c_max < <(reload_stats)
sleep 2
b_sup2=$(kib "$bpid"); read -r b_n2 b_app2 < <(kids_kib "$bpid")

phase "baton: a broken release"
baton_state() { "$baton" status --config "$work/baton.toml" 2>/dev/null | head -n 1; }
after_broken_reload() { b_b_state0=$(baton_state); }
break_app
broken_reload "$bport" "${breload[@]}"
b_b_rc=$b_rc; b_b_took=$b_took; b_b_state1=$(baton_state); cp "$work/broken.json" "$work/b_broken.json"
b_b_msg=$(grep -m1 -E 'RELOAD FAILED|reload ok' "$work/broken.out" || head -n 1 "$work/broken.out")
baton_version=$("$baton" --version | awk '{print $2}')

# ---------------------------------------------------------------- report
ratio() { python3 -c "print(f'{$1/$2:.1f}')"; }
pj() { json "$work/p_broken.json" "$1"; }
bj() { json "$work/b_broken.json" "$1"; }
fmt_s() { [[ "$1" == None ]] && echo "-" || echo "$1 s"; }
yn() { [[ "$1" == True ]] && echo yes || echo no; }
p_failed=$(pj '["failed"]'); b_failed=$(bj '["failed"]')
out=docs/bench/pm2.md
{
  echo "# PM2 comparison benchmark"
  echo
  echo "Run: \`bench/pm2.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d), kernel $(uname -r),"
  echo "node $(node --version), PM2 $pm2_version, baton $baton_version. Load average when"
  echo "the run started: $load_avg (other jobs shared the machine)."
  echo
  echo "The same app under both: a copy of \`examples/node/server.js\` (Express), 2"
  echo "instances, only on 127.0.0.1. PM2 runs it in cluster mode with \`wait_ready\`"
  echo "and \`shutdown_with_message\` (PM2's defaults otherwise: \`listen_timeout\`"
  echo "3000 ms, \`kill_timeout\` 1600 ms); baton with \`[readiness] mode = \"node-ipc\"\`"
  echo "and \`[stop] message = \"shutdown\"\` (parallel reload). PM2 runs first, then"
  echo "baton; nothing else of either runs at the same time."
  echo
  echo "## 1. Memory of the supervisor"
  echo
  echo "VmRSS from \`/proc/PID/status\`: the PM2 daemon (\`PM2 v$pm2_version: God Daemon\`,"
  echo "which is also the cluster master) against \`baton run\`. Warm-up: 5 s of wrk."
  echo
  echo "| supervisor RSS | PM2 daemon | baton | PM2 / baton |"
  echo "|---|---|---|---|"
  echo "| after warm-up | $(mib "$p_sup0") MiB | $(mib "$b_sup0") MiB | $(ratio "$p_sup0" "$b_sup0")× |"
  echo "| after $RELOADS reloads | $(mib "$p_sup1") MiB | $(mib "$b_sup1") MiB | $(ratio "$p_sup1" "$b_sup1")× |"
  echo "| after $((2 * RELOADS)) reloads | $(mib "$p_sup2") MiB | $(mib "$b_sup2") MiB | $(ratio "$p_sup2" "$b_sup2")× |"
  echo
  echo "For context, the app workers (the supervisor's child processes, summed):"
  echo
  echo "| app workers' RSS | under PM2 | under baton |"
  echo "|---|---|---|"
  echo "| after warm-up | $(mib "$p_app0") MiB ($p_n0 processes) | $(mib "$b_app0") MiB ($b_n0 processes) |"
  echo "| after $RELOADS reloads | $(mib "$p_app1") MiB ($p_n1 processes) | $(mib "$b_app1") MiB ($b_n1 processes) |"
  echo "| after $((2 * RELOADS)) reloads | $(mib "$p_app2") MiB ($p_n2 processes) | $(mib "$b_app2") MiB ($b_n2 processes) |"
  echo
  echo "## 2. Reloads under load"
  echo
  echo "$RELOADS reloads one after another (1 s pause between them) while the load runs;"
  echo "the load starts 1 s before the first reload and stops 1 s after the last."
  echo
  echo "wrk -t2 -c32 (keep-alive connections); socket errors as wrk counts them:"
  echo
  echo "| supervisor | reloads ok / failed | reload time, median / max | requests | requests/s | non-2xx | connect errors | read errors | write / timeout errors |"
  echo "|---|---|---|---|---|---|---|---|---|"
  echo "| PM2 (\`pm2 reload bench\`) | $p_w_ok / $p_w_fail | $p_w_med s / $p_w_max s | $p_w_req | $p_w_rps | $p_w_non | $p_w_conn | $p_w_read | $p_w_write / $p_w_to |"
  echo "| baton (\`baton reload\`) | $b_w_ok / $b_w_fail | $b_w_med s / $b_w_max s | $b_w_req | $b_w_rps | $b_w_non | $b_w_conn | $b_w_read | $b_w_write / $b_w_to |"
  echo
  echo "A new connection per request (\`Connection: close\`), 4 client threads, 2 s"
  echo "timeout per request; \"read\" counts any failure after the connection was"
  echo "accepted (reset, EOF before a response, truncated response, timeout):"
  echo
  echo "| supervisor | reloads ok / failed | reload time, median / max | requests | requests/s | non-2xx | connect errors | read errors | failures by kind |"
  echo "|---|---|---|---|---|---|---|---|---|"
  echo "| PM2 | $p_c_ok / $p_c_fail | $p_c_med s / $p_c_max s | $p_c_req | $p_c_rps | $p_c_non | $p_c_conn | $p_c_read | ${p_c_det//_/ } |"
  echo "| baton | $b_c_ok / $b_c_fail | $b_c_med s / $b_c_max s | $b_c_req | $b_c_rps | $b_c_non | $b_c_conn | $b_c_read | ${b_c_det//_/ } |"
  [[ "$p_c_other$b_c_other" == 00 ]] || echo "(The client also ran out of local ports: PM2 $p_c_other, baton $b_c_other times; not counted above.)"
  echo
  echo "Requests/s are context, not a result: PM2 and baton ran one after the"
  echo "other on a shared $(nproc)-core machine. Why wrk counts read errors during"
  echo "reloads: see [reload.md](reload.md). Under both supervisors the retiring"
  echo "workers get the 'shutdown' message and run the same drain in server.js."
  echo
  echo "## 3. A broken release"
  echo
  echo "\`server.js\` replaced in place by a copy whose first line throws, then one"
  echo "reload. A probe sends one request on a new connection every 100 ms (1 s"
  echo "timeout) from the moment the reload is issued until 15 s after it returned."
  echo
  echo "| | PM2 (\`pm2 reload bench\`) | baton (\`baton reload\`) |"
  echo "|---|---|---|"
  echo "| reload exit code | $p_b_rc | $b_b_rc |"
  echo "| reload took | $p_b_took s | $b_b_took s |"
  echo "| reload's last line / failure line | \`${p_b_msg//|/\\|}\` | \`${b_b_msg//|/\\|}\` |"
  echo "| probes failed / sent | $p_failed / $(pj '["probes"]') | $b_failed / $(bj '["probes"]') |"
  echo "| first / last failure after the reload was issued | $(fmt_s "$(pj '["first"]')") / $(fmt_s "$(pj '["last"]')") | $(fmt_s "$(bj '["first"]')") / $(fmt_s "$(bj '["last"]')") |"
  echo "| longest run of failed probes | $(pj '["longest"]') s | $(bj '["longest"]') s |"
  echo "| still failing when the window ended ($(pj '["window"]') s / $(bj '["window"]') s after the reload was issued) | $(yn "$(pj '["down_at_end"]')") | $(yn "$(bj '["down_at_end"]')") |"
  echo "| failures by kind | $(pj '["kinds"]') | $(bj '["kinds"]') |"
  echo "| status when the reload returned | \`pm2 jlist\`: $p_b_state0 | \`baton status\`: ${b_b_state0//|/\\|} |"
  echo "| status 15 s later | \`pm2 jlist\`: $p_b_state1 | \`baton status\`: ${b_b_state1//|/\\|} |"
  echo
  echo "PM2's \`restart_time\` counts the $((2 * RELOADS)) reloads of section 2 as well."
  echo
  echo "## What this shows"
  echo
  echo "On this machine, in this run: the PM2 daemon's RSS was $(ratio "$p_sup1" "$b_sup1")× baton's after"
  echo "$RELOADS reloads ($(mib "$p_sup1") MiB against $(mib "$b_sup1") MiB). Under wrk, $RELOADS \`pm2 reload\`"
  echo "gave $p_w_non non-2xx, $p_w_conn connect and $p_w_read read errors; $RELOADS \`baton reload\` gave $b_w_non,"
  echo "$b_w_conn and $b_w_read. With a new connection per request, PM2 had $((p_c_conn + p_c_read + p_c_non)) failed"
  echo "requests out of $p_c_req, baton $((b_c_conn + b_c_read + b_c_non)) out of $b_c_req. For the broken release,"
  echo "\`pm2 reload\` exited $p_b_rc and $p_failed of the probes that followed failed"
  if [[ "$(pj '["down_at_end"]')" == True ]]; then
    echo "(the last ones were still failing when the window ended);"
  else
    echo "(none in the last 0.5 s of the window);"
  fi
  echo "\`baton reload\` exited $b_b_rc and $b_failed probes failed."
  echo "Each figure is from one run; run the script again to see how much they move."
} > "$out"
cat "$out"
