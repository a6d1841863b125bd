#!/usr/bin/env bash
# Benchmark: what worker output costs baton, per line, to the journal and to
# stderr.
#
# Real journald, so a real systemd: a container booted like the system tests
# (tests/container/mod.rs: nspawn on an overlay of /, journald with
# Storage=volatile and no rate limit). Inside it, `systemd-run` starts
# `baton run` as a Type=notify service with one worker (bench/worker.c):
#   journal: the service's stderr is the journal stream, so baton sends each
#            worker line to journald's native socket (output::JournalSink);
#   stderr:  StandardError=file:/run/U.err, so baton writes prefixed lines to
#            its stderr (output::StderrSink).
# The worker becomes ready, waits for a go file, then writes LINES lines of
# about 90 bytes as fast as it can. baton's CPU time (utime+stime of every
# thread, /proc/PID/stat) is read before the go and once the last line has
# been handed on (the worker is done and baton's CPU time has stopped
# moving); journald's CPU time is read the same way, for context. Every line
# is then counted where it landed.
#
# Usage: bench/output.sh [LINES per run, default 300000] [REPEATS, default 3]
# With BATON_BASELINE=/path/to/another/baton, that binary runs too, in the
# same container and alternating with this build (rows marked "baseline").
# Writes docs/bench/output.md. Needs root and systemd-nspawn.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
lines="${1:-300000}"
repeats="${2:-3}"
bench_build
work=$(mktemp -d /var/tmp/baton-bench-work-XXXXXX)
cleanup() { container_down; rm -rf "$work"; }
trap cleanup EXIT
bench_worker

echo "booting a container"
container_boot
mkdir -p "$croot/opt/baton-bench"
cp "$baton" "$worker" "$croot/opt/baton-bench/"
qlen=$(cexec cat /proc/sys/net/unix/max_dgram_qlen)
echo "net.unix.max_dgram_qlen in the container: $qlen"
sinks="journal stderr"
if [ -n "${BATON_BASELINE:-}" ]; then
  cp "$BATON_BASELINE" "$croot/opt/baton-bench/baton-baseline"
  sinks="journal stderr journal-baseline stderr-baseline"
fi

# /proc/PID/stat utime+stime inside the container.
cticks() { cexec cat "/proc/$1/stat" | awk '{ sub(/.*\) /, ""); print $12 + $13 }'; }

# One run: prints "baton_ticks journald_ticks wall_ms landed".
run_case() {
  local sink=$1 unit=$2 props=() pid jpid b0 j0 b1 j1 t0 t1 prev landed bin=/opt/baton-bench/baton
  case $sink in *-baseline) bin=/opt/baton-bench/baton-baseline ;; esac
  case $sink in stderr*) props=(-p "StandardError=file:/run/$unit.err") ;; esac
  cexec systemd-run --quiet --unit="$unit" -p Type=notify -p NotifyAccess=main \
    -p LogRateLimitIntervalSec=0 "${props[@]}" \
    --setenv=BATON_RUNTIME_DIR=/run/bench-baton --setenv=BW_LINES="$lines" \
    --setenv=BW_GO="/run/$unit.go" --setenv=BW_DONE="/run/$unit.done" \
    "$bin" run --name "$unit" --listen 127.0.0.1:0 --workers 1 -- /opt/baton-bench/bench-worker
  pid=$(cexec systemctl show -p MainPID --value "$unit")
  jpid=$(cexec systemctl show -p MainPID --value systemd-journald)
  sleep 0.5
  b0=$(cticks "$pid"); j0=$(cticks "$jpid"); t0=$(now_ns)
  cexec touch "/run/$unit.go"
  until cexec test -e "/run/$unit.done"; do sleep 0.1; done
  # The last lines may still be in the pipe and in baton's queue.
  prev=-1; b1=$(cticks "$pid")
  while [ "$b1" != "$prev" ]; do prev=$b1; sleep 0.5; b1=$(cticks "$pid"); done
  t1=$(now_ns); j1=$(cticks "$jpid")
  if [ "${sink%-baseline}" = stderr ]; then
    landed=$(cexec grep -c '^bench-out-.*\]: 2026-01-01T' "/run/$unit.err")
  else
    landed=$(cexec journalctl -u "$unit" -o cat --no-pager | grep -c '^2026-01-01T' || true)
  fi
  cexec systemctl stop "$unit"
  cexec rm -f "/run/$unit.err"
  echo "$((b1 - b0)) $((j1 - j0)) $(((t1 - t0) / 1000000)) $landed"
}

: >"$work/results"
for r in $(seq 1 "$repeats"); do
  for sink in $sinks; do
    echo "run $r: $sink"
    read -r bt jt ms landed < <(run_case "$sink" "bench-out-$sink-$r")
    echo "  baton ${bt} ticks, journald ${jt} ticks, ${ms} ms, ${landed}/${lines} lines landed"
    echo "$sink $bt $jt $ms $landed" >>"$work/results"
  done
done

# µs of CPU per line from clock ticks.
per_line() { awk -v s="$1" -v col="$2" -v hz="$clk_tck" -v n="$lines" '$1 == s { print $col / hz * 1e6 / n }' "$work/results"; }
rate() { awk -v s="$1" -v n="$lines" '$1 == s { print n / ($4 / 1000) / 1000 }' "$work/results"; }
landed() { awk -v s="$1" '$1 == s { print $5 }' "$work/results" | sort -u | paste -sd/; }
bj=$(per_line journal 2 | median); bs=$(per_line stderr 2 | median)

out=docs/bench/output.md
{
  echo "# Worker-output benchmark"
  echo
  bench_header
  echo
  echo "One worker (\`bench/worker.c\`) writes $lines lines of about 90 bytes to"
  echo "stdout as fast as it can; \`baton run\` runs as a \`systemd-run\` Type=notify"
  echo "service in a systemd 252 container (booted like the system tests; journald"
  echo "with \`Storage=volatile\` and no rate limit). CPU time is utime+stime of"
  echo "every thread from \`/proc/PID/stat\`, from the moment the worker starts"
  echo "writing to the moment baton has handed on the last line; $repeats runs per"
  echo "sink, alternating, median (min–max)."
  echo
  echo "| sink | baton CPU per line | baton CPU per million lines | journald CPU per line | lines/s through baton | lines landed |"
  echo "|---|---|---|---|---|---|"
  for sink in $sinks; do
    echo "| ${sink/-baseline/ (baseline)} | $(per_line $sink 2 | stats '%.2f µs') | $(per_line $sink 2 | awk '{print $1}' | stats '%.2f s') | $(per_line $sink 3 | stats '%.2f µs') | $(rate $sink | stats '%.0fk') | $(landed $sink) of $lines |"
  done
  echo
  echo "- journal / stderr, baton CPU per line: **$(python3 -c "print(f'{$bj/$bs:.2f}')")**"
  if [ -n "${BATON_BASELINE:-}" ]; then
    for sink in journal stderr; do
      echo "- $sink, this build / baseline: **$(python3 -c "print(f'{$(per_line $sink 2 | median)/$(per_line $sink-baseline 2 | median):.2f}')")**"
    done
    echo "- baseline: \`$BATON_BASELINE\`${BASELINE_NOTE:+ ($BASELINE_NOTE)}."
  fi
  echo "- journal: baton sends one datagram per line to \`/run/systemd/journal/socket\`"
  echo "  (\`StandardError=journal\`, the default under systemd); stderr: the service's"
  echo "  \`StandardError=file:\` on the container's /run (tmpfs)."
  echo "- The container has its own network namespace, where systemd set"
  echo "  \`net.unix.max_dgram_qlen\` = $qlen (systemd raises it at boot; the kernel's default is 10):"
  echo "  how many datagrams may wait on journald's socket before baton's send blocks."
  echo "- \"per million lines\" is the same figure in seconds of CPU. The"
  echo "  journald column is journald's own cost for the same lines (it parses and"
  echo "  indexes every entry), for context: it is not baton's."
  echo "- The wall-clock rate depends on what else the 2 shared cores were doing;"
  echo "  CPU time per line much less so."
} >"$out"
cat "$out"
