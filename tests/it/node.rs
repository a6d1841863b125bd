//! Node.js under baton, with real node processes (README, "Node.js").
//!
//! - The Express example (`examples/node`): 20 reloads of 4 workers under
//!   load with zero failed requests, readiness through `process.send('ready')`
//!   and the drain started by the 'shutdown' message.
//! - A worker that sends junk over the IPC channel: baton keeps working.
//! - A message that carries an fd, then more than the socket buffer holds:
//!   baton keeps reading the channel, and does not keep the fd.
//! - `[limits] memory`: a worker that keeps growing is replaced, the new one
//!   ready first, with zero failed requests.
//!
//! `node` is required. The Express test runs `npm ci` in `examples/node`
//! when its `node_modules` is missing or was installed from another
//! `package-lock.json`. The other workers are the scripts in
//! `examples/node/test-fixtures`, which need nothing from npm.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::baton::{
    Baton, WorkerLine, config_text, fd_targets, port, provision_node_modules, rss_kib, worker_lines,
};
use crate::common::load::{Load, examples_drain_against_the_usual};
use crate::common::wait_until;

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node")
}

fn fixture(name: &str) -> String {
    node_dir().join("test-fixtures").join(name).display().to_string()
}

/// Fails loudly without node: it is required on the machines that run these
/// tests.
fn require_node() {
    let out = Command::new("node").arg("--version").output();
    match out {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "node is required for tests/it/node.rs but `node --version` failed ({other:?}); \
             install Node.js 18.2 or later (Debian: apt-get install nodejs npm)"
        ),
    }
}

/// Node is there, and examples/node has its node_modules.
fn provision_express() {
    require_node();
    provision_node_modules();
}

/// examples/node/baton.toml, the example's own config, on `port` (checked
/// to be what this suite relies on: node-ipc readiness, the 'shutdown'
/// message).
pub(crate) fn example_config(port: u16, workers: usize) -> String {
    provision_express();
    let shipped = std::fs::read_to_string(node_dir().join("baton.toml")).unwrap();
    for needed in [
        "workers = 4\n".to_owned(),
        "mode = \"node-ipc\"".to_owned(),
        "message = \"shutdown\"".to_owned(),
        "timeout = \"30s\"".to_owned(),
        "directory = \".\"".to_owned(),
        "address = \"127.0.0.1:8080\"".to_owned(),
    ] {
        assert!(shipped.contains(&needed), "examples/node/baton.toml lacks {needed:?}");
    }
    shipped
        .replace("workers = 4\n", &format!("workers = {workers}\n"))
        .replace(
            "directory = \".\"",
            &format!("directory = {:?}", node_dir().display().to_string()),
        )
        .replace(
            "address = \"127.0.0.1:8080\"",
            &format!("address = \"127.0.0.1:{port}\""),
        )
}

/// The lines of one worker process.
fn lines_of(lines: &[WorkerLine], pid: i32) -> Vec<&str> {
    lines.iter().filter(|l| l.pid == pid).map(|l| l.text.as_str()).collect()
}

fn ready_workers(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["supervisor"]["generations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["workers"].as_array().cloned().unwrap_or_default())
        .filter(|w| w["state"] == "ready")
        .collect()
}

#[test]
fn express_twenty_reloads_under_load_fail_no_request() {
    provision_express();
    const WORKERS: usize = 4;
    const RELOADS: usize = 20;
    let port = port();
    let config = example_config(port, WORKERS);
    let baton = Baton::start(port, &config);
    let first = baton.worker_pids(1);
    assert_eq!(first.len(), WORKERS, "{:#}", baton.status());

    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    // A request in flight across the first reload: the drain must finish it.
    // It lasts far longer than a reload of four Node workers takes (seen: up
    // to about 3 s, and 10 s once on a 2-core machine at load 20), less than
    // the example's [stop] timeout (30 s), and about as long as the 20
    // reloads take, so it costs the test little.
    let slow = crate::common::slow_request_in_background(baton.addr(), 25_000);
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    let first_reload_done = baton.reload_times(RELOADS, Duration::from_millis(100));
    let reload_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    let (slow, slow_done) = slow.join().unwrap();

    eprintln!(
        "express: {RELOADS} reloads of {WORKERS} workers in {:.1}s under load: {} requests, {} failed; {stats}",
        reload_time.as_secs_f64(),
        stats.total(),
        stats.failed
    );
    stats.assert_served_through(200, RELOADS as u64 + 1);
    assert_eq!(
        slow,
        Ok((200, "slow done after 25000 ms\n".to_owned())),
        "the request in flight during the first reload"
    );
    // It was answered after generation 1 had been told to drain.
    assert!(
        first_reload_done < slow_done,
        "the slow request finished before the first reload did"
    );

    // Readiness came through IPC: the workers never write to NOTIFY_SOCKET,
    // and every worker of the last generation is ready.
    let status = baton.status();
    assert_eq!(status["supervisor"]["serving"].as_u64(), Some(RELOADS as u64 + 1));
    let serving = ready_workers(&status);
    assert_eq!(serving.len(), WORKERS, "{status:#}");

    // Every retired generation drains and exits.
    assert!(
        wait_until(Duration::from_secs(30), || {
            baton.status()["supervisor"]["generations"].as_array().map(Vec::len) == Some(1)
        }),
        "old generations still around: {:#}",
        baton.status()
    );

    let log = baton.log();
    let lines = worker_lines(&log);
    let pids: BTreeSet<i32> = lines.iter().map(|l| l.pid).collect();
    assert_eq!(pids.len(), WORKERS * (RELOADS + 1), "workers seen in the log");
    let mut by_message = 0;
    for &pid in &pids {
        let mine = lines_of(&lines, pid);
        let first = lines.iter().find(|l| l.pid == pid).unwrap();
        let intro = mine
            .iter()
            .find(|t| t.contains(" listening on "))
            .unwrap_or_else(|| panic!("pid {pid} never said it listened: {mine:#?}"));
        assert!(
            intro.contains("listening on fd 3 from LISTEN_FDS"),
            "pid {pid} did not use the passed socket: {intro}"
        );
        assert!(
            intro.contains(&format!("(NODE_APP_INSTANCE {})", first.slot)),
            "pid {pid}, worker {}: NODE_APP_INSTANCE is not the worker index: {intro}",
            first.slot
        );
        assert!(
            mine.iter().any(|t| t.contains("ready sent over IPC")),
            "pid {pid} never sent ready over IPC: {mine:#?}"
        );
        if first.generation == RELOADS as u64 + 1 {
            continue;
        }
        // A retired worker: its drain started with the message, never a signal.
        let drains: Vec<&&str> = mine
            .iter()
            .filter(|t| t.starts_with("express: shutdown message") || t.starts_with("express: SIG"))
            .collect();
        assert!(
            drains
                .first()
                .is_some_and(|t| t.starts_with("express: shutdown message: draining")),
            "pid {pid} (generation {}) did not start draining on the shutdown message: {mine:#?}",
            first.generation
        );
        assert!(
            mine.contains(&"express: drained, exiting"),
            "pid {pid} did not finish its drain: {mine:#?}"
        );
        by_message += 1;
    }
    assert_eq!(by_message, WORKERS * RELOADS);
    // The slow request was in flight in one of the first generation's workers.
    assert!(
        lines.iter().any(|l| l.generation == 1
            && l.text.contains("shutdown message: draining")
            && !l.text.ends_with(", 0 request(s) in flight")),
        "no generation-1 worker drained with a request in flight:\n{log}"
    );
    eprintln!(
        "express: {by_message} retired workers, each drained on the 'shutdown' message; \
         readiness over IPC for all {} workers",
        pids.len()
    );
}

#[test]
fn express_example_loses_nothing_under_keep_alive_load_over_20_reloads() {
    provision_express();
    examples_drain_against_the_usual("express example", 20, 500, |grace_ms| {
        let port = port();
        let mut config = example_config(port, 2);
        assert!(config.contains("[environment]\n"), "{config}");
        if let Some(ms) = grace_ms {
            config = config.replacen(
                "[environment]\n",
                &format!("[environment]\nBATON_EXAMPLE_IDLE_GRACE_MS = \"{ms}\"\n"),
                1,
            );
        }
        Baton::start(port, &config)
    });
}

#[test]
fn junk_over_ipc_does_not_disturb_baton() {
    require_node();
    let port = port();
    let junk = fixture("ipc-junk.js");
    let extra = "[environment]\nJUNK_FOREVER_WORKER = \"0\"\n\n\
                 [readiness]\nmode = \"node-ipc\"\ntimeout = \"30s\"\n\n\
                 [stop]\nmessage = \"shutdown\"\ntimeout = \"10s\"\n";
    let mut baton = Baton::start(port, &config_text(port, &["node", &junk], 2, extra));
    let load = Load::start(baton.addr(), "/", 4);

    let junk_done = |baton: &Baton, generation: u64| {
        baton.wait_log(Duration::from_secs(30), |log| {
            worker_lines(log)
                .iter()
                .filter(|l| l.generation == generation && l.text.ends_with(": junk done"))
                .count()
                == 2
        })
    };
    assert!(
        junk_done(&baton, 1),
        "generation 1 did not finish its junk:\n{}",
        baton.log()
    );
    // Every worker said ready only after its junk, and baton heard it anyway.
    let status = baton.status();
    assert_eq!(ready_workers(&status).len(), 2, "{status:#}");

    // A reload: the new workers spew junk too, the old ones drain on the
    // message even while worker 0 floods the channel without pause.
    let out = baton.reload();
    assert!(
        out.status.success(),
        "reload failed: {}\n{}\nbaton log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        baton.log()
    );
    assert!(
        junk_done(&baton, 2),
        "generation 2 did not finish its junk:\n{}",
        baton.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            baton.status()["supervisor"]["generations"].as_array().map(Vec::len) == Some(1)
        }),
        "generation 1 did not retire: {:#}\n{}",
        baton.status(),
        baton.log()
    );
    // Worker 0 floods without pause: baton keeps reading it, and answers
    // status meanwhile.
    let flooded = |baton: &Baton| {
        worker_lines(&baton.log())
            .iter()
            .rev()
            .filter(|l| l.generation == 2)
            .find_map(|l| {
                l.text
                    .split(": flooded ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
    };
    assert!(
        wait_until(Duration::from_secs(10), || flooded(&baton).is_some()),
        "generation 2 worker 0 is not flooding:\n{}",
        baton.log()
    );
    let flood_before = flooded(&baton).unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    let flood_after = flooded(&baton).unwrap();
    assert!(
        flood_after > flood_before,
        "the flood stalled at {flood_before} MB: baton stopped reading the channel"
    );
    let started = Instant::now();
    let status = baton.status();
    let status_took = started.elapsed();
    assert_eq!(status["supervisor"]["serving"].as_u64(), Some(2));
    assert_eq!(ready_workers(&status).len(), 2, "{status:#}");

    let log = baton.log();
    let lines = worker_lines(&log);
    for l in lines
        .iter()
        .filter(|l| l.generation == 1 && l.text.ends_with(": junk done"))
    {
        assert!(
            lines_of(&lines, l.pid)
                .iter()
                .any(|t| t.ends_with(": shutdown message: draining")),
            "generation 1 worker {} did not get the shutdown message:\n{log}",
            l.slot
        );
    }
    let baton_fds = fd_targets(baton.pid());
    let rss = rss_kib(baton.pid());

    let stats = load.stop();
    eprintln!(
        "junk: baton answered status in {}ms while worker 0 flooded ({flood_before} MB, 4.5 s later {flood_after} MB), \
         rss {} MiB, {} fds; load: {stats}",
        status_took.as_millis(),
        rss / 1024,
        baton_fds.len()
    );
    assert_eq!(stats.failed, 0, "failed requests: {stats}\n{:?}", stats.first_errors);
    assert!(rss < 200 * 1024, "baton's RSS grew to {} MiB", rss / 1024);
    assert!(
        baton_fds.len() < 64,
        "baton holds {} fds: {baton_fds:?}",
        baton_fds.len()
    );

    // And it still stops cleanly.
    baton.signal(nix::sys::signal::SIGTERM);
    let exit = baton.wait_exit(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "baton did not stop cleanly: {exit:?}\n{}",
        baton.log()
    );
}

/// A message that carries a file descriptor (SCM_RIGHTS), followed by more
/// bytes than the socket buffer holds. baton is stopped meanwhile, so that
/// when it resumes, the message with the fd is the first thing it reads.
///
/// A unix socket read stops right after a message with fds. A reader that
/// takes that short read for "drained" (tokio's `AsyncRead` on epoll does)
/// then waits for new data that the worker, its buffer full, can't send: the
/// channel stalls. Whether tokio clears its readiness in that window depends
/// on timing, so with such a reader this test fails most times, not every
/// time; with a reader that reads until `WouldBlock` it always passes.
#[test]
fn a_message_with_an_fd_does_not_stall_the_channel() {
    require_node();
    let port = port();
    let junk = fixture("ipc-junk.js");
    let scratch = tempfile::tempdir().unwrap();
    let full = scratch.path().join("channel-full");
    let extra = format!(
        "[environment]\nJUNK_SKIP = \"1\"\nJUNK_FULL_FILE = {:?}\n\n\
         [readiness]\nmode = \"node-ipc\"\ntimeout = \"30s\"\n\n\
         [stop]\nmessage = \"shutdown\"\ntimeout = \"10s\"\n",
        full.display().to_string()
    );
    let baton = Baton::start(port, &config_text(port, &["node", &junk], 1, &extra));
    assert!(
        baton.wait_log(Duration::from_secs(30), |log| log.contains(": junk done")),
        "{}",
        baton.log()
    );
    let worker = nix::unistd::Pid::from_raw(baton.worker_pids(1)[0]);
    // Nothing but 'ready' went through the channel (JUNK_SKIP). With baton
    // stopped, the worker sends the fd and fills the channel behind it.
    baton.signal(nix::sys::signal::SIGSTOP);
    nix::sys::signal::kill(worker, nix::sys::signal::SIGUSR2).unwrap();
    let filled = wait_until(Duration::from_secs(20), || full.exists());
    baton.signal(nix::sys::signal::SIGCONT);
    assert!(filled, "the worker never filled its channel:\n{}", baton.log());

    let through = baton.wait_log(Duration::from_secs(15), |log| {
        log.contains(": wrote 2 MB after the handle")
    });
    assert!(
        through,
        "baton stopped reading the worker's IPC channel after the message with an fd, with data \
         still queued (`ss -xp` shows it in baton's Recv-Q):\n{}",
        baton.log()
    );
    let log = baton.log();
    let socket = log
        .split("sent a handle: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap();
    let baton_fds = fd_targets(baton.pid());
    assert!(
        !baton_fds.iter().any(|(_, target)| target == socket),
        "baton kept the fd the worker sent ({socket}): {baton_fds:?}"
    );
    let out = baton.reload();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The `monotonic N ms` that `grow.js` puts in its ready and draining lines.
fn monotonic_ms(text: &str) -> Option<f64> {
    text.split("monotonic ").nth(1)?.split(' ').next()?.parse().ok()
}

/// One look at `baton status --json`.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    /// pid → (slot, state, rss_bytes)
    workers: BTreeMap<i32, (u64, String, Option<u64>)>,
}

#[test]
fn memory_limit_replaces_a_growing_worker_without_failing_a_request() {
    require_node();
    const WORKERS: usize = 2;
    const LIMIT: u64 = 96 * 1024 * 1024;
    let port = port();
    let grow = fixture("grow.js");
    let extra = "[environment]\nGROW_MB_PER_SEC = \"10\"\n\n\
                 [readiness]\nmode = \"node-ipc\"\ntimeout = \"30s\"\n\n\
                 [stop]\nmessage = \"shutdown\"\ntimeout = \"10s\"\n\n\
                 [limits]\nmemory = \"96MiB\"\n";
    let baton = Arc::new(Baton::start(port, &config_text(port, &["node", &grow], WORKERS, extra)));
    let first: BTreeSet<i32> = baton.worker_pids(1).into_iter().collect();
    assert_eq!(first.len(), WORKERS);

    // Watch status while the load runs.
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (baton, samples, stop) = (baton.clone(), samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = baton.try_status() {
                    let workers = s["supervisor"]["generations"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|g| g["workers"].as_array().cloned().unwrap_or_default())
                        .filter_map(|w| {
                            Some((
                                i32::try_from(w["pid"].as_i64()?).ok()?,
                                (
                                    w["slot"].as_u64()?,
                                    w["state"].as_str()?.to_owned(),
                                    w["rss_bytes"].as_u64(),
                                ),
                            ))
                        })
                        .collect();
                    samples.lock().unwrap().push(Sample {
                        at: started.elapsed(),
                        workers,
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let load = Load::start(baton.addr(), "/", 4);

    // Both original workers are replaced, and their replacements serve.
    let replaced = wait_until(Duration::from_secs(90), || {
        let log = baton.log();
        let lines = worker_lines(&log);
        first.iter().all(|&pid| {
            lines
                .iter()
                .any(|l| l.pid == pid && l.text.ends_with(": drained, exiting"))
        })
    });
    // A little more load on the replacements.
    std::thread::sleep(Duration::from_secs(1));
    let stats = load.stop();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let log = baton.log();
    assert!(
        replaced,
        "the growing workers {first:?} were not replaced within 90 s: {:#}\n{log}",
        baton.status()
    );

    let samples = samples.lock().unwrap().clone();
    let lines = worker_lines(&log);
    let mut max_rss: BTreeMap<i32, u64> = BTreeMap::new();
    for s in &samples {
        for (&pid, (_, _, rss)) in &s.workers {
            let entry = max_rss.entry(pid).or_default();
            *entry = (*entry).max(rss.unwrap_or(0));
        }
    }
    for &old in &first {
        let slot = lines.iter().find(|l| l.pid == old).unwrap().slot;
        let mine = lines_of(&lines, old);
        // It was replaced for its memory: status saw it above the limit.
        assert!(
            max_rss.get(&old).is_some_and(|&m| m > LIMIT),
            "worker {slot} pid {old} never showed rss_bytes above the limit: max {:?}",
            max_rss.get(&old)
        );
        // Drained gracefully, on the message.
        let drained_at = mine
            .iter()
            .find(|t| t.contains(": shutdown message: draining"))
            .and_then(|t| monotonic_ms(t))
            .unwrap_or_else(|| panic!("pid {old} did not drain on the shutdown message: {mine:#?}"));
        assert!(
            !mine.iter().any(|t| t.contains(": SIGTERM: draining")),
            "pid {old} got SIGTERM: {mine:#?}"
        );
        // Its replacement in the same slot had sent ready before the old one
        // got the message. (The lines of two workers can reach baton's log out
        // of order, so this compares the times they carry.)
        let replacement = lines.iter().find_map(|l| {
            let at = monotonic_ms(&l.text)?;
            (l.slot == slot && !first.contains(&l.pid) && l.text.contains(": ready (")).then_some((l.pid, at))
        });
        match replacement {
            Some((pid, ready_at)) => assert!(
                ready_at < drained_at,
                "worker {slot}: pid {old} got the shutdown message at {drained_at} ms, \
                 before its replacement pid {pid} sent ready at {ready_at} ms:\n{log}"
            ),
            None => panic!("no replacement for worker {slot} became ready:\n{log}"),
        }
    }
    // Status never showed fewer ready workers than configured, and showed
    // every ready worker's RSS.
    let settled: Vec<&Sample> = samples.iter().filter(|s| !s.workers.is_empty()).collect();
    assert!(settled.len() > 20, "too few status samples: {}", settled.len());
    for s in &settled {
        let ready: Vec<_> = s.workers.values().filter(|(_, state, _)| state == "ready").collect();
        assert!(
            ready.len() >= WORKERS,
            "at {:?} only {} worker(s) were ready: {:?}",
            s.at,
            ready.len(),
            s.workers
        );
        assert!(
            ready.iter().all(|(_, _, rss)| rss.is_some_and(|r| r > 0)),
            "a ready worker without rss_bytes at {:?}: {:?}",
            s.at,
            s.workers
        );
    }

    let replacements: BTreeSet<i32> = max_rss.keys().filter(|p| !first.contains(p)).copied().collect();
    eprintln!(
        "memory: limit {} MiB; replaced {:?} (max rss {:?} MiB) by {:?}; {} status samples; load: {stats}",
        LIMIT >> 20,
        first,
        first
            .iter()
            .map(|p| max_rss.get(p).copied().unwrap_or(0) >> 20)
            .collect::<Vec<_>>(),
        replacements,
        settled.len()
    );
    for line in log.lines().filter(|l| l.to_ascii_lowercase().contains("memory")) {
        eprintln!("memory: baton: {line}");
    }
    assert_eq!(stats.failed, 0, "failed requests: {stats}\n{:?}", stats.first_errors);
    assert!(stats.ok > 100, "too little load to mean anything: {stats}");
}
