//! `baton upgrade`: the supervisor re-executes the binary installed where
//! it was started from, in place, under continuous load. Each test runs a
//! copy of baton from a directory of its own, and "installs" a new binary
//! there the way a package does: a new file renamed over the old path.
//!
//! What must hold: exit 0 with both versions; the same baton pid; the same
//! worker pids, none signalled (the workers log every signal they get) and
//! none restarted; every output line exactly once; 0 failed requests; a
//! canary's hold carried over; and a new binary that cannot take over
//! (missing, not baton) refused with exit 1 and nothing changed.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::load::Load;
use crate::common::{example_bin, text};

/// A directory with a copy of baton in it: what `baton upgrade` re-executes.
struct Install {
    dir: tempfile::TempDir,
}

impl Install {
    fn new() -> Install {
        let install = Install {
            dir: tempfile::tempdir().unwrap(),
        };
        install.put(&crate::common::baton_bin());
        install
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("baton")
    }

    /// What a package manager does: the new file beside, renamed over the
    /// old path (the running image keeps its own inode).
    /// A second copy of baton beside the installed one, for scripts that
    /// delegate to it.
    fn real(&self) -> PathBuf {
        let real = self.dir.path().join("baton.real");
        let ok = std::process::Command::new("cp")
            .arg(crate::common::baton_bin())
            .arg(&real)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cp baton {}", real.display());
        real
    }

    fn put(&self, from: &Path) {
        // `cp` writes the file, in a process of its own: a file this test
        // process held open for writing would be inherited, for an instant,
        // by a child another test thread forks, and executing it then fails
        // with ETXTBSY (a Linux race of multi-threaded programs).
        let tmp = self.dir.path().join(".baton.new");
        let ok = std::process::Command::new("cp")
            .arg(from)
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cp {} {}", from.display(), tmp.display());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, self.bin()).unwrap();
    }
}

/// `workers` hello workers under the baton installed in `install`,
/// serving.
fn start_hello(install: &Install, workers: usize, extra: &str) -> Baton {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let baton = Baton::spawn_bin(&install.bin(), port, &config_text(port, &[&hello], workers, extra), &[]);
    assert!(baton.wait_serving(1, Duration::from_secs(30)), "{}", baton.log());
    baton
}

/// pids of every live worker, by generation, in order.
fn worker_pids(baton: &Baton) -> Vec<(u64, i64)> {
    let status = baton.status();
    let mut pids: Vec<(u64, i64)> = status["supervisor"]["generations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| {
            let id = g["id"].as_u64().unwrap_or(0);
            g["workers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |w| w["pid"].as_i64().map(|p| (id, p)))
        })
        .collect();
    pids.sort();
    pids
}

/// A worker that logs every signal it gets (and keeps running) and prints
/// a numbered line every 2 ms in two writes, so a line is often half
/// written when the hand-over comes.
fn ticker_config(port: u16, workers: usize) -> String {
    let script = "for s in HUP INT QUIT USR1 USR2 TERM PIPE ALRM; do trap \"echo got-signal-$s\" $s; done\n\
         i=0\n\
         while [ $i -lt 100000 ]; do i=$((i+1)); printf 'tick %d' $i; printf ' of %s\\n' $BATON_WORKER; sleep 0.002; done\n";
    config_text(
        port,
        &["/bin/sh", "-c", script],
        workers,
        "[readiness]\nmode = \"delay\"\ndelay = \"300ms\"\n",
    )
}

fn upgrade(baton: &Baton) -> Output {
    baton.client(&["upgrade"])
}

#[test]
fn upgrade_in_place_keeps_every_worker_and_line_and_fails_no_request() {
    let install = Install::new();
    let baton = start_hello(&install, 3, "[stop]\ntimeout = \"10s\"\n");
    let pid = baton.pid();
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));

    // `baton status` all along: a client that comes while the supervisor
    // hands over gets its answer from one image or the other, never an
    // error or a hang.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = {
        let (stop, config, runtime) = (stop.clone(), baton.config.clone(), baton.dir.path().join("run"));
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new(crate::common::baton_bin())
                    .args(["status", "--json", "--config"])
                    .arg(&config)
                    .env("BATON_RUNTIME_DIR", &runtime)
                    .output()
                    .unwrap();
                if out.status.success() {
                    ok += 1;
                } else {
                    failed.push(text(&out));
                }
            }
            (ok, failed)
        })
    };

    // Three upgrades, with a reload between the first and the second, so
    // that workers forked by an upgraded image cross an upgrade too.
    let before = worker_pids(&baton);
    install.put(&crate::common::baton_bin());
    let out = upgrade(&baton);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), baton.log());
    let shown = text(&out);
    assert!(
        shown.contains("upgraded from baton") && shown.contains("none restarted"),
        "{shown}"
    );
    assert_eq!(worker_pids(&baton), before, "the workers changed across the upgrade");
    assert_eq!(baton.status()["pid"].as_i64(), Some(pid as i64));

    assert!(baton.reload().status.success(), "{}", baton.log());
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        let before = worker_pids(&baton);
        install.put(&crate::common::baton_bin());
        let out = upgrade(&baton);
        assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), baton.log());
        assert_eq!(worker_pids(&baton), before, "the workers changed across the upgrade");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Still a working supervisor: a reload after the upgrades.
    assert!(baton.reload().status.success(), "{}", baton.log());
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = statuses.join().unwrap();
    eprintln!(
        "3 upgrades and 2 reloads under load: {stats}; baton status all along: {ok} ok, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "baton status failed during the upgrades: {failed:?}");
    assert!(ok > 10, "too few status calls: {ok}");
    assert_eq!(stats.failed, 0, "{stats}\n{:?}", stats.last_errors);
    assert!(stats.ok > 200, "{stats}");

    let status = baton.status();
    let upgrades = status["upgrades"].as_array().cloned().unwrap_or_default();
    assert_eq!(upgrades.len(), 3, "{status}");
    let shown = String::from_utf8_lossy(&baton.client(&["status"]).stdout).into_owned();
    assert!(shown.contains("upgraded from "), "{shown}");
    assert_eq!(baton.pid(), pid);
    // Each upgrade is one record, written by the new image (no journal
    // here: a line of baton's log).
    let log = baton.log();
    assert_eq!(log.matches(" [upgrade ok · generation ").count(), 3, "{log}");
}

#[test]
fn no_worker_gets_a_signal_and_no_output_line_is_lost_or_doubled() {
    let install = Install::new();
    let port = port();
    let mut baton = Baton::spawn_bin(&install.bin(), port, &ticker_config(port, 2), &[]);
    assert!(baton.wait_serving(1, Duration::from_secs(30)), "{}", baton.log());
    let before = worker_pids(&baton);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        install.put(&crate::common::baton_bin());
        let out = upgrade(&baton);
        assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), baton.log());
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(worker_pids(&baton), before, "the workers changed across the upgrades");
    baton.signal(nix::sys::signal::SIGKILL);
    let _ = baton.wait_exit(Duration::from_secs(10));
    let log = baton.log();
    assert!(!log.contains("got-signal"), "a worker got a signal:\n{log}");
    for worker in ["0", "1"] {
        let ticks: Vec<u64> = log
            .lines()
            .filter_map(|l| l.split_once("tick ").map(|(_, rest)| rest))
            .filter(|rest| rest.ends_with(&format!(" of {worker}")))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect();
        assert!(ticks.len() > 100, "worker {worker}: only {} ticks", ticks.len());
        let expected: Vec<u64> = (1..=ticks.len() as u64).collect();
        assert_eq!(ticks, expected, "worker {worker}: lines lost, doubled or out of order");
    }
}

#[test]
fn a_canary_and_its_hold_carry_over_and_promote_in_the_new_image() {
    let install = Install::new();
    let baton = start_hello(&install, 2, "");
    let load = Load::start(baton.addr(), "/", 6);
    let out = baton.client(&["reload", "--canary", "1", "--hold", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    install.put(&crate::common::baton_bin());
    let out = upgrade(&baton);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), baton.log());
    let status = baton.status();
    assert_eq!(
        status["supervisor"]["canary"]["generation"].as_u64(),
        Some(2),
        "{status}"
    );
    // The hold runs out in the new image, which promotes the canary.
    let promoted = crate::common::wait_until(Duration::from_secs(40), || {
        baton
            .try_status()
            .is_some_and(|s| s["supervisor"]["serving"].as_u64() == Some(2) && s["supervisor"]["canary"].is_null())
    });
    assert!(promoted, "{}\n{}", baton.status(), baton.log());
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    eprintln!("canary, upgrade, promotion by the hold: {stats}");
    assert_eq!(stats.failed, 0, "{stats}\n{:?}", stats.last_errors);
}

#[test]
fn a_new_binary_that_cannot_take_over_is_refused_and_nothing_changes() {
    let install = Install::new();
    let baton = start_hello(&install, 2, "");
    let before = worker_pids(&baton);
    let load = Load::start(baton.addr(), "/", 4);

    // Not baton at all.
    install.put(Path::new("/bin/true"));
    let out = upgrade(&baton);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("UPGRADE REFUSED") && text(&out).contains("nothing changed"),
        "{}",
        text(&out)
    );
    // Gone.
    std::fs::remove_file(install.bin()).unwrap();
    let out = upgrade(&baton);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot run"), "{}", text(&out));

    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert_eq!(stats.failed, 0, "{stats}");
    assert_eq!(worker_pids(&baton), before);
    let status = baton.status();
    assert_eq!(status["upgrades"].as_array().map(Vec::len), Some(0), "{status}");
    // Each refusal is one record line.
    let log = baton.log();
    assert_eq!(log.matches(" [upgrade refused · generation 1 · ").count(), 2, "{log}");
    // It still works.
    assert!(baton.reload().status.success(), "{}", baton.log());
}

#[test]
fn a_new_image_that_dies_after_the_exec_leaves_no_worker_behind() {
    let install = Install::new();
    let mut baton = start_hello(&install, 2, "");
    let workers: Vec<i64> = worker_pids(&baton).into_iter().map(|(_, p)| p).collect();
    // Passes the check (it is baton's), then dies instead of taking over:
    // what a new binary that crashes at start would do.
    let real = install.real();
    let script = install.dir.path().join("baton.script");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = upgrade-check ]; then exec {} \"$@\"; fi\necho 'new baton: crashed at start' >&2\nexit 70\n",
            real.display()
        ),
    )
    .unwrap();
    install.put(&script);
    let out = upgrade(&baton);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("UPGRADE FAILED"), "{}", text(&out));
    let status = baton.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(70), "{}", baton.log());
    // Nothing serves without a supervisor: the workers died with it.
    let gone = crate::common::wait_until(Duration::from_secs(10), || {
        workers.iter().all(|&p| {
            !std::path::Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s.contains(") Z "))
        })
    });
    assert!(gone, "workers {workers:?} outlived their supervisor\n{}", baton.log());
    assert!(baton.log().contains("new baton: crashed at start"), "{}", baton.log());
}

/// Node workers (node-ipc readiness, PM2's 'shutdown' message) across an
/// upgrade: their IPC channels carry over, so after it a reload's new
/// workers become ready over IPC in the new image, and the old ones are
/// drained by the 'shutdown' message sent over the handed-over channels,
/// never by a signal.
#[test]
fn node_workers_keep_their_ipc_channel_across_an_upgrade() {
    let install = Install::new();
    let port = port();
    let config = crate::node::example_config(port, 2);
    let baton = Baton::spawn_bin(&install.bin(), port, &config, &[]);
    assert!(baton.wait_serving(1, Duration::from_secs(60)), "{}", baton.log());
    let old: Vec<i64> = worker_pids(&baton).into_iter().map(|(_, p)| p).collect();
    let load = Load::start(baton.addr(), "/", 6);
    std::thread::sleep(Duration::from_millis(300));
    install.put(&crate::common::baton_bin());
    let out = upgrade(&baton);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), baton.log());
    let out = baton.reload();
    assert!(out.status.success(), "{}\n{}", text(&out), baton.log());
    let drained = crate::common::wait_until(Duration::from_secs(30), || {
        worker_pids(&baton).iter().all(|(g, _)| *g == 2)
    });
    assert!(drained, "{}\n{}", baton.status(), baton.log());
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    eprintln!("node workers, an upgrade, then a reload: {stats}");
    assert_eq!(stats.failed, 0, "{stats}\n{:?}", stats.last_errors);
    let lines = crate::common::baton::worker_lines(&baton.log());
    for pid in old {
        let said: Vec<&str> = lines
            .iter()
            .filter(|l| i64::from(l.pid) == pid)
            .map(|l| l.text.as_str())
            .collect();
        assert!(
            said.iter().any(|t| t.contains("shutdown message: draining")),
            "old worker {pid} was not drained by the 'shutdown' message over its handed-over channel: {said:#?}"
        );
        assert!(
            !said.iter().any(|t| t.contains("SIG")),
            "old worker {pid} got a signal: {said:#?}"
        );
    }
}

/// The new binary's check is a child of baton like the workers: a reload
/// that retires a generation while the check runs must not take it for a
/// process that generation left behind, and baton's reaper, not anyone
/// else's wait, collects it.
#[test]
fn a_reload_while_the_new_binary_is_checked_leaves_the_check_alone() {
    let install = Install::new();
    let baton = start_hello(&install, 2, "");
    let real = install.real();
    let script = install.dir.path().join("baton.script");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = upgrade-check ]; then sleep 2; fi\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    install.put(&script);
    let upgrading = {
        let (config, runtime, state) = (
            baton.config.clone(),
            baton.dir.path().join("run"),
            baton.dir.path().join("state"),
        );
        std::thread::spawn(move || {
            std::process::Command::new(crate::common::baton_bin())
                .args(["upgrade", "--config"])
                .arg(config)
                .env("BATON_RUNTIME_DIR", runtime)
                .env("BATON_STATE_DIR", state)
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    assert!(baton.reload().status.success(), "{}", baton.log());
    let out = upgrading.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), baton.log());
    assert!(!baton.log().contains("left 1 process behind"), "{}", baton.log());
}

/// The metrics' counters ride in the hand-over: a counter that dropped to
/// zero would read as a reset in Prometheus's `rate()`. The listener is
/// bound again by the new image.
#[test]
fn metrics_counters_and_the_listener_carry_over() {
    let install = Install::new();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], crate::common::free_port()));
    let baton = start_hello(&install, 1, &format!("[metrics]\nlisten = \"{listen}\"\n"));
    baton.reload_times(2, Duration::from_millis(10));
    let ok2 = "baton_reloads_total{app=\"app\",result=\"ok\"} 2";
    let out = upgrade(&baton);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), baton.log());
    let cli = String::from_utf8_lossy(&baton.client(&["metrics"]).stdout).into_owned();
    assert!(cli.lines().any(|l| l == ok2), "after the upgrade:\n{cli}");
    assert!(
        cli.contains("baton_reload_duration_seconds_count{app=\"app\"} 2"),
        "{cli}"
    );
    let mut scraped = String::new();
    let served = crate::common::wait_until(Duration::from_secs(10), || {
        scraped = crate::common::http_get(listen, "/metrics", Duration::from_secs(2)).map_or_else(|e| e, |(_, b)| b);
        scraped.lines().any(|l| l == ok2)
    });
    assert!(served, "GET /metrics after the upgrade:\n{scraped}\n{}", baton.log());
}

/// A worker's notify socket file (the default) crosses the upgrade: the
/// same file keeps taking its watchdog pings (a lost endpoint would get
/// the worker replaced), and the new image removes it with its worker.
#[test]
fn a_notify_socket_path_survives_an_upgrade() {
    let install = Install::new();
    let baton = start_hello(&install, 2, "[watchdog]\ntimeout = \"1s\"\n");
    let notify_dir = baton.dir.path().join("run/app/notify");
    let sockets = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&notify_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let before = worker_pids(&baton);
    let files = sockets();
    assert_eq!(files.len(), 2, "{files:?}");
    install.put(&crate::common::baton_bin());
    let out = upgrade(&baton);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), baton.log());
    assert_eq!(sockets(), files, "the new image swept or re-made the sockets");
    // Several watchdog intervals: the pings reach the new image.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(worker_pids(&baton), before, "{}", baton.log());
    assert!(!baton.log().contains("watchdog"), "{}", baton.log());
    // A reload: the old workers' files go with them, the new ones are there.
    assert!(baton.reload().status.success(), "{}", baton.log());
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || {
            let now = sockets();
            now.len() == 2 && now.iter().all(|f| !files.contains(f))
        }),
        "{:?} (was {files:?})",
        sockets()
    );
}
