//! SIGTERM drains, and a worker that ignores it is killed after the stop
//! timeout (README, "Stopping").

use std::time::{Duration, Instant};

use crate::common::baton::{Baton, alive, config_text, port};
use crate::common::{example_bin, http_get};

fn hello() -> String {
    example_bin("hello").display().to_string()
}

#[test]
fn sigterm_lets_an_in_flight_slow_request_complete() {
    let port = port();
    let hello = hello();
    let mut baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    let addr = baton.addr();
    let slow = std::thread::spawn(move || http_get(addr, "/slow?ms=2000", Duration::from_secs(20)));
    // Make sure the request is in flight before the signal.
    std::thread::sleep(Duration::from_millis(500));
    baton.signal(nix::sys::signal::SIGTERM);
    let answer = slow.join().unwrap();
    assert_eq!(answer, Ok((200, "slow done\n".to_owned())), "{}", baton.log());
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not exit");
    assert_eq!(status.code(), Some(0), "{}", baton.log());
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let port = port();
    let hello = hello();
    let extra = "[stop]\ntimeout = \"1s\"\n\n[environment]\nHELLO_IGNORE_SIGTERM = \"1\"\n";
    let mut baton = Baton::start(port, &config_text(port, &[&hello], 2, extra));
    let pids = baton.worker_pids(1);
    assert_eq!(pids.len(), 2);
    let started = Instant::now();
    baton.signal(nix::sys::signal::SIGTERM);
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not exit");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{}", baton.log());
    // It waited for the stop timeout rather than killing at once.
    assert!(took >= Duration::from_millis(900), "stopped after {took:?}");
    for pid in pids {
        assert!(!alive(pid), "worker {pid} survived");
    }
    assert!(baton.log().contains("did not stop in time"), "{}", baton.log());
}

#[test]
fn sigint_stops_gracefully_too_and_the_port_is_released_only_at_exit() {
    let port = port();
    let hello = hello();
    let mut baton = Baton::start(port, &config_text(port, &[&hello], 1, ""));
    baton.signal(nix::sys::signal::SIGINT);
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not exit");
    assert_eq!(status.code(), Some(0));
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port free after exit");
}
