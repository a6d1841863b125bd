#!/usr/bin/env bash
# Benchmark: what an idle baton costs. Standalone `baton run` with N idle
# workers (bench/worker.c, which is ready at once and then sleeps in
# sigsuspend), for N = 1, 4 and 64. Once the app is ready and 3 s have
# passed, for SECS seconds:
#   - wakeups: voluntary context switches summed over baton's threads
#     (/proc/PID/task/*/status); a thread that blocks once was woken once;
#   - the same counted by `perf stat -e context-switches` on the process
#     (voluntary and involuntary), when perf works here;
#   - baton's CPU time: the run time of its threads in ns
#     (/proc/PID/task/*/schedstat, per thread; utime+stime in clock ticks is
#     too coarse for an idle process).
# REPEATS runs per N, median (min–max).
#
# Usage: bench/idle.sh [SECS, default 15] [REPEATS, default 2]
# Writes docs/bench/idle.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
secs="${1:-15}"
repeats="${2:-2}"
bench_build
work=$(mktemp -d)
export BATON_RUNTIME_DIR=$work/run
bpid=
cleanup() { [ -z "$bpid" ] || kill -TERM "$bpid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
bench_worker
have_perf=no
perf stat -e context-switches true >/dev/null 2>&1 && have_perf=yes

# Per-thread voluntary switches as "comm=N ..." (threads named alike summed).
per_thread() {
  for t in /proc/"$1"/task/*; do
    echo "$(cat "$t/comm") $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")"
  done | awk '{ n[$1] += $2 } END { for (k in n) printf "%s=%d ", k, n[k] }'
}
# "TID RUN_NS VOLUNTARY" per live thread. baton's blocking-pool threads come
# and go, so deltas are taken per thread: a thread that is new counts from 0,
# one that ended is left out (it had been idle for 10 s before it ended).
snapshot() {
  for t in /proc/"$1"/task/*; do
    echo "${t##*/} $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null) $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status" 2>/dev/null)"
  done | awk 'NF == 3'
}
# Prints "VOLUNTARY_DELTA RUN_NS_DELTA" between two snapshots.
delta() { awk 'NR == FNR { cpu[$1] = $2; vol[$1] = $3; next } { c += $2 - cpu[$1]; v += $3 - vol[$1] } END { print v, c }' "$1" "$2"; }

: >"$work/results"
for r in $(seq 1 "$repeats"); do
  for n in 1 4 64; do
    name="bench-idle-$n"
    "$baton" run --name "$name" --listen 127.0.0.1:0 --workers "$n" -- "$worker" >"$work/$name.log" 2>&1 &
    bpid=$!
    wait_ready "$name"
    sleep 3
    snapshot "$bpid" >"$work/before"; p0=$(per_thread "$bpid")
    if [ $have_perf = yes ]; then
      perf stat -x, -e context-switches -p "$bpid" -o "$work/perf" -- sleep "$secs" 2>/dev/null
      pcs=$(awk -F, '/context-switches/ {print $1}' "$work/perf")
    else
      sleep "$secs"; pcs=nan
    fi
    snapshot "$bpid" >"$work/after"; p1=$(per_thread "$bpid")
    read -r dv dc < <(delta "$work/before" "$work/after")
    kill -TERM "$bpid"; wait "$bpid" || true; bpid=
    echo "$n $dv $pcs $dc" >>"$work/results"
    echo "run $r, $n workers: $dv voluntary switches, perf: $pcs, $(( dc / 1000 )) µs of CPU in ${secs}s; threads before: $p0; after: $p1"
  done
done

col() { awk -v n="$1" -v c="$2" -v s="$secs" -v hz="$clk_tck" -v k="${3:-}" '$1 == n { print (k == "cpu" ? $c / 1e6 * 60 / s : $c / s) }' "$work/results"; }
out=docs/bench/idle.md
{
  echo "# Idle benchmark"
  echo
  bench_header
  echo
  echo "Standalone \`baton run\` with N idle workers (\`bench/worker.c\`: ready at"
  echo "once, then asleep). Measured for ${secs} s, from 3 s after the app became"
  echo "ready; $repeats runs per N, median (min–max)."
  echo
  echo "| workers | wakeups/s (voluntary switches, /proc) | context switches/s (perf) | baton CPU per minute idle |"
  echo "|---|---|---|---|"
  for n in 1 4 64; do
    echo "| $n | $(col $n 2 | stats '%.2f') | $(col $n 3 | stats '%.2f') | $(col $n 4 cpu | stats '%.2f ms') |"
  done
  echo
  echo "- Wakeups are counted as voluntary context switches of all of baton's"
  echo "  threads: each time a thread blocks it must later be woken."
  echo "  perf's count also includes involuntary switches (preemption by other"
  echo "  jobs on the shared cores). CPU time is the sum of the threads' run"
  echo "  time from \`/proc/PID/task/*/schedstat\` (ns), per thread (threads of"
  echo "  tokio's blocking pool come and go)."
  echo "- What woke it before (3.4–3.7 wakeups/s at commit 1499608, strace of an"
  echo "  idle baton): the \`[limits] memory\` sampling interval every second, also"
  echo "  when no worker had a limit, and the EXTEND_TIMEOUT_USEC interval every"
  echo "  5 s, also when baton was ready. Both now tick only while they have work"
  echo "  (src/runtime.rs, the select loop), and the core's deadlines live in one"
  echo "  sleep that an idle, ready baton does not arm: with no watchdog, nothing"
  echo "  wakes it. Under systemd, WatchdogSec=30s adds one wakeup per 15 s."
  echo "- Per-thread voluntary switches of the last run (main thread, tokio workers,"
  echo "  log writer), cumulative since start: $p1."
} >"$out"
cat "$out"
