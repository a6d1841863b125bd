# Shared by the bench scripts (sourced, not run). Conventions:
# - release build (`cargo build --release --examples --bins`);
# - baton's CPU time is utime+stime of the whole process (every thread, dead
#   ones included) from /proc/PID/stat, in clock ticks;
# - every result file starts with the date, commit, machine, load and the
#   exact command, and gives medians with their spread over repetitions.

# Where the results go and the exact command, for the header.
bench_cmd="bench/$(basename "$0")${*:+ $*}"
cd "$(dirname "$0")/.."
repo=$PWD

bench_build() {
  cargo build --release --quiet --examples --bins
  baton=$repo/target/release/baton
  hello=$repo/target/release/examples/hello
}

# bench/worker.c, compiled into $work (static if the C library allows it).
bench_worker() {
  command -v cc >/dev/null || { echo "cc is missing: apt-get install gcc" >&2; exit 2; }
  worker=$work/bench-worker
  cc -O2 -static -o "$worker" "$repo/bench/worker.c" 2>/dev/null ||
    cc -O2 -o "$worker" "$repo/bench/worker.c"
}

clk_tck=$(getconf CLK_TCK)

# utime+stime of PID (all threads), in clock ticks.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# Voluntary + involuntary context switches summed over PID's live threads.
ctx_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches/ { n += $2 } END { print n + 0 }'
}

now_ns() { date +%s%N; }

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Waits until FILE exists (up to $2 seconds, default 30).
wait_file() {
  local deadline=$((SECONDS + ${2:-30}))
  until [ -e "$1" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $1" >&2; return 1; }
    sleep 0.05
  done
}

# Waits until FILE has at least N lines (up to $3 seconds, default 60).
wait_lines() {
  local deadline=$((SECONDS + ${3:-60}))
  until [ -e "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ]; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $2 lines in $1" >&2; return 1; }
    sleep 0.05
  done
}

# Waits until `baton status NAME` says the app is ready (DESIGN: phase ready).
wait_ready() {
  local deadline=$((SECONDS + ${2:-60}))
  until "$baton" status --json "$1" 2>/dev/null | grep -q '"phase": *"ready"'; do
    [ $SECONDS -lt $deadline ] || { echo "baton $1 not ready after ${2:-60}s" >&2; "$baton" status "$1" >&2 || true; return 1; }
    sleep 0.05
  done
}

# "median (min–max, n=N)" of the numbers on stdin; $1 = printf format.
stats() {
  python3 -c '
import sys, statistics
fmt = sys.argv[1]
xs = sorted(float(x) for x in sys.stdin.read().split())
if not xs:
    print("n/a"); sys.exit()
f = lambda v: fmt % v
print(f"{f(statistics.median(xs))} ({f(xs[0])}–{f(xs[-1])}, n={len(xs)})")
' "${1:-%.1f}"
}

# Just the median of the numbers on stdin.
median() { python3 -c 'import sys,statistics; xs=[float(x) for x in sys.stdin.read().split()]; print(statistics.median(xs) if xs else "nan")'; }

# The header every result file starts with.
bench_header() {
  local commit dirty=""
  commit=$(git -C "$repo" rev-parse --short HEAD)
  git -C "$repo" diff --quiet HEAD -- src Cargo.toml Cargo.lock bench 2>/dev/null || dirty=" (with uncommitted changes)"
  echo "Run: \`$bench_cmd\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`$dirty,"
  echo "release build. Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)),"
  echo "kernel $(uname -r), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM."
  echo "Load average at the start: $load_at_start (the cores are shared with other jobs)."
}
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- A systemd container, as tests/container/mod.rs boots it -------------
# An overlay with lowerdir=/ (the container sees the host's files; whatever it
# writes stays in the overlay), `systemd-nspawn -b` into a target with only
# sysinit, sockets and journald, commands run inside with nsenter. Needs root.
# Sets $croot (the container's root as seen from the host) and $cinit (host
# pid of its systemd). container_down is idempotent; call it from the EXIT trap.
# The container gets a network namespace of its own (loopback only), so that
# systemd sets up that namespace as on a real systemd host
# (PID 1 raises net.unix.max_dgram_qlen to 512; this host has the kernel's 10), and
# nothing inside can bind the host's ports.
cpath=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
container_boot() {
  [ "$(id -u)" = 0 ] || { echo "the container needs root" >&2; exit 2; }
  command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn is missing: apt-get install systemd-container" >&2; exit 2; }
  cdir=$(mktemp -d /var/tmp/baton-bench-XXXXXX)
  mkdir "$cdir/upper" "$cdir/work" "$cdir/root"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$cdir/upper,workdir=$cdir/work" "$cdir/root"
  croot=$cdir/root
  cname="baton-bench-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  mkdir -p "$croot/etc/systemd/system" "$croot/etc/systemd/journald.conf.d"
  cat >"$croot/etc/systemd/system/baton-bench.target" <<'UNIT'
[Unit]
Description=baton benchmarks: sysinit, sockets and journald only
Requires=sysinit.target sockets.target systemd-journald.service
After=sysinit.target sockets.target systemd-journald.service
AllowIsolate=yes
UNIT
  # Lines must reach the journal, all of them: no rate limit, in memory.
  printf '[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\nRuntimeMaxUse=2G\n' \
    >"$croot/etc/systemd/journald.conf.d/bench.conf"
  setpriv --pdeathsig SIGTERM -- env -i PATH=$cpath LANG=C.UTF-8 \
    systemd-nspawn -D "$croot" --register=no --keep-unit --private-network -M "$cname" -b systemd.unit=baton-bench.target \
    </dev/null >"$cdir/nspawn.log" 2>&1 &
  cnspawn=$!
  local deadline=$((SECONDS + 90)) pid
  cinit=
  while [ -z "$cinit" ]; do
    [ $SECONDS -lt $deadline ] || { echo "no systemd in the container; nspawn log:" >&2; tail -30 "$cdir/nspawn.log" >&2; return 1; }
    for pid in $(pgrep -P "$cnspawn"); do
      [ "$(cat /proc/$pid/comm 2>/dev/null)" = systemd ] && cinit=$pid
    done
    sleep 0.05
  done
  until cexec systemctl is-system-running 2>/dev/null | grep -qE '^(running|degraded)'; do
    [ $SECONDS -lt $deadline ] || { echo "the container's systemd did not come up" >&2; return 1; }
    sleep 0.1
  done
}
# Runs a command inside the container.
cexec() { nsenter -t "$cinit" -a env -i PATH=$cpath LANG=C.UTF-8 SYSTEMD_PAGER= "$@"; }
container_down() {
  [ -n "${cdir:-}" ] || return 0
  if [ -n "${cnspawn:-}" ] && kill -0 "$cnspawn" 2>/dev/null; then
    kill -TERM "$cnspawn"
    for _ in $(seq 1 150); do kill -0 "$cnspawn" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$cnspawn" 2>/dev/null && { kill -KILL "$cinit" "$cnspawn" 2>/dev/null || true; sleep 0.5; }
  fi
  umount "$croot" 2>/dev/null || umount -l "$croot" 2>/dev/null || true
  if ! findmnt -R "$croot" >/dev/null 2>&1; then rm -rf "$cdir"; fi
  cdir=
}
