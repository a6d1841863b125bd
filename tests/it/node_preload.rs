//! Node apps written for PM2, run unchanged through baton's preload
//! (`[node] inherit_listen`; README "Node apps without code changes"), with
//! real node processes and the apps in `tests/node` (plain http, https,
//! Express, Fastify, Koa: `listen(process.env.PORT || 3000)`, never a
//! 'ready').
//!
//! - Each app starts, serves through baton's socket (its body names the
//!   port the server really has: baton's, not 3000) and reloads under load
//!   with zero failed requests.
//! - Keep-alive: 20 reloads under keep-alive load with the drain on lose
//!   nothing; with it off, the loss is reported.
//! - A listen() that matches none of baton's sockets fails the worker, and
//!   the message names the sockets.
//! - The user's NODE_OPTIONS stay (the heap limit is the user's).
//! - `baton import-pm2` of an ecosystem file, then `baton run` of what it
//!   wrote, serves straight away.
//!
//! node and npm are required (`npm ci` in tests/node when its node_modules
//! is missing or stale); under CI=true nothing here is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port, provision_npm};
use crate::common::load::{Load, keep_alive_over_reloads};
use crate::common::{http_get, say, skip};

fn apps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

fn app(name: &str) -> String {
    apps().join(name).display().to_string()
}

/// node, and tests/node's node_modules.
fn provision() {
    let out = Command::new("node").arg("--version").output();
    assert!(
        matches!(&out, Ok(o) if o.status.success()),
        "node is required for tests/it/node_preload.rs ({out:?}); install Node.js 18.2 or later"
    );
    provision_npm(&apps(), "tests-node");
}

/// The config an import of a PM2 app gives (SIGINT, the preload, the
/// drain), with `drain` and `extra` sections.
fn pm2_config(port: u16, script: &str, workers: usize, drain: bool, extra: &str) -> String {
    provision();
    config_text(
        port,
        &["node", &app(script)],
        workers,
        &format!(
            "[stop]\nsignal = \"SIGINT\"\ntimeout = \"10s\"\n\n[node]\ninherit_listen = true\ndrain = {drain}\n\n{extra}"
        ),
    )
}

fn body(b: &Baton) -> String {
    let (status, body) = http_get(b.addr(), "/", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET / failed: {e}\nbaton log:\n{}", b.log()));
    assert_eq!(status, 200, "{body}");
    body
}

/// Starts `script` unchanged, checks it serves baton's socket, and reloads
/// it `reloads` times under load with a new connection per request.
fn serves_and_reloads(script: &str, shown: &str) {
    let port = port();
    let b = Baton::start(port, &pm2_config(port, script, 2, true, ""));
    let first = body(&b);
    assert!(
        first.contains(&format!(" port {port}")),
        "the worker serves a socket of its own, not baton's 127.0.0.1:{port}: {first}"
    );
    let mapping = format!("baton: listen({shown}) → inherited fd 3 (http, 127.0.0.1:{port})");
    assert!(b.log().contains(&mapping), "no {mapping:?} in the log:\n{}", b.log());
    let load = Load::start(b.addr(), "/", 4);
    std::thread::sleep(Duration::from_millis(300));
    b.reload_times(5, Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    say(&format!("{script}: 5 reloads, connection per request: {stats}"));
    stats.assert_served_through(100, 6);
}

#[test]
fn node_preload_http_app_unchanged() {
    serves_and_reloads("http.js", "3000");
}

#[test]
fn node_preload_express_app_unchanged() {
    serves_and_reloads("express.js", "3000");
}

#[test]
fn node_preload_fastify_app_unchanged() {
    serves_and_reloads("fastify.js", "3000, \"127.0.0.1\"");
}

#[test]
fn node_preload_koa_app_unchanged() {
    serves_and_reloads("koa.js", "3000");
}

#[test]
fn node_preload_https_app_unchanged() {
    provision();
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    if !matches!(&made, Ok(o) if o.status.success()) {
        skip(&format!("openssl cannot make a test certificate: {made:?}"));
        return;
    }
    let port = port();
    let env = format!(
        "[environment]\nTLS_KEY = {:?}\nTLS_CERT = {:?}\n",
        key.display().to_string(),
        cert.display().to_string()
    );
    let b = Baton::start(port, &pm2_config(port, "https.js", 2, true, &env));
    let get = || {
        let script = format!(
            "require('https').get({{host:'127.0.0.1',port:{port},rejectUnauthorized:false}},r=>{{let b='';r.on('data',d=>b+=d);r.on('end',()=>console.log(r.statusCode,b))}}).on('error',e=>{{console.error(e);process.exit(1)}})"
        );
        let out = Command::new("node").args(["-e", &script]).output().unwrap();
        assert!(out.status.success(), "{out:?}\nbaton log:\n{}", b.log());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answer = get();
    assert!(answer.starts_with("200 hello from generation 1"), "{answer}");
    assert!(answer.contains(&format!(" port {port}")), "{answer}");
    // A TCP connection that never starts its TLS handshake (a port check,
    // a stray client) does not hold the drain open until the stop timeout
    // (10 s): it is closed like an idle connection, after the grace.
    let old = b.worker_pids(1);
    let _stray = std::net::TcpStream::connect(b.addr()).expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    let reloaded = std::time::Instant::now();
    b.reload_times(1, Duration::ZERO);
    assert!(get().starts_with("200 hello from generation 2"));
    while old.iter().any(|&pid| crate::common::baton::alive(pid)) {
        assert!(
            reloaded.elapsed() < Duration::from_secs(6),
            "generation 1 still drains a connection with no TLS handshake after {:?}\n{}",
            reloaded.elapsed(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 20 reloads of 2 workers under keep-alive load (12 connections sending
/// back to back): with the drain, no request is lost. Without it (Node's
/// own SIGINT: exit at once) the loss is measured and reported.
#[test]
fn node_preload_keep_alive_drain_loses_nothing_over_20_reloads() {
    let mut figures = Vec::new();
    for drain in [true, false] {
        let port = port();
        let b = Baton::start(port, &pm2_config(port, "http.js", 2, drain, ""));
        let stats = keep_alive_over_reloads(&b, 20);
        let line = format!("keep-alive, 12 connections, 20 reloads, drain {drain}: {stats}");
        say(&line);
        figures.push(line);
        if drain {
            stats.assert_served_through(1000, 21);
        } else {
            // Node's own SIGINT exits with every connection open: each one
            // whose next request is on its way loses it (12 per reload here).
            assert!(stats.ok > 1000, "too little load to mean anything: {stats}");
            assert!(
                stats.failed > 0,
                "without the drain keep-alive requests are lost: {stats}"
            );
        }
    }
    say(&figures.join("\n"));
}

/// An app with its own SIGINT handler (`server.close(() => exit)`): the
/// drain still closes no connection a client uses, and the app's handler
/// decides when to exit (its close() waits for the drain instead of
/// failing with ERR_SERVER_NOT_RUNNING).
#[test]
fn node_preload_keep_alive_drain_with_the_apps_own_handler() {
    let port = port();
    let b = Baton::start(port, &pm2_config(port, "own-handler.js", 2, true, ""));
    let load = Load::keep_alive(b.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    b.reload_times(5, Duration::from_millis(150));
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    say(&format!("own SIGINT handler, keep-alive, 5 reloads: {stats}"));
    stats.assert_served_through(200, 6);
    assert!(
        b.log().contains("drained; the app handles the stop itself"),
        "{}",
        b.log()
    );
}

/// A client whose request head arrives slowly (a byte every 100 ms, longer
/// in all than the drain's grace) while its worker drains is not idle: it
/// gets its response (with `Connection: close`), not a reset.
#[test]
fn node_preload_drain_answers_a_request_still_arriving() {
    use std::io::{Read, Write};
    let port = port();
    let b = Baton::start(
        port,
        &pm2_config(port, "http.js", 1, true, "").replace("drain = true", "drain = true\ndrain_grace = \"300ms\""),
    );
    let mut conn = std::net::TcpStream::connect(b.addr()).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = b"GET / HTTP/1.1\r\nHost: baton\r\nX-Slow: aaaaaaaaaa\r\n\r\n";
    let (first, rest) = head.split_at(4);
    conn.write_all(first).expect("first bytes");
    let reload = b.reload_in_background();
    for byte in rest {
        std::thread::sleep(Duration::from_millis(100));
        if let Err(e) = conn.write_all(&[*byte]) {
            panic!("the draining worker cut a request still arriving: {e}\n{}", b.log());
        }
    }
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "no response to a request still arriving ({read:?}): {answer:?}\n{}",
        b.log()
    );
    let out = reload.join().expect("reload thread");
    assert!(out.status.success(), "{out:?}");
}

/// An app that forks its own cluster: the preload refuses the primary's
/// listen for its workers, so the first start fails with the reason. (It
/// used to map it: the primary said 'ready' and accepted on baton's socket
/// while every cluster worker failed its port check and died, so baton
/// reported the generation serving and every request hung.)
#[test]
fn node_preload_refuses_the_cluster_modules_listen() {
    let port = port();
    let config = pm2_config(
        port,
        "cluster.js",
        1,
        true,
        "[readiness]\nmode = \"node-ipc\"\ntimeout = \"20s\"\n",
    );
    let mut b = Baton::spawn(port, &config);
    let status = b.wait_exit(Duration::from_secs(40));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a cluster app must fail its first start, not serve a socket no process answers: {status:?}\n{}",
        b.log()
    );
    let wanted = "baton: listen(3000) by the cluster module's primary for its workers";
    assert!(b.log().contains(wanted), "no {wanted:?} in:\n{}", b.log());
}

/// listen(3000) with baton holding two other ports: the worker fails, and
/// the message names both sockets; nothing binds 3000.
#[test]
fn node_preload_listen_on_a_port_baton_does_not_hold_fails_naming_the_sockets() {
    let (port, admin) = (port(), port());
    let config = pm2_config(port, "http.js", 1, false, "")
        + &format!("[[listen]]\nname = \"admin\"\naddress = \"127.0.0.1:{admin}\"\n");
    let mut b = Baton::spawn(port, &config);
    let status = b.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "baton should fail its first start: {status:?}\n{}",
        b.log()
    );
    let wanted = format!(
        "listen(3000) matches none of the sockets baton holds: fd 3 (http, 127.0.0.1:{port}), fd 4 (admin, 127.0.0.1:{admin})"
    );
    assert!(b.log().contains(&wanted), "no {wanted:?} in:\n{}", b.log());
    // The preload's line is "the error", and no hint advises turning on
    // the preload that is already on.
    let error = format!("the error: baton: {wanted}");
    assert!(b.log().contains(&error), "no {error:?} in:\n{}", b.log());
    assert!(!b.log().contains("set [node] inherit_listen"), "{}", b.log());
}

/// The user's NODE_OPTIONS (from [environment]) are kept, the preload's
/// --require appended.
#[test]
fn node_preload_keeps_the_users_node_options() {
    let port = port();
    let env = "[environment]\nNODE_OPTIONS = \"--max-old-space-size=96\"\n";
    let b = Baton::start(port, &pm2_config(port, "http.js", 1, false, env));
    let body = body(&b);
    assert!(
        body.contains("node_options --max-old-space-size=96 --require \""),
        "{body}"
    );
    let heap: u64 = body
        .split(" heap_mib ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        heap < 200,
        "the user's --max-old-space-size=96 was lost: heap limit {heap} MiB"
    );
}

/// An ecosystem file and an unchanged Express app: what `baton import-pm2`
/// writes runs straight away, and reloads without a failed request.
#[test]
fn node_preload_import_pm2_then_run_works_straight_away() {
    provision();
    let dir = tempfile::tempdir().unwrap();
    let eco = dir.path().join("ecosystem.config.js");
    std::fs::write(
        &eco,
        format!(
            "module.exports = {{ apps: [{{ name: 'web', script: {:?}, exec_mode: 'cluster', instances: 2, env: {{ PORT: 3000 }} }}] }};\n",
            app("express.js")
        ),
    )
    .unwrap();
    let port = port();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("import-pm2")
        .arg(&eco)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--systemd-version", "252"])
        .arg("--config-dir")
        .arg(dir.path().join("baton"))
        .arg("--unit-dir")
        .arg(dir.path().join("units"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("fd: 3"), "no code change is asked for: {stdout}");
    let config = std::fs::read_to_string(dir.path().join("baton/web.toml")).unwrap();
    assert!(config.contains("inherit_listen = true"), "{config}");
    let b = Baton::start(port, &config);
    assert!(body(&b).contains(&format!(" port {port}")));
    let load = Load::keep_alive(b.addr(), "/", 4);
    b.reload_times(3, Duration::from_millis(200));
    let stats = load.stop();
    say(&format!("import-pm2 + run, keep-alive, 3 reloads: {stats}"));
    stats.assert_served_through(50, 4);
}

/// `[stop] message = "shutdown"` (PM2's shutdown_with_message) starts the
/// drain too, in an app that never listens for messages: keep-alive load
/// across 5 reloads loses nothing, and the worker exits once drained.
#[test]
fn node_preload_keep_alive_drain_on_the_stop_message() {
    let port = port();
    let config = pm2_config(port, "http.js", 2, true, "").replace(
        "[stop]\nsignal = \"SIGINT\"\n",
        "[stop]\nsignal = \"SIGINT\"\nmessage = \"shutdown\"\n",
    );
    let b = Baton::start(port, &config);
    let load = Load::keep_alive(b.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));
    b.reload_times(5, Duration::from_millis(150));
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    say(&format!("stop message, keep-alive, 5 reloads: {stats}"));
    stats.assert_served_through(200, 6);
    let log = b.log();
    assert!(log.contains("baton: draining (message \"shutdown\")"), "{log}");
    assert!(log.contains("baton: drained; exiting"), "{log}");
}

/// `[node] wait_ready = true`: the app's own process.send('ready'), 1.5 s
/// after it listens, is what counts; the preload does not say it first.
#[test]
fn node_preload_wait_ready_leaves_ready_to_the_app() {
    let port = port();
    let config = pm2_config(port, "wait-ready.js", 1, false, "").replace(
        "[node]\ninherit_listen = true\n",
        "[node]\ninherit_listen = true\nwait_ready = true\n",
    );
    let b = Baton::spawn(port, &config);
    assert!(
        b.wait_log(Duration::from_secs(30), |l| l.contains("→ inherited fd 3")),
        "{}",
        b.log()
    );
    let listening = std::time::Instant::now();
    // It answers while not yet ready: the socket is baton's, the reload is not done.
    assert!(body(&b).contains(&format!(" port {port}")));
    assert!(b.wait_serving(1, Duration::from_secs(30)), "{}", b.log());
    let waited = listening.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "ready {waited:?} after listening: the preload said it, not the app"
    );
}

/// listen(PORT) and listen(SOCKET_PATH) in one worker: each maps onto its
/// own inherited fd, by port and by path.
#[test]
fn node_preload_maps_a_port_and_a_unix_path_each_onto_its_socket() {
    maps_a_port_and_a_unix_path(|port| port.to_string());
}

/// listen('0x4774'): a string that Number() makes a port is a port, as in
/// Node's own listen (net.js isPipeName), not a pipe path.
#[test]
fn node_preload_a_string_that_is_a_number_is_a_port() {
    maps_a_port_and_a_unix_path(|port| format!("{port:#x}"));
}

/// Runs tests/node/two.js with PORT = `shown(port)`.
fn maps_a_port_and_a_unix_path(shown: impl Fn(u16) -> String) {
    provision();
    let port = port();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    // With two sockets, listen() must name one: PORT is baton's port, as
    // an ecosystem file's env.PORT is.
    let env = format!(
        "[environment]\nPORT = \"{}\"\nSOCKET_PATH = {:?}\n",
        shown(port),
        sock.display().to_string()
    );
    let config = pm2_config(port, "two.js", 1, false, &env)
        + &format!(
            "[[listen]]\nname = \"unix\"\naddress = {:?}\n",
            sock.display().to_string()
        );
    let b = Baton::start(port, &config);
    assert!(body(&b).contains("server tcp"));
    let log = b.log();
    let by_port = format!(
        "baton: listen({}) → inherited fd 3 (http, 127.0.0.1:{port})",
        shown(port)
    );
    let by_path = format!(
        "baton: listen({:?}) → inherited fd 4 (unix, {})",
        sock.display().to_string(),
        sock.display()
    );
    assert!(log.contains(&by_port) && log.contains(&by_path), "{log}");
    use std::io::{Read, Write};
    let mut unix = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    unix.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    unix.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("server unix"), "{answer}");
}
