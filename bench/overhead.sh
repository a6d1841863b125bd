#!/usr/bin/env bash
# Benchmark: baton's own share of a reload. The time from `baton reload` to
# its answer, minus the workers' own time from exec to READY=1, for 1, 4 and
# 64 workers (goal: 50 ms or less), and where that overhead goes.
#
# The worker is bench/worker.c with BW_READY_MS (default 300): "a 300 ms app"
# that sleeps rather than computes, so the workers don't compete with baton
# for the CPU. It records, in CLOCK_REALTIME ns, when its main started and
# when it sent READY=1; baton runs with BATON_LOG=debug and its log
# timestamps (same clock) mark when it took the request, loaded the config,
# started each worker and handled the last READY. bench/reload_timing.py does
# the runs, bench/reload_summary.py the tables.
#
# Usage: bench/overhead.sh [RELOADS per worker count, default 8] [READY_MS, default 300]
# Writes docs/bench/overhead.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
reloads="${1:-8}"
ready_ms="${2:-300}"
bench_build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bench_worker

for n in 1 4 64; do
  echo "$n workers: $reloads reloads"
  python3 bench/reload_timing.py --baton "$baton" --worker "$worker" --workers "$n" \
    --reloads "$reloads" --ready-ms "$ready_ms" --pause 1 --name "bench-overhead-$n" >>"$work/runs.json"
done

out=docs/bench/overhead.md
{
  echo "# Reload overhead benchmark"
  echo
  bench_header
  echo
  echo "Standalone \`baton run\` (parallel reload, one socket) with N workers of"
  echo "\`bench/worker.c\`, which sends READY=1 ${ready_ms} ms after its \`main\` starts."
  echo "$reloads reloads per N, one every ~1 s; median (min–max) over them."
  echo "**Overhead** = reload total (\`baton reload\` started → exited, measured by"
  echo "the caller) − the slowest new worker's own time from \`main\` to READY=1."
  echo "The goal is ≤ 50 ms."
  echo
  python3 bench/reload_summary.py split <"$work/runs.json"
  echo
  echo "The overhead split (columns after it, in ms; they add up to it):"
  echo
  echo "- **client → driver**: from starting \`baton reload\` to baton's driver"
  echo "  taking the request (\`phase: Reloading\` in its debug log): the client"
  echo "  process starting, connecting and sending."
  echo "- **config load**: until \`reload: starting generation\`."
  echo "- **spawning**: from there to the last READY=1, minus the slowest worker's"
  echo "  own exec→READY: the time the workers waited to be started. baton forks"
  echo "  them one after another on its spawner thread (src/os/sys.rs, \`Spawner\`) and"
  echo "  waits for each exec to succeed before the next fork, so the last of 64"
  echo "  workers starts 64 fork+exec round trips after the first."
  echo "- **readiness**: from the last worker sending READY=1 to baton logging"
  echo "  \`reload finished\` (notify socket → event → state machine)."
  echo "- **answer**: from there until \`baton reload\` has printed and exited."
  echo
  echo "Timestamps: the workers' and the caller's are CLOCK_REALTIME in ns;"
  echo "baton's are its log's, in µs. The CPU column is baton's utime+stime over"
  echo "a whole reload cycle (reload, retiring the old generation, the pause),"
  echo "in whole clock ticks of $((1000 / clk_tck)) ms."
} >"$out"
cat "$out"
