//! A broken release fails the reload loudly and the old generation serves
//! throughout, at full strength.

use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::example_bin;
use crate::common::load::Load;

fn hello() -> String {
    example_bin("hello").display().to_string()
}

fn assert_old_generation_intact(baton: &Baton, workers: usize) {
    let s = baton.status();
    let sup = &s["supervisor"];
    assert_eq!(sup["serving"].as_u64(), Some(1), "{s:#}");
    let gen1 = sup["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == 1)
        .unwrap();
    assert_eq!(gen1["ready"].as_u64(), Some(workers as u64), "{s:#}");
    assert_eq!(gen1["restarts"].as_u64(), Some(0), "{s:#}");
    assert_eq!(sup["last_reload"]["ok"], false, "{s:#}");
}

#[test]
fn a_release_that_crashes_on_start_fails_the_reload_and_the_old_one_serves() {
    let port = port();
    let hello = hello();
    let baton = Baton::start(port, &config_text(port, &[&hello], 4, ""));
    let old_pids = baton.worker_pids(1);
    let load = Load::start(baton.addr(), "/", 6);
    std::thread::sleep(Duration::from_millis(300));

    let broken = "[environment]\nHELLO_FAIL_START = \"FATAL: cannot connect to database at db:5432\"\n";
    baton.write_config(&config_text(port, &[&hello], 4, broken));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "reload must fail: {stderr}");
    assert!(
        stderr.contains("FATAL: cannot connect to database at db:5432"),
        "{stderr}"
    );
    assert!(stderr.contains("exited with status 3"), "{stderr}");
    assert!(stderr.contains("still serving"), "{stderr}");

    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    eprintln!("broken release: {stats}");
    assert_eq!(stats.failed, 0, "{stats} {:?}", stats.first_errors);
    assert_eq!(stats.generations_seen.iter().collect::<Vec<_>>(), vec!["1"], "{stats}");
    assert_eq!(
        baton.worker_pids(1),
        old_pids,
        "the old workers must be the same processes"
    );
    assert_old_generation_intact(&baton, 4);

    // Fixing the release makes the next reload succeed.
    baton.write_config(&config_text(port, &[&hello], 4, ""));
    let out = baton.reload();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_invalid_config_fails_the_reload_with_every_error_and_changes_nothing() {
    let port = port();
    let hello = hello();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    baton.write_config(&format!(
        "name = \"app\"\ncommand = [\"{hello}\"]\nworkers = -2\nworkerz = 1\n\n[[listen]]\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("app.toml:3:11"), "{stderr}");
    assert!(stderr.contains("app.toml:4:1"), "{stderr}");
    assert!(stderr.contains("workerz"), "{stderr}");
    assert_old_generation_intact(&baton, 2);
}

#[test]
fn a_missing_binary_fails_the_reload_before_anything_starts() {
    let port = port();
    let hello = hello();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    baton.write_config(&config_text(port, &["/opt/nowhere/server"], 2, ""));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("command not found"), "{stderr}");
    assert_old_generation_intact(&baton, 2);
}

#[test]
fn a_release_that_never_becomes_ready_times_out_and_is_killed() {
    let port = port();
    let hello = hello();
    let base = "[readiness]\ntimeout = \"1s\"\n\n[stop]\ntimeout = \"1s\"\n";
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, base));
    baton.write_config(&config_text(
        port,
        &[&hello],
        2,
        &format!("{base}\n[environment]\nHELLO_NO_READY = \"1\"\nHELLO_IGNORE_SIGTERM = \"1\"\n"),
    ));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("readiness timeout"), "{stderr}");
    // The stuck workers ignore SIGTERM; after the stop timeout they are killed.
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || baton.status()["supervisor"]["generations"]
            .as_array()
            .is_some_and(|g| g.len() == 1)),
        "generation 2 was not cleaned up: {:#}",
        baton.status()
    );
    assert_old_generation_intact(&baton, 2);
}
