//! Reloads under continuous load lose nothing. A real baton, real `hello`
//! workers, and a load client that counts every failure: a new connection
//! per request, or keep-alive connections sending back to back (wrk's way).

use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::example_bin;
use crate::common::load::{Load, examples_drain_against_the_usual};

fn hello() -> String {
    example_bin("hello").display().to_string()
}

fn reload_many(strategy: &str, workers: usize, reloads: usize) {
    let port = port();
    let hello = hello();
    let extra = format!("[reload]\nstrategy = \"{strategy}\"\n\n[stop]\ntimeout = \"10s\"\n");
    let baton = Baton::start(port, &config_text(port, &[&hello], workers, &extra));
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    baton.reload_times(reloads, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    eprintln!("{strategy}: {reloads} reloads, {workers} workers: {stats}");
    // Requests were answered by many generations, the last one included.
    stats.assert_served_through(100, reloads as u64 + 1);
    assert!(stats.generations_seen.len() >= reloads / 2, "{stats}");
    let status = baton.status();
    assert_eq!(status["supervisor"]["serving"].as_u64(), Some(reloads as u64 + 1));
}

#[test]
fn twenty_parallel_reloads_of_four_workers_under_load_fail_no_request() {
    reload_many("parallel", 4, 20);
}

#[test]
fn rolling_reloads_under_load_fail_no_request() {
    reload_many("rolling", 3, 8);
}

/// 20 reloads of 2 workers under keep-alive load (12 connections sending
/// back to back): the example's drain (`Connection: close` on each
/// connection's next response, close only after 1.5 s without a request)
/// loses nothing. The usual drain, closing idle connections at once
/// (`HELLO_IDLE_GRACE_MS=0`), is measured for comparison: it loses the
/// request a client had already sent on each connection it closes.
#[test]
fn keep_alive_load_over_20_reloads_loses_nothing_with_the_examples_drain() {
    let hello = hello();
    examples_drain_against_the_usual("hello", 20, 1000, |grace_ms| {
        let port = port();
        let env = match grace_ms {
            Some(ms) => format!("[environment]\nHELLO_IDLE_GRACE_MS = \"{ms}\"\n\n"),
            None => String::new(),
        };
        let extra = format!("{env}[stop]\ntimeout = \"10s\"\n");
        Baton::start(port, &config_text(port, &[&hello], 2, &extra))
    });
}

#[test]
fn sighup_reloads_like_baton_reload() {
    let port = port();
    let hello = hello();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    baton.signal(nix::sys::signal::SIGHUP);
    assert!(baton.wait_serving(2, Duration::from_secs(20)), "{}", baton.log());
    baton.signal(nix::sys::signal::SIGHUP);
    assert!(baton.wait_serving(3, Duration::from_secs(20)), "{}", baton.log());
    // Nobody waits for a SIGHUP reload, so the log is the only place that
    // says how it ended: a success, then a failure.
    assert!(
        baton.wait_log(Duration::from_secs(5), |l| l
            .contains("reload finished: generation 3 serving")),
        "{}",
        baton.log()
    );
    baton.write_config(&config_text(port, &["/nonexistent/release/server"], 2, ""));
    baton.signal(nix::sys::signal::SIGHUP);
    assert!(
        baton.wait_log(Duration::from_secs(20), |l| l.contains("reload failed: ")
            && l.contains("/nonexistent/release/server")),
        "{}",
        baton.log()
    );
    assert_eq!(baton.status()["supervisor"]["serving"].as_u64(), Some(3));
}
