//! Nothing baton starts outlives it, and nothing it retires keeps serving:
//! workers die with a SIGKILLed baton, daemons a worker left behind die
//! with their generation, baton reaps everything before it exits, a
//! rejected candidate never starts serving, and workers get the
//! RLIMIT_NOFILE baton started with.
//!
//! This test binary makes itself a child subreaper, so whatever baton
//! leaves behind (running or as a zombie) becomes a child of the test,
//! where it can be counted. The tests take turns (`SERIAL`) so that every
//! child of the test belongs to the test that looks.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

// The helpers of tests/it, shared by path: this suite is a binary of its
// own (tests/it/main.rs says why) and uses only part of them; the `it`
// binary uses all of them, and is where an unused one is caught.
#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::baton::{Baton, alive, children_of, config_text, port, script};
use common::load::Load;
use common::{example_bin, http_get, wait_until};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

static SERIAL: Mutex<()> = Mutex::new(());

fn hello() -> String {
    example_bin("hello").display().to_string()
}

/// Takes the turn, and becomes the subreaper for whatever baton leaves.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    reap_leftovers();
    guard
}

/// Reaps zombies the test inherited; returns how many.
fn reap_leftovers() -> usize {
    let mut n = 0;
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
        n += 1;
    }
    n
}

/// Children of this test process other than the threads' own helpers: any
/// process baton left behind, running ('S', 'R'...) or a zombie ('Z').
fn left_behind() -> Vec<(i32, char, String)> {
    children_of(std::process::id() as i32)
        .into_iter()
        .map(|(pid, state)| {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            (pid, state, cmd)
        })
        .collect()
}

fn assert_port_free_and_reusable(port: u16) {
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port free after baton exited");
    let hello = hello();
    let again = Baton::start(port, &config_text(port, &[&hello], 1, ""));
    let answer = http_get(again.addr(), "/", Duration::from_secs(5));
    assert!(matches!(answer, Ok((200, _))), "{answer:?}\n{}", again.log());
}

#[test]
fn workers_die_with_a_sigkilled_baton() {
    let _turn = serial();
    let port = port();
    let hello = hello();
    let mut baton = Baton::start(port, &config_text(port, &[&hello], 3, ""));
    let pids = baton.worker_pids(1);
    assert_eq!(pids.len(), 3);
    baton.signal(nix::sys::signal::SIGKILL);
    baton.wait_exit(Duration::from_secs(10)).expect("baton did not die");
    assert!(
        wait_until(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p))),
        "workers survived baton: {:?}",
        left_behind()
    );
    reap_leftovers();
    assert_port_free_and_reusable(port);
}

#[test]
fn daemons_a_worker_leaves_behind_die_with_its_generation_and_with_baton() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    // A double fork: the subshell exits, so the setsid'd sleep is orphaned
    // (adopted by baton, the subreaper) and keeps the listening socket.
    let worker = script(
        dir.path(),
        "daemonizing-worker",
        &format!("#!/bin/sh\n( setsid sleep 1000 & )\nexec {}\n", hello()),
    );
    let port = port();
    let extra = "[stop]\ntimeout = \"5s\"\n";
    let mut baton = Baton::start(port, &config_text(port, &[worker.to_str().unwrap()], 2, extra));
    let daemons = || {
        let me = baton.pid();
        children_of(me)
            .into_iter()
            .filter(|&(pid, state)| {
                state != 'Z'
                    && std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with("sleep"))
            })
            .count()
    };
    assert!(wait_until(Duration::from_secs(5), || daemons() == 2), "{}", daemons());
    for _ in 0..3 {
        let out = baton.client(&["reload", "--wait"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Only the serving generation's two are left.
    assert!(
        wait_until(Duration::from_secs(5), || daemons() == 2),
        "{} daemons running with generation 4 serving",
        daemons()
    );
    baton.signal(nix::sys::signal::SIGTERM);
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not exit");
    assert_eq!(status.code(), Some(0), "{}", baton.log());
    let left = left_behind();
    assert!(left.is_empty(), "baton left these behind: {left:?}");
    assert_port_free_and_reusable(port);
}

#[test]
fn baton_reaps_what_it_killed_before_it_exits() {
    let _turn = serial();
    let port = port();
    // The background sleep ignores SIGTERM, stays in the worker's process
    // group, and is SIGKILLed with it when the worker exits; it is then a
    // zombie of baton (the subreaper), which must reap it before exiting.
    let body = format!("(trap \"\" TERM; exec sleep 1000 >/dev/null 2>&1) & exec {}", hello());
    let mut baton = Baton::start(port, &config_text(port, &["/bin/sh", "-c", &body], 3, ""));
    baton.reload_times(2, Duration::from_millis(100));
    baton.signal(nix::sys::signal::SIGTERM);
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not exit");
    assert_eq!(status.code(), Some(0), "{}", baton.log());
    let left = left_behind();
    assert!(left.is_empty(), "baton left these behind (Z = zombie): {left:?}");
    assert_port_free_and_reusable(port);
}

/// Serves HTTP from fd 3 after "loading" for LOAD_SECS, ignores SIGTERM,
/// and says READY=1 only after serving for a while: an app that becomes
/// ready late and accepts before it is ready (uWSGI's master still loading
/// at its deadline, then forking workers that accept).
const LATE_APP: &str = r#"#!/usr/bin/env python3
import os, signal, socket, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(float(os.environ["LOAD_SECS"]))
listener = socket.socket(fileno=3)
def ready():
    time.sleep(5)
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(addr)
    s.send(b"READY=1")
threading.Thread(target=ready, daemon=True).start()
def handle(conn):
    conn.recv(65536)
    time.sleep(0.3)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nlate app\n")
    conn.close()
while True:
    conn, _ = listener.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"#;

#[test]
fn a_rejected_candidate_that_starts_serving_late_loses_no_request() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let late = script(dir.path(), "late-app", LATE_APP);
    let port = port();
    let hello = hello();
    let base = "[readiness]\ntimeout = \"1s\"\n\n[stop]\ntimeout = \"4s\"\n";
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, base));
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    baton.write_config(&config_text(
        port,
        &[late.to_str().unwrap()],
        2,
        &format!("{base}\n[environment]\nLOAD_SECS = \"1.3\"\n"),
    ));
    for i in 0..3 {
        let out = baton.reload();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "reload {i}: {stderr}");
        assert!(stderr.contains("readiness timeout"), "{stderr}");
        // Past the point where the candidate would have begun to accept,
        // and past its stop timeout.
        std::thread::sleep(Duration::from_secs(5));
    }
    let stats = load.stop();
    eprintln!("3 rejected late candidates: {stats}");
    stats.assert_served_through(100, 1);
    assert_eq!(stats.generations_seen.len(), 1, "{stats}");
    let status = baton.status();
    assert_eq!(status["supervisor"]["serving"].as_u64(), Some(1));
    assert_eq!(status["supervisor"]["generations"].as_array().map(Vec::len), Some(1));
}

#[test]
fn workers_get_the_nofile_limit_baton_started_with_and_a_wide_reload_has_enough_fds() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = port();
    let workers = 200;
    // A tiny worker: report its soft limit once, then be ready.
    let worker = script(
        dir.path(),
        "tiny-worker",
        "#!/bin/sh\necho \"nofile=$(ulimit -n) worker=$BATON_WORKER generation=$BATON_GENERATION\"\nexec sleep 1000\n",
    );
    let config = config_text(
        port,
        &[worker.to_str().unwrap()],
        workers,
        "[readiness]\nmode = \"delay\"\ndelay = \"200ms\"\ntimeout = \"60s\"\n\n[stop]\ntimeout = \"5s\"\n",
    );
    let path = dir.path().join("app.toml");
    std::fs::write(&path, &config).unwrap();
    // systemd's usual soft limit for a service, 1024, under whatever hard
    // limit the test may keep (systemd's is 512K; raising it needs root
    // outside a container).
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 8 * workers as u64,
        "the hard RLIMIT_NOFILE ({hard}) is too low for {workers} workers"
    );
    let mut child = KillOnDrop(
        std::process::Command::new("prlimit")
            .arg(format!("--nofile=1024:{hard}"))
            .arg("--")
            .arg(common::baton_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("BATON_RUNTIME_DIR", dir.path().join("run"))
            .env("BATON_STATE_DIR", dir.path().join("state"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prlimit (util-linux) must be installed"),
    );
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let client = |args: &[&str]| {
        std::process::Command::new(common::baton_bin())
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("BATON_RUNTIME_DIR", dir.path().join("run"))
            .env("BATON_STATE_DIR", dir.path().join("state"))
            .output()
            .unwrap()
    };
    let serving = |generation: u64| {
        let out = client(&["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|s| s["supervisor"]["serving"].as_u64() == Some(generation))
    };
    assert!(wait_until(Duration::from_secs(60), || serving(1)), "{}", log());
    let out = client(&["reload"]);
    assert!(
        out.status.success(),
        "a parallel reload of {workers} workers failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    let text = log();
    let limits: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("generation=2"))
        .filter_map(|l| l.split("nofile=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(limits.len(), workers, "{text}");
    assert!(limits.iter().all(|&l| l == "1024"), "{limits:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
}

/// Starts `sleep 1000` as a child of the test with pid `pid`, by setting
/// the pid namespace's last pid just below it (root only). Other processes
/// may take the pid first, hence the retries.
fn process_with_pid(pid: i32) -> Option<std::process::Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("this test needs root, to write /proc/sys/kernel/ns_last_pid");
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        if child.id() as i32 == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

#[test]
fn a_signal_for_a_reaped_worker_never_hits_the_process_that_reuses_its_pid() {
    let _turn = serial();
    let port = port();
    // A daemon outside the worker's process group keeps its output pipe
    // open, so after the worker is reaped baton waits up to a second for
    // its last lines before it reports the exit to the core: a window in
    // which the core still thinks the worker runs and may signal it.
    let body = format!("setsid sleep 5 & exec {}", hello());
    let mut baton = Baton::start(port, &config_text(port, &["/bin/sh", "-c", &body], 1, ""));
    let pid = baton.worker_pids(1)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    // Reaped by baton, then the pid is taken by an unrelated process.
    assert!(wait_until(Duration::from_secs(2), || !std::path::Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
    let mut victim = process_with_pid(pid).expect("could not recycle the worker's pid");
    // Stopping retires the worker the core still believes alive: its stop
    // signal must not reach the victim.
    baton.signal(nix::sys::signal::SIGTERM);
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not exit");
    assert_eq!(status.code(), Some(0), "{}", baton.log());
    let hit = victim.try_wait().unwrap();
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(hit, None, "the process that took pid {pid} was signalled: {hit:?}");
    reap_leftovers();
}

#[test]
fn a_config_that_takes_long_to_read_does_not_stall_the_supervisor() {
    let _turn = serial();
    let port = port();
    let hello = hello();
    let text = config_text(port, &[&hello], 1, "");
    let baton = Baton::start(port, &text);
    // A FIFO blocks whoever opens it for reading until a writer comes.
    std::fs::remove_file(&baton.config).unwrap();
    nix::unistd::mkfifo(&baton.config, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    baton.signal(nix::sys::signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    // The client must not read the FIFO itself: it is told the socket.
    let control = baton.dir.path().join("run").join("app").join("control.sock");
    let status = {
        let control = control.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let out = std::process::Command::new(common::baton_bin())
                .args(["status", "--json", "--control"])
                .arg(control)
                .output()
                .unwrap();
            let _ = tx.send(out);
        });
        rx.recv_timeout(Duration::from_secs(5))
    };
    // Let the reload read its config, whatever happened above; then a
    // plain file again, for the clients below.
    std::fs::write(&baton.config, &text).unwrap();
    std::fs::remove_file(&baton.config).unwrap();
    std::fs::write(&baton.config, &text).unwrap();
    let out = status.expect("status got no answer while a reload was reading its config");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["supervisor"]["reload_in_progress"], true, "{s:#}");
    assert!(baton.wait_serving(2, Duration::from_secs(20)), "{}", baton.log());
}
