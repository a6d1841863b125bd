#!/usr/bin/env python3
"""Times `baton reload` and splits the time into where it goes.

Used by bench/overhead.sh and bench/reload64.sh. Runs one standalone
`baton run` (BATON_LOG=debug, its log in a file) with WORKERS workers of
bench/worker.c on SOCKETS loopback sockets, then RELOADS reloads, one after
another with PAUSE seconds between them. Per reload it records:

- t0, t1: just before `baton reload NAME` is started, and once it exited
  (CLOCK_REALTIME, like everything below);
- from baton's log (tracing timestamps, microseconds):
    req  "phase: Reloading"            the driver took the request
    gen  "reload: starting generation" the config is loaded, spawning starts
    spawned  the last "started worker" line of the new generation
             (fork, then the wait for the exec status)
    done "reload finished"             the last worker's READY was handled
- from the workers (bench/worker.c writes BW_TIMES/times): each new
  worker's start (first thing in main) and the moment it sent READY=1;
- baton's CPU ticks (utime+stime) at t0 of this reload and of the next one,
  so the CPU per reload includes retiring the old generation.

Prints one JSON object per reload on stdout.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_ns(stamp):
    # "2026-11-29T09:28:17.929209Z": seconds via datetime, the fraction exactly.
    main, frac = stamp.rstrip("Z").split(".")
    sec = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


LINE = re.compile(r"^(\S+Z)\s+(\w+) (.*)$")


def read_log(path):
    events = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if m:
                events.append((log_ns(m.group(1)), m.group(3)))
    return events


def main():
    work = tempfile.mkdtemp(prefix="baton-bench-reload-")
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work):
    ap = argparse.ArgumentParser()
    ap.add_argument("--baton", required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sockets", type=int, default=1)
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument("--ready-ms", type=int, default=300)
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--name", default="bench-reload")
    args = ap.parse_args()

    env = dict(os.environ, BATON_RUNTIME_DIR=f"{work}/run", BATON_LOG="debug")
    config = f"{work}/{args.name}.toml"
    with open(config, "w") as f:
        f.write(f'name = "{args.name}"\ncommand = ["{args.worker}"]\nworkers = {args.workers}\n')
        f.write(f'[environment]\nBW_READY_MS = "{args.ready_ms}"\nBW_TIMES = "{work}"\n')
        for i in range(args.sockets):
            f.write(f'[[listen]]\nname = "s{i}"\naddress = "127.0.0.1:{free_port()}"\n')
    log_path = f"{work}/baton.log"
    with open(log_path, "w") as log:
        baton = subprocess.Popen([args.baton, "run", "--config", config], env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 60
        while True:
            st = subprocess.run([args.baton, "status", "--json", args.name], env=env, capture_output=True, text=True)
            if st.returncode == 0 and json.loads(st.stdout).get("supervisor", {}).get("phase") == "ready":
                break
            if time.time() > deadline or baton.poll() is not None:
                sys.exit(f"baton did not become ready; log:\n{open(log_path).read()[-3000:]}")
            time.sleep(0.05)
        time.sleep(args.pause)

        runs = []
        for i in range(args.reloads):
            c0 = ticks(baton.pid)
            t0 = time.time_ns()
            r = subprocess.run([args.baton, "reload", args.name], env=env, capture_output=True, text=True)
            t1 = time.time_ns()
            if r.returncode != 0:
                sys.exit(f"reload {i + 1} failed: {r.stdout}{r.stderr}")
            m = re.search(r"generation (\d+)", r.stdout)
            runs.append({"t0": t0, "t1": t1, "c0": c0, "generation": int(m.group(1)) if m else None})
            time.sleep(args.pause)
        end_ticks = ticks(baton.pid)
    finally:
        baton.terminate()
        try:
            baton.wait(30)
        except subprocess.TimeoutExpired:
            baton.kill()

    events = read_log(log_path)
    workers = {}
    with open(f"{work}/times") as f:
        for line in f:
            g, s, pid, start, ready = line.split()
            workers.setdefault(int(g), []).append((int(start), int(ready), int(pid)))
    hz = os.sysconf("SC_CLK_TCK")
    for i, run in enumerate(runs):
        g = run["generation"]
        t0, t1 = run["t0"], run["t1"]
        within = [(ts, msg) for ts, msg in events if t0 <= ts <= t1 + 50_000_000]

        def first(pattern):
            return next((ts for ts, msg in within if re.search(pattern, msg)), None)

        started_by_pid = {}
        for ts, msg in within:
            m = re.search(rf"started worker \d+ of generation {g} \(pid (\d+)\)", msg)
            if m:
                started_by_pid[int(m.group(1))] = ts
        started = list(started_by_pid.values())
        ws = workers.get(g, [])
        own = [ready - start for start, ready, _ in ws]
        # From the worker's first instruction to baton logging that it started:
        # the exec-status wait after exec, as the driver thread sees it.
        noticed = sorted(started_by_pid[pid] - start for start, _, pid in ws if pid in started_by_pid)
        c1 = runs[i + 1]["c0"] if i + 1 < len(runs) else end_ticks
        out = {
            "workers": args.workers,
            "sockets": args.sockets,
            "ready_ms": args.ready_ms,
            "generation": g,
            "total_ms": (t1 - t0) / 1e6,
            "req": first(r"phase: Reloading"),
            "gen": first(rf"starting generation {g}"),
            "first_spawned": min(started) if started else None,
            "spawned": max(started) if started else None,
            "done": first(rf"reload finished: generation {g}"),
            "first_start": min(w[0] for w in ws) if ws else None,
            "last_start": max(w[0] for w in ws) if ws else None,
            "last_ready": max(w[1] for w in ws) if ws else None,
            "exec_noticed_ms": noticed[len(noticed) // 2] / 1e6 if noticed else None,
            "own_max_ms": max(own) / 1e6 if own else None,
            "cpu_ms": (c1 - run["c0"]) * 1000 / hz,
            "t0": t0,
            "t1": t1,
            "started_count": len(started),
        }
        print(json.dumps(out))


if __name__ == "__main__":
    main()
