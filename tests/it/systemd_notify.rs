//! What baton tells systemd, checked on a notify socket this test binds
//! itself: systemd 252 has no Type=notify-reload, so the RELOADING=1 +
//! MONOTONIC_USEC → READY=1 ordering is verified here.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::example_bin;

struct Systemd {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
    seen: Vec<String>,
}

impl Systemd {
    fn bind() -> Systemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Systemd {
            socket,
            path: path.display().to_string(),
            _dir: dir,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one contains `key`, within `timeout`.
    fn wait_for(&mut self, key: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l.starts_with(key)) {
                    return msg;
                }
            }
        }
        panic!("no {key} within {timeout:?}; got {:#?}", self.seen);
    }
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

#[test]
fn ready_reloading_ready_stopping_in_order_with_status() {
    let mut systemd = Systemd::bind();
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let mut baton = Baton::spawn_with_env(
        port,
        &config_text(port, &[&hello], 2, ""),
        &[("NOTIFY_SOCKET", &systemd.path)],
    );
    let ready = systemd.wait_for("READY=1", Duration::from_secs(20));
    assert!(ready.contains("STATUS=gen 1: 2/2 ready"), "{ready}");
    // Nothing says READY=1 before both workers are ready.
    assert!(
        systemd.seen[..systemd.seen.len() - 1]
            .iter()
            .all(|m| !m.contains("READY=1"))
    );

    // A good reload: RELOADING=1 with a current MONOTONIC_USEC, then READY=1.
    let before = monotonic_usec();
    let out = baton.reload();
    assert!(out.status.success());
    let reloading = systemd.wait_for("RELOADING=1", Duration::from_secs(5));
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(
        usec >= before && usec <= monotonic_usec(),
        "{usec} not in [{before}, now]"
    );
    let ready = systemd.wait_for("READY=1", Duration::from_secs(5));
    assert!(ready.contains("gen 2: 2/2 ready"), "{ready}");
    assert!(ready.contains("ok in"), "{ready}");

    // A failed reload still ends with READY=1, and STATUS= says why.
    baton.write_config(&config_text(
        port,
        &[&hello],
        2,
        "[environment]\nHELLO_FAIL_START = \"boom\"\n",
    ));
    assert_eq!(baton.reload().status.code(), Some(1));
    systemd.wait_for("RELOADING=1", Duration::from_secs(5));
    let ready = systemd.wait_for("READY=1", Duration::from_secs(5));
    assert!(ready.contains("gen 2: 2/2 ready"), "{ready}");
    assert!(ready.contains("FAILED: worker"), "{ready}");
    assert!(ready.contains("exited with status 3"), "{ready}");

    baton.signal(nix::sys::signal::SIGTERM);
    systemd.wait_for("STOPPING=1", Duration::from_secs(5));
    assert_eq!(baton.wait_exit(Duration::from_secs(20)).unwrap().code(), Some(0));
}

#[test]
fn watchdog_pings_at_half_the_interval() {
    let mut systemd = Systemd::bind();
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let _baton = Baton::spawn_with_env(
        port,
        &config_text(port, &[&hello], 1, ""),
        &[("NOTIFY_SOCKET", &systemd.path), ("WATCHDOG_USEC", "400000")],
    );
    systemd.wait_for("READY=1", Duration::from_secs(20));
    let start = std::time::Instant::now();
    for _ in 0..4 {
        systemd.wait_for("WATCHDOG=1", Duration::from_secs(5));
    }
    // Four pings at a 200 ms period need at least ~600 ms; a much faster
    // rate would mean the interval was misread.
    assert!(start.elapsed() >= Duration::from_millis(500), "{:?}", start.elapsed());
}

#[test]
fn status_names_the_canary_while_one_runs() {
    let mut systemd = Systemd::bind();
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let baton = Baton::spawn_with_env(
        port,
        &config_text(port, &[&hello], 2, ""),
        &[("NOTIFY_SOCKET", &systemd.path)],
    );
    systemd.wait_for("READY=1", Duration::from_secs(20));
    let out = baton.client(&["reload", "--canary", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    systemd.wait_for("RELOADING=1", Duration::from_secs(5));
    let ready = systemd.wait_for("READY=1", Duration::from_secs(5));
    assert!(
        ready.contains("STATUS=gen 1: 2/2 ready · canary gen 2: 1/1 ready"),
        "{ready}"
    );
    assert!(baton.client(&["rollback"]).status.success());
    let after = systemd.wait_for("STATUS=", Duration::from_secs(5));
    assert!(!after.contains("canary gen"), "{after}");
}
