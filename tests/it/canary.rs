//! Canary releases (README "Canary releases"): `reload --canary N` starts N
//! workers of the new release beside the serving generation, `promote`
//! finishes the rollout from the canary's pinned release, `rollback` and
//! any failure abort it. Under load, no request may fail; killing a worker
//! loses its in-flight requests, so those scenarios run without load.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::common::baton::{Baton, config_text, port};
use crate::common::load::{Load, LoadStats};
use crate::common::{example_bin, text, wait_until};

fn hello() -> String {
    example_bin("hello").display().to_string()
}

/// Release `n` of the app: the same binary, a different environment (so the
/// config on disk really changed).
fn release(port: u16, workers: usize, n: u32, extra: &str) -> String {
    config_text(
        port,
        &[&hello()],
        workers,
        &format!("[stop]\ntimeout = \"10s\"\n\n{extra}\n[environment]\nAPP_RELEASE = \"v{n}\"\n"),
    )
}

/// A release whose workers exit before they are ready.
fn broken_release(port: u16, workers: usize) -> String {
    config_text(
        port,
        &[&hello()],
        workers,
        "[environment]\nHELLO_FAIL_START = \"FATAL: v3 cannot read its settings\"\n",
    )
}

/// Runs a client command that must succeed.
fn ok(baton: &Baton, args: &[&str]) -> Output {
    let out = baton.client(args);
    assert!(
        out.status.success(),
        "{args:?}: {}\nbaton log:\n{}",
        text(&out),
        baton.log()
    );
    out
}

fn generation(status: &Value, id: u64) -> Option<Value> {
    status["supervisor"]["generations"]
        .as_array()?
        .iter()
        .find(|g| g["id"].as_u64() == Some(id))
        .cloned()
}

/// Generation 1 serves with all its workers ready, none restarted.
fn assert_serving_at_full_strength(baton: &Baton, id: u64, workers: u64) {
    let s = baton.status();
    assert_eq!(s["supervisor"]["serving"].as_u64(), Some(id), "{s:#}");
    let g = generation(&s, id).unwrap();
    assert_eq!(g["ready"].as_u64(), Some(workers), "{s:#}");
    assert_eq!(g["slots"].as_u64(), Some(workers), "{s:#}");
    assert_eq!(g["restarts"].as_u64(), Some(0), "{s:#}");
}

/// Starts `workers` workers of v1, then a canary of one worker of v2.
fn start_with_canary(workers: usize, canary_args: &[&str]) -> Baton {
    let port = port();
    let baton = Baton::start(port, &release(port, workers, 1, ""));
    baton.write_config(&release(port, workers, 2, ""));
    let mut args = vec!["reload", "--canary", "1"];
    args.extend_from_slice(canary_args);
    let out = ok(&baton, &args);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("canary generation 2 is ready"),
        "{}",
        text(&out)
    );
    baton
}

fn last_canary(baton: &Baton) -> Value {
    baton.status()["supervisor"]["last_canary"].clone()
}

/// Waits until the canary is over (no `canary` in the status).
fn wait_canary_over(baton: &Baton, timeout: Duration) -> bool {
    wait_until(timeout, || {
        baton
            .try_status()
            .is_some_and(|s| s["supervisor"]["canary"].is_null() && !s["supervisor"]["last_canary"].is_null())
    })
}

fn assert_no_failure(what: &str, stats: &LoadStats) {
    eprintln!("{what}: {stats}");
    assert_eq!(stats.failed, 0, "{what}: {stats}\n{:?}", stats.first_errors);
    assert!(stats.ok > 100, "{what}: too little load to mean anything: {stats}");
}

#[test]
fn a_canary_of_v2_serves_beside_v1_which_stays_at_full_strength() {
    let port = port();
    let baton = Baton::start(port, &release(port, 4, 1, ""));
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    baton.write_config(&release(port, 4, 2, ""));
    ok(&baton, &["reload", "--canary", "1"]);

    // The canary shares the sockets: both generations answer, and the
    // serving generation keeps every worker throughout.
    for _ in 0..5 {
        assert_serving_at_full_strength(&baton, 1, 4);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        wait_until(Duration::from_secs(10), || load.snapshot().generations_seen.len() == 2),
        "{}",
        load.snapshot()
    );
    let stats = load.stop();
    assert_no_failure("canary beside v1", &stats);
    assert_eq!(
        stats.generations_seen.iter().collect::<Vec<_>>(),
        vec!["1", "2"],
        "{stats}"
    );

    let s = baton.status();
    let sup = &s["supervisor"];
    assert_eq!(sup["canary"]["generation"].as_u64(), Some(2), "{s:#}");
    assert_eq!(sup["canary"]["checking"], false, "{s:#}");
    assert!(sup["canary"]["hold_left_ms"].is_null(), "{s:#}");
    let canary = generation(&s, 2).unwrap();
    assert_eq!(canary["role"], "canary", "{s:#}");
    assert_eq!(canary["ready"].as_u64(), Some(1), "{s:#}");
    assert_eq!(canary["slots"].as_u64(), Some(1), "{s:#}");

    let out = ok(&baton, &["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("generation 1 serving, 4/4 ready"), "{shown}");
    assert!(shown.contains("generation 2 canary"), "{shown}");
    assert!(
        shown.contains("canary: generation 2 beside the serving generation"),
        "{shown}"
    );
    assert!(
        shown.contains("waiting for `baton promote` or `baton rollback`"),
        "{shown}"
    );
}

#[test]
fn promote_starts_the_canarys_pinned_release_even_after_the_config_moved_to_a_broken_v3() {
    let baton = start_with_canary(4, &[]);
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(500));
    // The config on disk moves on to a release that cannot start.
    baton.write_config(&broken_release(baton.port, 4));
    let out = ok(&baton, &["promote"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("generation 2 is serving"),
        "{}",
        text(&out)
    );
    assert!(
        wait_until(Duration::from_secs(20), || baton.try_status().is_some_and(|s| {
            s["supervisor"]["generations"].as_array().is_some_and(|g| g.len() == 1)
        })),
        "generation 1 did not retire: {:#}",
        baton.status()
    );
    let during = load.stop();
    assert_no_failure("promote while the disk has a broken v3", &during);

    // Only v2 serves now, at full strength.
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(700));
    let after = load.stop();
    assert_no_failure("after the promotion", &after);
    assert_eq!(after.generations_seen.iter().collect::<Vec<_>>(), vec!["2"], "{after}");
    assert_serving_at_full_strength(&baton, 2, 4);
    assert_eq!(last_canary(&baton)["outcome"]["kind"], "promoted");
    assert!(!baton.log().contains("v3 cannot read its settings"), "{}", baton.log());
}

#[test]
fn a_broken_canary_fails_with_exit_1_and_the_old_generation_stays_at_full_strength() {
    let port = port();
    let baton = Baton::start(port, &release(port, 4, 1, ""));
    let old = baton.worker_pids(1);
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    baton.write_config(&broken_release(port, 4));
    let out = baton.client(&["reload", "--canary", "2"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("FATAL: v3 cannot read its settings"), "{shown}");
    assert!(shown.contains("still serving"), "{shown}");
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    assert_no_failure("broken canary", &stats);
    assert_eq!(stats.generations_seen.iter().collect::<Vec<_>>(), vec!["1"], "{stats}");
    assert_serving_at_full_strength(&baton, 1, 4);
    assert_eq!(baton.worker_pids(1), old);
    // It never became ready, so it never was a canary.
    assert!(baton.status()["supervisor"]["canary"].is_null());
}

#[test]
fn a_canary_held_for_1s_promotes_itself() {
    let baton = start_with_canary(3, &["--hold", "1s"]);
    let load = Load::start(baton.addr(), "/", 8);
    let s = baton.status();
    assert!(s["supervisor"]["canary"]["hold_left_ms"].as_u64().is_some(), "{s:#}");
    assert!(baton.wait_serving(2, Duration::from_secs(20)), "{}", baton.log());
    assert!(
        wait_until(Duration::from_secs(20), || baton.try_status().is_some_and(|s| {
            s["supervisor"]["generations"].as_array().is_some_and(|g| g.len() == 1)
        })),
        "{:#}",
        baton.status()
    );
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert_no_failure("--hold 1s, then promoted", &stats);
    stats.assert_served_through(100, 2);
    assert_serving_at_full_strength(&baton, 2, 3);
    assert_eq!(last_canary(&baton)["outcome"]["kind"], "promoted");
    assert!(
        baton
            .log()
            .contains("the hold of canary generation 2 is over; promoting it"),
        "{}",
        baton.log()
    );
}

/// `[canary] hold` and `check` from the config; the check sees the canary.
fn with_check(check: &str) -> (Baton, tempfile::TempDir) {
    let port = port();
    let dir = tempfile::tempdir().unwrap();
    let baton = Baton::start(port, &release(port, 3, 1, ""));
    let canary = format!("[canary]\nhold = \"1s\"\ncheck = [\"sh\", \"-c\", {check:?}]\ncheck_timeout = \"5s\"\n\n");
    let text = format!(
        "directory = {:?}\n{}",
        dir.path().display().to_string(),
        release(port, 3, 2, &canary)
    );
    baton.write_config(&text);
    ok(&baton, &["reload", "--canary", "2"]);
    (baton, dir)
}

#[test]
fn a_passing_check_promotes_the_canary_and_sees_its_name_generation_pids_and_directory() {
    let (baton, dir) = with_check("echo \"$BATON_NAME|$BATON_GENERATION|$BATON_CANARY_PIDS|$(pwd)\" > check.out");
    let load = Load::start(baton.addr(), "/", 8);
    let pids = baton.worker_pids(2);
    assert_eq!(pids.len(), 2);
    assert!(baton.wait_serving(2, Duration::from_secs(20)), "{}", baton.log());
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert_no_failure("[canary] hold + passing check", &stats);
    let seen = std::fs::read_to_string(dir.path().join("check.out")).unwrap();
    let mut sorted = pids.clone();
    sorted.sort_unstable();
    let pids: Vec<String> = sorted.iter().map(ToString::to_string).collect();
    let real = dir.path().canonicalize().unwrap();
    assert_eq!(
        seen.trim_end(),
        format!("app|2|{}|{}", pids.join(" "), real.display()),
        "{}",
        baton.log()
    );
    assert_eq!(last_canary(&baton)["outcome"]["kind"], "promoted");
    assert!(
        baton.log().contains("the check of canary generation 2 passed"),
        "{}",
        baton.log()
    );
}

#[test]
fn a_failing_check_aborts_the_canary() {
    let (baton, _dir) = with_check("echo error rate too high >&2; exit 4");
    let load = Load::start(baton.addr(), "/", 8);
    assert!(wait_canary_over(&baton, Duration::from_secs(20)), "{}", baton.log());
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    assert_no_failure("failing check", &stats);
    let last = last_canary(&baton);
    assert_eq!(last["outcome"]["kind"], "aborted", "{last:#}");
    let reason = last["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("check failed") && reason.contains("exited with status 4"),
        "{reason}"
    );
    assert!(baton.log().contains("error rate too high"), "{}", baton.log());
    assert_serving_at_full_strength(&baton, 1, 3);
    assert!(
        wait_until(Duration::from_secs(15), || generation(&baton.status(), 2).is_none()),
        "{:#}",
        baton.status()
    );
    let out = ok(&baton, &["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("last canary: generation 2 ABORTED: check failed"),
        "{shown}"
    );
}

#[test]
fn a_check_that_outlives_its_timeout_is_killed_and_aborts_the_canary() {
    let port = port();
    let baton = Baton::start(port, &release(port, 2, 1, ""));
    let canary = "[canary]\ncheck = [\"sleep\", \"60\"]\ncheck_timeout = \"500ms\"\n\n";
    baton.write_config(&release(port, 2, 2, canary));
    ok(&baton, &["reload", "--canary", "1", "--hold", "100ms"]);
    assert!(wait_canary_over(&baton, Duration::from_secs(20)), "{}", baton.log());
    let last = last_canary(&baton);
    let reason = last["outcome"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("did not finish within 500ms"), "{last:#}");
    assert_serving_at_full_strength(&baton, 1, 2);
}

#[test]
fn sigkill_of_a_ready_canary_worker_aborts_the_canary_without_a_restart() {
    let baton = start_with_canary(3, &[]);
    let victim = baton.worker_pids(2);
    assert_eq!(victim.len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim[0]), nix::sys::signal::SIGKILL).unwrap();
    assert!(wait_canary_over(&baton, Duration::from_secs(20)), "{}", baton.log());
    let last = last_canary(&baton);
    assert_eq!(last["outcome"]["kind"], "aborted", "{last:#}");
    assert!(
        last["outcome"]["reason"].as_str().unwrap().contains("SIGKILL"),
        "{last:#}"
    );
    // Not restarted: generation 2 is gone for good.
    std::thread::sleep(Duration::from_millis(500));
    assert!(generation(&baton.status(), 2).is_none(), "{:#}", baton.status());
    assert_serving_at_full_strength(&baton, 1, 3);
    assert!(baton.log().contains("canary generation 2 aborted"), "{}", baton.log());
}

#[test]
fn rollback_during_a_canary_aborts_it() {
    let baton = start_with_canary(2, &[]);
    let out = ok(&baton, &["rollback"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("generation 1 is serving"),
        "{}",
        text(&out)
    );
    assert_eq!(last_canary(&baton)["outcome"]["kind"], "rolled_back");
    assert!(
        wait_until(Duration::from_secs(15), || generation(&baton.status(), 2).is_none()),
        "{:#}",
        baton.status()
    );
    assert_serving_at_full_strength(&baton, 1, 2);
    // Nothing to roll back to any more, and nothing to promote.
    let out = baton.client(&["promote"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no canary is running"), "{}", text(&out));
}

#[test]
fn a_plain_reload_or_sighup_during_a_canary_is_refused() {
    let baton = start_with_canary(2, &[]);
    let out = baton.client(&["reload"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("a canary (generation 2) is running: `baton promote` or `baton rollback` decide"),
        "{shown}"
    );
    let out = baton.client(&["reload", "--canary", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    baton.signal(nix::sys::signal::SIGHUP);
    assert!(
        baton.wait_log(Duration::from_secs(10), |l| l
            .contains("reload failed: a canary (generation 2) is running")),
        "{}",
        baton.log()
    );
    // The canary is still there, and both generations still serve.
    let s = baton.status();
    assert_eq!(s["supervisor"]["canary"]["generation"].as_u64(), Some(2), "{s:#}");
    assert_serving_at_full_strength(&baton, 1, 2);
}
