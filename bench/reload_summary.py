#!/usr/bin/env python3
"""Markdown tables from bench/reload_timing.py's JSON lines (stdin).

  reload_summary.py split   the overhead split, one row per worker count
  reload_summary.py cost    wall time and CPU per reload, one row per config

Every cell is "median (min–max)" over the reloads of that configuration.
The split: overhead = total - slowest worker's own exec→READY time, and
  client → driver  t0 → "phase: Reloading"  (client start, connect, request)
  config load      → "starting generation"
  spawning         → the last worker's READY, minus the slowest worker's own
                     exec→READY time: the fork/exec/exec-status of the
                     workers before it, serialised on the driver
  readiness        last READY=1 sent → "reload finished" logged
  answer           → `baton reload` exited (reply, client prints, exits)
which add up to the overhead exactly.
"""

import json
import statistics
import sys


def cell(xs, fmt="%.1f"):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "n/a"
    return f"{fmt % statistics.median(xs)} ({fmt % xs[0]}–{fmt % xs[-1]})"


def ms(a, b):
    return None if a is None or b is None else (b - a) / 1e6


def split(rows):
    out = []
    for r in rows:
        own = r["own_max_ms"]
        out.append({
            "total": r["total_ms"],
            "own": own,
            "overhead": r["total_ms"] - own,
            "client": ms(r["t0"], r["req"]),
            "config": ms(r["req"], r["gen"]),
            "spawn": ms(r["gen"], r["last_ready"]) - own,
            "ready": ms(r["last_ready"], r["done"]),
            "answer": ms(r["done"], r["t1"]),
            "spawn_each": ms(r["gen"], r["spawned"]) / r["workers"],
            "noticed": r["exec_noticed_ms"],
            "cpu": r["cpu_ms"],
        })
    return out


def main():
    mode = sys.argv[1]
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    groups = {}
    for r in rows:
        groups.setdefault((r["workers"], r["sockets"], r["ready_ms"]), []).append(r)
    if mode == "split":
        print("| workers | reloads | reload total (ms) | slowest worker exec→READY (ms) | **overhead (ms)** | client → driver | config load | spawning | readiness | answer |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for key, rs in sorted(groups.items()):
            s = split(rs)
            col = lambda k: cell([x[k] for x in s])
            print(f"| {key[0]} | {len(rs)} | {col('total')} | {col('own')} | **{col('overhead')}** | {col('client')} | {col('config')} | {col('spawn')} | {col('ready')} | {col('answer')} |")
        print()
        print("| workers | spawn per worker, until baton logged it started (ms) | worker's main → baton logged it started (ms, median per reload) | baton CPU per reload cycle (ms) |")
        print("|---|---|---|---|")
        for key, rs in sorted(groups.items()):
            s = split(rs)
            print(f"| {key[0]} | {cell([x['spawn_each'] for x in s], '%.2f')} | {cell([x['noticed'] for x in s], '%.2f')} | {cell([x['cpu'] for x in s], '%.0f')} |")
    elif mode == "cost":
        print("| workers × sockets | worker exec→READY | reloads | reload wall time, `baton reload` start → exit (ms) | overhead (ms) | spawning all workers (ms) | baton CPU per reload (ms) |")
        print("|---|---|---|---|---|---|---|")
        for key, rs in sorted(groups.items()):
            s = split(rs)
            print(f"| {key[0]} × {key[1]} | {key[2]} ms | {len(rs)} | {cell([x['total'] for x in s])} | {cell([x['overhead'] for x in s])} | {cell([ms(r['gen'], r['spawned']) for r in rs])} | {cell([x['cpu'] for x in s], '%.0f')} |")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
