//! Crash restarts with backoff, `status` showing them, and exit 1 when the
//! serving generation is lost with its restarts exhausted.

use std::time::Duration;

use crate::common::baton::{Baton, alive, config_text, port, script};
use crate::common::example_bin;
use crate::common::load::Load;

#[test]
fn a_killed_worker_is_restarted_and_status_counts_it() {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    let load = Load::start(baton.addr(), "/", 2);
    let before = baton.worker_pids(1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before[0]), nix::sys::signal::SIGKILL).unwrap();
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || {
            let s = baton.status();
            let g = &s["supervisor"]["generations"][0];
            g["restarts"] == 1 && g["ready"] == 2
        }),
        "{:#}",
        baton.status()
    );
    let after = baton.worker_pids(1);
    assert!(
        !after.contains(&before[0]) && after.contains(&before[1]),
        "{before:?} -> {after:?}"
    );
    let stats = load.stop();
    // The other worker kept serving; the kernel queue held what arrived
    // for the dead one. Only requests the killed process had accepted and
    // not yet answered can fail, and these requests are instant.
    eprintln!("during crash: {stats}");
    assert!(stats.ok > 0);
    let text = baton.client(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("restarts 1"), "{text}");
    assert!(baton.log().contains("killed by SIGKILL"), "{}", baton.log());
}

/// One worker running `body` under `[restart] limit = 2`: waits until baton
/// gives up, asserts it exits 1, and returns its log.
fn exhaust_restarts(name: &str, body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let worker = script(dir.path(), name, body).display().to_string();
    let port = port();
    let extra = "[restart]\ndelay = \"50ms\"\nmax_delay = \"200ms\"\nlimit = 2\nwindow = \"60s\"\n";
    let mut baton = Baton::spawn(port, &config_text(port, &[&worker], 1, extra));
    let status = baton.wait_exit(Duration::from_secs(30)).expect("baton did not give up");
    let log = baton.log();
    assert_eq!(status.code(), Some(1), "{log}");
    log
}

#[test]
fn exhausted_restarts_of_the_serving_generation_exit_1() {
    let log = exhaust_restarts(
        "flaky.sh",
        "#!/bin/sh\nsystemd-notify --ready\nsleep 0.2\necho 'flaky: giving up' >&2\nexit 7\n",
    );
    assert!(log.contains("exited with status 7"), "{log}");
    assert!(log.contains("giving up"), "{log}");
    assert!(log.contains("restarts are exhausted"), "{log}");
}

/// When baton gives up, its last words say so: the final exit of the last
/// worker once read "exited with status 0; restarting it" right after
/// "no worker left ...; exiting".
#[test]
fn the_last_words_say_that_baton_gives_up_not_that_it_restarts() {
    let log = exhaust_restarts("quits.sh", "#!/bin/sh\nsystemd-notify --ready\nsleep 0.2\nexit 0\n");
    let exits: Vec<&str> = log.lines().filter(|l| l.contains("exited with status 0")).collect();
    assert_eq!(exits.len(), 3, "{log}");
    assert!(exits[0].ends_with("; restarting it in 50ms"), "{log}");
    assert!(exits[1].ends_with("; restarting it in 100ms"), "{log}");
    assert!(
        exits[2].ends_with(
            "exited with status 0; that is 3 failures within 1m ([restart] limit = 2); giving up on slot 0, which stays empty"
        ),
        "{log}"
    );
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.ends_with(
            "generation 1 has no worker left and its restarts are exhausted; stopping and exiting with status 1"
        ),
        "{log}"
    );
    let gave_up = log.find("giving up on slot 0").unwrap();
    assert!(!log[gave_up..].contains("restarting"), "{log}");
}

#[test]
fn a_first_generation_that_never_gets_ready_exits_1_and_leaves_nothing() {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let extra = "[readiness]\ntimeout = \"1s\"\n\n[stop]\ntimeout = \"1s\"\n\n[environment]\nHELLO_NO_READY = \"1\"\n";
    let mut baton = Baton::spawn(port, &config_text(port, &[&hello], 2, extra));
    std::thread::sleep(Duration::from_millis(300));
    let pids: Vec<i32> = crate::common::baton::children_of(baton.pid())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not exit");
    assert_eq!(status.code(), Some(1), "{}", baton.log());
    assert!(baton.log().contains("readiness timeout"), "{}", baton.log());
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived baton");
    }
}

#[test]
fn a_missing_binary_at_start_is_a_clear_error() {
    let port = port();
    let mut baton = Baton::spawn(port, &config_text(port, &["/opt/nowhere/app"], 1, ""));
    let status = baton.wait_exit(Duration::from_secs(10)).expect("baton did not exit");
    assert_eq!(status.code(), Some(1));
    assert!(baton.log().contains("command not found"), "{}", baton.log());
}

#[test]
fn an_invalid_config_at_start_exits_78_with_positions() {
    let port = port();
    let mut baton = Baton::spawn(
        port,
        "command = [\"x\"]\nworkers = \"many\"\n[stop]\nsignal = \"SIGFOO\"\n",
    );
    let status = baton.wait_exit(Duration::from_secs(10)).expect("baton did not exit");
    assert_eq!(status.code(), Some(78), "{}", baton.log());
    let log = baton.log();
    assert!(log.contains("app.toml:2:11"), "{log}");
    assert!(log.contains("app.toml:4:10"), "{log}");
}

#[test]
fn a_worker_that_stops_pinging_its_watchdog_is_replaced() {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let extra = "[watchdog]\ntimeout = \"1s\"\n\n[environment]\nHELLO_NO_WATCHDOG = \"1\"\n";
    let baton = Baton::start(port, &config_text(port, &[&hello], 1, extra));
    let first = baton.worker_pids(1);
    let (_, env) = crate::common::http_get(baton.addr(), "/env", Duration::from_secs(5)).unwrap();
    assert!(env.contains("WATCHDOG_USEC=1000000\n"), "{env}");
    assert!(env.contains(&format!("WATCHDOG_PID={}\n", first[0])), "{env}");
    assert!(
        crate::common::wait_until(Duration::from_secs(15), || {
            let s = baton.status();
            s["supervisor"]["generations"][0]["restarts"].as_u64() >= Some(1)
        }),
        "{:#}",
        baton.status()
    );
    assert!(
        baton.log().contains("stopped sending watchdog pings"),
        "{}",
        baton.log()
    );
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || baton
            .worker_pids(1)
            .iter()
            .any(|p| !first.contains(p))),
        "no replacement worker"
    );
}
