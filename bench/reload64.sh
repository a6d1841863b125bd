#!/usr/bin/env bash
# Benchmark: a big app. 64 workers on 4 sockets: the wall time of a reload
# (`baton reload` started → exited) and baton's CPU time per reload, with
# workers that are ready at once (bench/worker.c, BW_READY_MS=0), so what is
# measured is baton's own work: 64 forks and execs, 64 notify sockets,
# retiring 64 old workers. In the same run, for comparison, 64 workers on 1
# socket and 1 worker on 4 sockets.
#
# CPU per reload is utime+stime of baton (all threads, /proc/PID/stat) over
# a whole cycle: the reload, retiring the old generation and a 1 s pause.
#
# Usage: bench/reload64.sh [RELOADS per configuration, default 10]
# Writes docs/bench/reload64.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
reloads="${1:-10}"
bench_build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bench_worker

for cfg in "64 4" "64 1" "1 4"; do
  read -r n s <<<"$cfg"
  echo "$n workers × $s sockets: $reloads reloads"
  python3 bench/reload_timing.py --baton "$baton" --worker "$worker" --workers "$n" --sockets "$s" \
    --reloads "$reloads" --ready-ms 0 --pause 1 --name "bench-r64-$n-$s" >>"$work/runs.json"
done

out=docs/bench/reload64.md
{
  echo "# 64 workers × 4 sockets"
  echo
  bench_header
  echo
  echo "Standalone \`baton run\`, parallel reload, workers of \`bench/worker.c\` that"
  echo "send READY=1 as soon as \`main\` runs; $reloads reloads per configuration, one"
  echo "every ~1 s; median (min–max). \"Overhead\" is the wall time minus the slowest"
  echo "worker's own \`main\` → READY (here well under a millisecond); \"spawning all"
  echo "workers\" runs from \`reload: starting generation\` to the last \`started"
  echo "worker\` in baton's log. CPU: baton's utime+stime over the whole cycle"
  echo "(reload, retiring the old generation, the pause), in clock ticks of"
  echo "$((1000 / clk_tck)) ms."
  echo
  python3 bench/reload_summary.py cost <"$work/runs.json"
  echo
  echo "Where the time goes is in [overhead.md](overhead.md): nearly all of it is"
  echo "spawning, one worker after another on the spawner thread."
} >"$out"
cat "$out"
