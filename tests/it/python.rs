//! The gunicorn example (`examples/python`) under baton. gunicorn
//! takes the socket from LISTEN_FDS/LISTEN_PID, says READY=1 from its
//! `when_ready` hook and drains on SIGTERM; 5 reloads under load fail no
//! request, and neither do 20 under keep-alive load.
//!
//! `python3` is required. The test makes a venv in
//! `target/examples-python-venv` and installs `requirements.txt` into it
//! when it is missing or was made from other requirements.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::baton::{Baton, fd_targets, port, process_tree, worker_lines};
use crate::common::load::{Load, keep_alive_get};
use crate::common::{say, wait_until};

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python")
}

/// `target/examples-python-venv` with examples/python/requirements.txt.
fn provision_venv() -> PathBuf {
    crate::common::baton::provision_venv(
        "examples-python-venv",
        &python_dir().join("requirements.txt"),
        "tests/it/python.rs",
    )
}

/// examples/python/baton.toml made to run here: the venv's gunicorn,
/// `directory` as the app's folder, `port` as the address, and `canary` as
/// the address gunicorn would bind if it ignored the passed socket.
fn example_config(shipped: &str, venv: &Path, directory: &Path, port: u16, canary: u16) -> String {
    shipped
        .replace(
            "\".venv/bin/gunicorn\"",
            &format!("{:?}", venv.join("bin/gunicorn").display().to_string()),
        )
        .replace(
            "directory = \".\"",
            &format!("directory = {:?}", directory.display().to_string()),
        )
        .replace(
            "address = \"127.0.0.1:8081\"",
            &format!("address = \"127.0.0.1:{port}\""),
        )
        .replace(
            "[environment]\n",
            &format!("[environment]\nBIND = \"127.0.0.1:{canary}\"\n"),
        )
}

/// Inodes of the listening TCP sockets on 127.0.0.1 (and 0.0.0.0), by port.
fn listening_tcp() -> Vec<(u16, String)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9)
            let (_, port) = f.get(1)?.split_once(':')?;
            (*f.get(3)? == "0A").then(|| Some((u16::from_str_radix(port, 16).ok()?, f.get(9)?.to_string())))?
        })
        .collect()
}

#[test]
fn gunicorn_five_reloads_under_load_fail_no_request() {
    let venv = provision_venv();
    const RELOADS: usize = 5;
    let port = port();
    // Where gunicorn would bind if it ignored the passed socket: nobody may
    // listen there.
    let canary = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = python_dir();
    let shipped = std::fs::read_to_string(dir.join("baton.toml")).unwrap();
    for needed in [
        "command = [\".venv/bin/gunicorn\"",
        "directory = \".\"",
        "workers = 2\n",
        "mode = \"notify\"",
        "signal = \"SIGTERM\"",
        "address = \"127.0.0.1:8081\"",
        "[environment]\n",
    ] {
        assert!(shipped.contains(needed), "examples/python/baton.toml lacks {needed:?}");
    }
    let config = example_config(&shipped, &venv, &dir, port, canary);
    let baton = Baton::start(port, &config);

    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    // A request in flight across the first reload: gunicorn's graceful stop
    // must finish it. It outlasts the reload, which takes the example's
    // settle (3 s) and more (once 6 s was not enough on a 2-core machine at
    // load 20), stays below gunicorn's graceful_timeout (20 s), and is about
    // as long as the five reloads take, so it costs the test little.
    let slow = crate::common::slow_request_in_background(baton.addr(), 15_000);
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    let first_reload_done = baton.reload_times(RELOADS, Duration::from_millis(300));
    let reload_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));

    // While the last generation serves: its gunicorn masters and their
    // workers hold exactly one listening socket, baton's.
    let status = baton.status();
    assert_eq!(status["supervisor"]["serving"].as_u64(), Some(RELOADS as u64 + 1));
    let masters = baton.worker_pids(RELOADS as u64 + 1);
    assert_eq!(masters.len(), 2, "{status:#}");
    let listening = listening_tcp();
    let ours: BTreeSet<String> = listening
        .iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, inode)| format!("socket:[{inode}]"))
        .collect();
    assert_eq!(ours.len(), 1, "listening sockets on port {port}: {listening:?}");
    assert!(
        !listening.iter().any(|(p, _)| *p == canary),
        "something listens on the canary port {canary}: gunicorn bound `bind` instead of using fd 3"
    );
    let listening_inodes: BTreeSet<String> = listening.iter().map(|(_, inode)| format!("socket:[{inode}]")).collect();
    for &master in &masters {
        let procs = process_tree(master);
        assert!(procs.len() >= 3, "gunicorn {master} should have 2 workers: {procs:?}");
        for pid in procs {
            let held: BTreeSet<String> = fd_targets(pid)
                .into_iter()
                .map(|(_, t)| t)
                .filter(|t| listening_inodes.contains(t))
                .collect();
            assert_eq!(held, ours, "listening sockets of pid {pid} (gunicorn {master})");
        }
    }
    // READY=1 came from the when_ready hook, whose STATUS= baton shows.
    let serving = status["supervisor"]["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == status["supervisor"]["serving"])
        .unwrap();
    for w in serving["workers"].as_array().unwrap() {
        assert_eq!(w["state"], "ready", "{status:#}");
        let text = w["status"].as_str().unwrap_or_default();
        assert!(
            text.starts_with(&format!("gunicorn {}: 2 workers on http://127.0.0.1:{port}", w["pid"])),
            "status text not from the when_ready hook: {text:?}"
        );
    }

    let stats = load.stop();
    let (slow, slow_done) = slow.join().unwrap();
    eprintln!(
        "gunicorn: {RELOADS} reloads of 2 workers (2 gunicorn workers each) in {:.1}s under load: \
         {} requests, {} failed; {stats}",
        reload_time.as_secs_f64(),
        stats.total(),
        stats.failed
    );
    stats.assert_served_through(100, RELOADS as u64 + 1);
    assert_eq!(
        slow.as_ref().map(|(code, body)| (*code, body.as_str())),
        Ok((200, "slow done after 15000 ms\n")),
        "the request in flight during the first reload"
    );
    // It was answered after generation 1 had been told to stop.
    assert!(
        first_reload_done < slow_done,
        "the slow request finished before the first reload did"
    );

    // Every gunicorn master used the passed socket, and the retired ones
    // shut down gracefully.
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
    assert_eq!(pids.len(), 2 * (RELOADS + 1), "gunicorn masters seen in the log");
    for &pid in &pids {
        let mine: Vec<&str> = lines.iter().filter(|l| l.pid == pid).map(|l| l.text.as_str()).collect();
        let listening_at = format!("Listening at: http://127.0.0.1:{port} ({pid})");
        assert!(
            mine.iter().any(|t| t.ends_with(&listening_at)),
            "gunicorn {pid} did not listen on the passed socket: {mine:#?}"
        );
        assert!(
            !mine.iter().any(|t| t.contains(&format!(":{canary}"))),
            "gunicorn {pid} mentions the canary port: {mine:#?}"
        );
        let generation = lines.iter().find(|l| l.pid == pid).unwrap().generation;
        if generation <= RELOADS as u64 {
            assert!(
                mine.iter().any(|t| t.contains("Handling signal: term"))
                    && mine.iter().any(|t| t.contains("Shutting down: Master")),
                "gunicorn {pid} (generation {generation}) did not stop gracefully: {mine:#?}"
            );
        }
    }
}

/// gunicorn sends READY=1 (its `when_ready` hook) before its workers import
/// the app. Without `preload_app`, a release whose app cannot be imported
/// is "ready", then its workers fail to boot and the master exits (issue
/// 14: 0 of 30 probes answered). `[readiness] settle` (the example's
/// value) keeps such a release from ever counting as ready: the reload
/// fails and the old generation serves throughout.
#[test]
fn gunicorn_without_preload_and_a_broken_app_fails_the_reload_thanks_to_settle() {
    let venv = provision_venv();
    let port = port();
    let canary = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = python_dir();
    let shipped = std::fs::read_to_string(dir.join("baton.toml")).unwrap();
    let settle = shipped
        .lines()
        .find_map(|l| l.strip_prefix("settle = "))
        .and_then(|v| v.split('"').nth(1))
        .unwrap_or_else(|| panic!("examples/python/baton.toml has no [readiness] settle"))
        .to_owned();
    let tmp = tempfile::tempdir().unwrap();
    // gunicorn.conf.py as shipped, less preload_app.
    let conf = std::fs::read_to_string(dir.join("gunicorn.conf.py")).unwrap();
    assert!(conf.contains("preload_app = True\n"));
    let conf_path = tmp.path().join("no-preload.conf.py");
    std::fs::write(
        &conf_path,
        conf.replace("preload_app = True\n", "preload_app = False\n"),
    )
    .unwrap();
    // Two releases: the example app, and one that cannot be imported.
    let good = tmp.path().join("good");
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(dir.join("app.py"), good.join("app.py")).unwrap();
    std::fs::write(
        broken.join("app.py"),
        "import flask_that_is_not_installed\n\n\ndef app(environ, start_response):\n    pass\n",
    )
    .unwrap();
    let config_for = |release: &Path| {
        example_config(&shipped, &venv, release, port, canary).replace(
            "\"gunicorn.conf.py\"",
            &format!("{:?}", conf_path.display().to_string()),
        )
    };
    let baton = Baton::start(port, &config_for(&good));
    let old = baton.worker_pids(1);
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));

    baton.write_config(&config_for(&broken));
    let started = Instant::now();
    let out = baton.reload();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", baton.log());
    assert!(stderr.contains("while settling"), "{stderr}");
    assert!(
        stderr.contains("the error: ModuleNotFoundError: No module named 'flask_that_is_not_installed'"),
        "{stderr}"
    );
    // How long after its READY=1 the gunicorn master went: the settle
    // must be longer than that.
    let gap = stderr
        .split("while settling, ")
        .nth(1)
        .and_then(|rest| rest.split(" after it sent READY=1").next())
        .unwrap_or("?")
        .to_owned();
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    eprintln!(
        "gunicorn without preload, broken app, settle {settle}: the master exited {gap} after READY=1; \
         the reload failed after {:.1}s; {stats}",
        took.as_secs_f64()
    );
    assert_eq!(stats.failed, 0, "{stats} {:?}", stats.first_errors);
    assert_eq!(stats.generations_seen.iter().collect::<Vec<_>>(), vec!["1"], "{stats}");
    assert_eq!(baton.worker_pids(1), old, "the old masters must be the same processes");
    let status = baton.status();
    assert_eq!(status["supervisor"]["serving"].as_u64(), Some(1), "{status:#}");
    assert_eq!(status["supervisor"]["last_reload"]["ok"], false, "{status:#}");
}

/// 20 reloads under keep-alive load (12 connections sending back to back)
/// fail no request. gunicorn's sync worker answers every request with
/// `Connection: close` and closes the connection after it (it serves one
/// connection at a time, so it never keeps one idle), so a keep-alive
/// client reconnects for each request and nothing is ever sent on a
/// connection the drain closes: the same as a new connection per request.
#[test]
fn gunicorn_keep_alive_load_over_20_reloads_loses_nothing() {
    let venv = provision_venv();
    const RELOADS: usize = 20;
    let port = port();
    let canary = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = python_dir();
    let shipped = std::fs::read_to_string(dir.join("baton.toml")).unwrap();
    let baton = Baton::start(port, &example_config(&shipped, &venv, &dir, port, canary));

    // Why nothing can be lost: the first answer on a keep-alive connection
    // already ends it.
    let mut conn = None;
    let answer = keep_alive_get(&mut conn, baton.addr(), "/", Duration::from_secs(5));
    assert!(matches!(&answer, Ok((200, _))), "{answer:?}");
    assert!(conn.is_none(), "gunicorn's sync worker kept the connection open");

    let load = Load::keep_alive(baton.addr(), "/", 12);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    baton.reload_times(RELOADS, Duration::from_millis(150));
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    say(&format!(
        "gunicorn, keep-alive, 12 connections, {RELOADS} reloads in {:.1}s: {stats}",
        took.as_secs_f64()
    ));
    stats.assert_served_through(100, RELOADS as u64 + 1);
    assert!(stats.generations_seen.len() > RELOADS / 2, "{stats}");
}
