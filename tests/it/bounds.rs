//! Bounded input: durations and counts past their limits are rejected by
//! `check`, `run` and reloads with a position; the largest accepted ones
//! and the WATCHDOG_USEC values that mean "off" in baton's own environment
//! do not crash the supervisor.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::{baton_bin, example_bin, wait_until};

/// 2^64-1 seconds: parses as a Duration, and used to pass `check` and then
/// panic `run` ("overflow when adding duration to instant").
const HUGE: &str = "\"18446744073709551615s\"";

fn hello() -> String {
    example_bin("hello").display().to_string()
}

fn check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(baton_bin())
        .args(["check", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn check_rejects_every_overflowing_duration_with_its_position() {
    let hello = hello();
    let text = format!(
        "command = [{hello:?}]\n\
         [readiness]\nmode = \"delay\"\ntimeout = {HUGE}\ndelay = {HUGE}\n\
         [stop]\ntimeout = {HUGE}\n\
         [restart]\ndelay = {HUGE}\nmax_delay = {HUGE}\nwindow = {HUGE}\nlimit = 4294967295\n\
         [watchdog]\ntimeout = {HUGE}\n"
    );
    let out = check(&text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let want = [
        "app.toml:4:11: [readiness] timeout must be at most 24h, found \"18446744073709551615s\"",
        "app.toml:5:9: [readiness] delay must be at most 24h",
        "app.toml:7:11: [stop] timeout must be at most 24h",
        "app.toml:9:9: [restart] delay must be at most 24h",
        "app.toml:10:13: [restart] max_delay must be at most 24h",
        "app.toml:11:10: [restart] window must be at most 24h",
        "app.toml:12:9: [restart] limit must be a whole number from 0 to 1000, found 4294967295",
        "app.toml:14:11: [watchdog] timeout must be at most 24h",
    ];
    for w in want {
        assert!(stderr.contains(w), "missing {w:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), want.len(), "{stderr}");
}

#[test]
fn run_rejects_an_overflowing_stop_timeout_instead_of_panicking_later() {
    let port = port();
    let extra = format!("[stop]\ntimeout = {HUGE}\n");
    let mut baton = Baton::spawn(port, &config_text(port, &[&hello()], 1, &extra));
    let status = baton.wait_exit(Duration::from_secs(10)).expect("baton did not exit");
    let log = baton.log();
    assert_eq!(status.code(), Some(78), "{log}");
    assert!(
        log.contains("app.toml:10:11: [stop] timeout must be at most 24h"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn the_largest_durations_survive_reloads_crashes_and_a_rejected_reload() {
    let port = port();
    let hello = hello();
    let max = "\"24h\"";
    let extra = format!(
        "[readiness]\ntimeout = {max}\n\
         [stop]\ntimeout = {max}\n\
         [restart]\ndelay = {max}\nmax_delay = {max}\nwindow = {max}\nlimit = 1000\n\
         [watchdog]\ntimeout = {max}\n"
    );
    let config = config_text(port, &[&hello], 2, &extra);
    let mut baton = Baton::start(port, &config);
    // Every reload retires a generation that pinned the 24 h stop timeout.
    baton.reload_times(3, Duration::from_millis(100));
    assert!(baton.wait_serving(4, Duration::from_secs(20)), "{}", baton.log());
    // A crash arms a 24 h restart; baton keeps serving with the other worker.
    let pids = baton.worker_pids(4);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), nix::sys::signal::SIGKILL).unwrap();
    assert!(
        baton.wait_log(Duration::from_secs(10), |l| l.contains("killed by SIGKILL")),
        "{}",
        baton.log()
    );
    // A reload to an overflowing config is refused with the position, and
    // the serving generation stays.
    baton.write_config(&config_text(port, &[&hello], 2, &format!("[stop]\ntimeout = {HUGE}\n")));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("app.toml:10:11: [stop] timeout must be at most 24h"),
        "{stderr}"
    );
    // Back to the largest durations: the next reload replaces generation 4.
    baton.write_config(&config);
    baton.reload_times(1, Duration::ZERO);
    assert!(baton.wait_serving(5, Duration::from_secs(20)), "{}", baton.log());
    baton.signal(nix::sys::signal::SIGTERM);
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not stop");
    assert_eq!(status.code(), Some(0), "{}", baton.log());
    assert!(!baton.log().contains("panicked"), "{}", baton.log());
}

/// A fake systemd notify socket.
struct Systemd {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Systemd {
    fn bind(dir: &std::path::Path) -> Systemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Systemd { socket, path }
    }

    /// Every datagram received within `time`.
    fn read_for(&self, time: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + time;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        seen
    }
}

/// baton started as systemd would: WATCHDOG_PID is baton's own pid (a shell
/// that sets it and then execs baton keeps its pid).
fn run_with_watchdog_usec(usec: &str) {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::bind(dir.path());
    let port = port();
    let config = dir.path().join("app.toml");
    std::fs::write(&config, config_text(port, &[&hello()], 1, "")).unwrap();
    let log_path = dir.path().join("baton.log");
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh"])
        .arg(baton_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("BATON_RUNTIME_DIR", dir.path().join("run"))
        .env("BATON_STATE_DIR", dir.path().join("state"))
        .env("BATON_LOG", "info")
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", usec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let client = |args: &[&str]| {
        Command::new(baton_bin())
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("BATON_RUNTIME_DIR", dir.path().join("run"))
            .env("BATON_STATE_DIR", dir.path().join("state"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let mut seen = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen.extend(systemd.read_for(Duration::from_millis(100)));
            seen.iter().any(|m| m.contains("READY=1")) || child.try_wait().unwrap().is_some()
        }),
        "no READY=1: {seen:?}\n{}",
        log()
    );
    assert!(child.try_wait().unwrap().is_none(), "baton died:\n{}", log());
    let out = client(&["reload"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    seen.extend(systemd.read_for(Duration::from_millis(500)));
    assert!(
        !seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "WATCHDOG_USEC={usec} means no watchdog, yet baton pinged: {seen:?}"
    );
    assert!(log().contains(&format!("ignoring WATCHDOG_USEC={usec}")), "{}", log());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    let mut status = None;
    assert!(wait_until(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    }));
    assert_eq!(status.unwrap().code(), Some(0), "{}", log());
}

#[test]
fn watchdog_usec_zero_means_no_watchdog() {
    run_with_watchdog_usec("0");
}

#[test]
fn watchdog_usec_infinity_means_no_watchdog() {
    run_with_watchdog_usec("18446744073709551615");
}

/// `check` runs as ExecStartPre: 100,000 unknown keys once took a minute
/// (a quadratic position lookup) and printed 100,000 lines. The time is in
/// docs/bench/check.md (bench/check.sh); here, the output is capped.
#[test]
fn check_of_100000_unknown_keys_shows_50_problems_and_counts_the_rest() {
    let mut text = String::from("command = [\"sleep\", \"1\"]\n");
    for i in 0..100_000 {
        text.push_str(&format!("key{i:06} = 1\n"));
    }
    let out = check(&text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{}", &stderr[..stderr.len().min(2000)]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 51, "{}", &stderr[..stderr.len().min(2000)]);
    for (i, line) in lines[..50].iter().enumerate() {
        let want = format!("app.toml:{}:1: unknown key \"key{i:06}\" in the top level", i + 2);
        assert!(line.contains(&want), "line {i}: {line}");
    }
    assert_eq!(lines[50], "... and 99950 more errors");
}
