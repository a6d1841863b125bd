//! Real web servers under baton (README "Frameworks"): the CI subset of the
//! framework table, with the fixtures in `tests/frameworks/<server>/`.
//!
//! Each server gets the same test ([`eight_reloads_and_a_broken_release`]):
//!
//! - it starts with its own readiness hook (sd_notify, a `log` pattern, or
//!   the Node preload's 'ready');
//! - the worker serves **baton's** socket: the process that answers holds
//!   baton's listening socket, and no process of any worker's tree holds a
//!   listening TCP socket of its own (so the server's default port, 8000,
//!   3000 or 80, stays closed);
//! - 8 reloads under load with a new connection per request: 0 failed;
//! - a broken release (`BROKEN_RELEASE=1`: the app cannot load): `baton
//!   reload` exits 1, the old generation keeps serving, 0 failed.
//!
//! Python servers run from venvs under `target/` made from the fixture's
//! pinned `requirements.txt`; Node servers from `tests/frameworks/node`'s
//! `package-lock.json` (`npm ci`); lighttpd is Debian's package. Under
//! `CI=true` a missing server is a failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::baton::{
    Baton, config_text, fd_targets, port, process_tree, provision_npm, run_setup, target_dir, with_file_lock,
};
use crate::common::load::Load;
use crate::common::{http_get, say, skip};

const RELOADS: usize = 8;

fn fixture(server: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/frameworks")
        .join(server)
}

/// `target/frameworks-<server>-venv` with the fixture's requirements.txt.
fn provision_venv(server: &str) -> PathBuf {
    crate::common::baton::provision_venv(
        &format!("frameworks-{server}-venv"),
        &fixture(server).join("requirements.txt"),
        "tests/it/frameworks.rs",
    )
}

/// `path`, as a TOML string.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Inodes (`socket:[N]`) of the listening TCP sockets (IPv4 and IPv6), with
/// their ports.
fn listening_tcp() -> Vec<(u16, String)> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let (_, port) = f.get(1)?.rsplit_once(':')?;
                    (*f.get(3)? == "0A")
                        .then(|| Some((u16::from_str_radix(port, 16).ok()?, format!("socket:[{}]", f.get(9)?))))?
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The listening TCP sockets `pid` holds.
fn listening_held(pid: i32, listening: &BTreeSet<String>) -> BTreeSet<String> {
    fd_targets(pid)
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| listening.contains(t))
        .collect()
}

/// The worker serves baton's socket, not one of its own: the process that
/// answers `GET /` (its pid is in the body) holds baton's listening socket,
/// and no process in any worker's tree holds another listening TCP socket.
fn assert_serves_batons_socket(server: &str, baton: &Baton, generation: u64) {
    let listening = listening_tcp();
    let batons: BTreeSet<String> = listening
        .iter()
        .filter(|(p, _)| *p == baton.port)
        .map(|(_, inode)| inode.clone())
        .collect();
    assert_eq!(
        batons.len(),
        1,
        "listening sockets on port {}: {listening:?}",
        baton.port
    );
    let all: BTreeSet<String> = listening.iter().map(|(_, inode)| inode.clone()).collect();
    assert_eq!(
        listening_held(baton.pid(), &all),
        batons,
        "baton's own listening sockets"
    );
    let workers = baton.worker_pids(generation);
    assert!(!workers.is_empty(), "{:#}", baton.status());
    let procs: Vec<i32> = workers.iter().flat_map(|&w| process_tree(w)).collect();
    for &pid in &procs {
        let held = listening_held(pid, &all);
        assert!(
            held.is_subset(&batons),
            "{server}: pid {pid} (a worker's tree: {procs:?}) listens on a socket of its own: {held:?}, \
             baton's is {batons:?}; listening: {listening:?}"
        );
    }
    let (status, body) = http_get(baton.addr(), "/", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{server}: GET / failed: {e}\n{}", baton.log()));
    assert_eq!(status, 200, "{body}");
    let pid: i32 = body
        .split(" pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{server}: no pid in {body:?}"));
    assert!(
        procs.contains(&pid),
        "{server}: {pid} answered, not a worker's process: {procs:?}"
    );
    assert_eq!(
        listening_held(pid, &all),
        batons,
        "{server}: the answering process {pid} does not hold baton's socket"
    );
}

/// The test every server gets (see the module doc). `config` is a
/// baton.toml minus `[[listen]]`, with `{BROKEN}` where the broken release
/// adds `BROKEN_RELEASE = "1"` to `[environment]`.
fn eight_reloads_and_a_broken_release(server: &str, command: &[&str], dir: &Path, workers: usize, extra: &str) {
    let port = port();
    let config = |broken: &str| {
        // `directory` goes before the first table.
        config_text(port, command, workers, &extra.replace("{BROKEN}", broken)).replacen(
            "\n\n[[listen]]",
            &format!("\ndirectory = {}\n\n[[listen]]", toml_path(dir)),
            1,
        )
    };
    let good = config("");
    let broken = config("BROKEN_RELEASE = \"1\"\n");
    let baton = Baton::start(port, &good);
    assert_serves_batons_socket(server, &baton, 1);

    let load = Load::start(baton.addr(), "/", 4);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    baton.reload_times(RELOADS, Duration::from_millis(200));
    let reloads_took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let after_reloads = load.snapshot();
    assert_serves_batons_socket(server, &baton, RELOADS as u64 + 1);

    baton.write_config(&broken);
    let out = baton.reload();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{server}: the broken release's reload: {}\n{}",
        crate::common::text(&out),
        baton.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    let status = baton.status();
    say(&format!(
        "{server}: {RELOADS} reloads of {workers} workers in {:.1}s, connection per request: {after_reloads}; \
         with the broken release: {stats}",
        reloads_took.as_secs_f64()
    ));
    stats.assert_served_through(100, RELOADS as u64 + 1);
    assert_eq!(
        status["supervisor"]["serving"].as_u64(),
        Some(RELOADS as u64 + 1),
        "{status:#}"
    );
    assert_eq!(status["supervisor"]["last_reload"]["ok"], false, "{status:#}");
    assert!(
        !stats.generations_seen.contains(&(RELOADS + 2).to_string()),
        "the broken release served: {stats}"
    );
}

#[test]
fn uvicorn_through_a_sockets_launcher() {
    let venv = provision_venv("uvicorn");
    let dir = fixture("uvicorn");
    eight_reloads_and_a_broken_release(
        "uvicorn",
        &[&venv.join("bin/python").display().to_string(), "serve.py"],
        &dir,
        2,
        "[environment]\nPYTHONUNBUFFERED = \"1\"\n{BROKEN}\n[readiness]\nmode = \"log\"\n\
         pattern = \"serving on baton.s socket\"\ntimeout = \"30s\"\n\n[stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
    );
}

#[test]
fn gunicorn_socket_activation_and_sd_notify() {
    let venv = provision_venv("gunicorn");
    eight_reloads_and_a_broken_release(
        "gunicorn",
        &[
            &venv.join("bin/gunicorn").display().to_string(),
            "--config",
            "gunicorn.conf.py",
            "app:app",
        ],
        &fixture("gunicorn"),
        2,
        "[environment]\n{BROKEN}\n[readiness]\nmode = \"notify\"\ntimeout = \"30s\"\n\n\
         [stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
    );
}

/// `tests/frameworks/node` with its node_modules (`npm ci`).
fn provision_node() -> PathBuf {
    let out = Command::new("node").arg("--version").output();
    assert!(
        matches!(&out, Ok(o) if o.status.success()),
        "node is required for tests/it/frameworks.rs ({out:?}); install Node.js 18.2 or later"
    );
    provision_npm(&fixture("node"), "frameworks-node")
}

/// A Node server as written for PM2, through baton's preload and its drain.
fn node_server(server: &str, script: &str) {
    let dir = provision_node();
    eight_reloads_and_a_broken_release(
        server,
        &["node", script],
        &dir,
        2,
        "[environment]\n{BROKEN}\n[node]\ninherit_listen = true\ndrain = true\n\n\
         [stop]\nsignal = \"SIGINT\"\ntimeout = \"30s\"\n",
    );
}

#[test]
fn express_through_the_preload() {
    node_server("express", "express.js");
}

#[test]
fn fastify_through_the_preload() {
    node_server("fastify", "fastify.js");
}

#[test]
fn lighttpd_socket_activation_and_a_log_pattern() {
    let found = Command::new("lighttpd").arg("-v").output();
    if !matches!(&found, Ok(o) if o.status.success()) {
        skip(&format!(
            "lighttpd is not installed ({found:?}); Debian: apt-get install lighttpd"
        ));
        return;
    }
    // Each worker's document root (see run.sh).
    let tmp = tempfile::tempdir().unwrap();
    eight_reloads_and_a_broken_release(
        "lighttpd",
        &["./run.sh"],
        &fixture("lighttpd"),
        2,
        &format!(
            "[environment]\nFIXTURE_TMP = {}\n{{BROKEN}}\n[readiness]\nmode = \"log\"\npattern = \"server started\"\n\
             timeout = \"30s\"\n\n[stop]\nsignal = \"SIGINT\"\ntimeout = \"30s\"\n",
            toml_path(tmp.path())
        ),
    );
}

// Beyond the CI subset: the rows of README's table verified by hand, with
// `cargo test --test it frameworks:: -- --ignored` (PyPI, and Debian's
// uwsgi-core, uwsgi-plugin-python3, puma, ruby-sd-notify, unicorn, golang-go
// and golang-github-coreos-go-systemd-dev).

#[test]
#[ignore = "by hand: README's Frameworks table (PyPI)"]
fn hypercorn_by_hand() {
    let venv = provision_venv("hypercorn");
    eight_reloads_and_a_broken_release(
        "hypercorn",
        &[&venv.join("bin/python").display().to_string(), "serve.py"],
        &fixture("hypercorn"),
        2,
        &format!(
            "[environment]\nPYTHONPATH = {}\n{{BROKEN}}\n[readiness]\nmode = \"log\"\npattern = \"Running on http://\"\n\
             timeout = \"30s\"\n\n[stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
            toml_path(&fixture("uvicorn"))
        ),
    );
}

#[test]
#[ignore = "by hand: README's Frameworks table (PyPI)"]
fn waitress_by_hand() {
    let venv = provision_venv("waitress");
    eight_reloads_and_a_broken_release(
        "waitress",
        &[&venv.join("bin/python").display().to_string(), "serve.py"],
        &fixture("waitress"),
        2,
        &format!(
            "[environment]\nPYTHONPATH = {}\nPYTHONUNBUFFERED = \"1\"\n{{BROKEN}}\n[readiness]\nmode = \"log\"\n\
             pattern = \"Serving on http://\"\ntimeout = \"30s\"\n\n[stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
            toml_path(&fixture("gunicorn"))
        ),
    );
}

#[test]
#[ignore = "by hand: README's Frameworks table (Debian: uwsgi-core, uwsgi-plugin-python3)"]
fn uwsgi_by_hand() {
    eight_reloads_and_a_broken_release(
        "uwsgi",
        &["uwsgi", "--ini", "uwsgi.ini"],
        &fixture("uwsgi"),
        2,
        "[environment]\n{BROKEN}\n[readiness]\nmode = \"notify\"\ntimeout = \"30s\"\n\n\
         [stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
    );
}

#[test]
#[ignore = "by hand: README's Frameworks table (Debian: unicorn)"]
fn unicorn_by_hand() {
    eight_reloads_and_a_broken_release(
        "unicorn",
        &["unicorn", "-c", "unicorn.conf.rb", "config.ru"],
        &fixture("unicorn"),
        2,
        "[environment]\n{BROKEN}\n[readiness]\nmode = \"log\"\npattern = \"master process ready\"\ntimeout = \"30s\"\n\n\
         [stop]\nsignal = \"SIGQUIT\"\ntimeout = \"30s\"\n",
    );
}

#[test]
#[ignore = "by hand: README's Frameworks table (Debian: puma, ruby-sd-notify)"]
fn puma_by_hand() {
    eight_reloads_and_a_broken_release(
        "puma",
        &["puma", "-C", "puma.rb"],
        &fixture("puma"),
        2,
        "[environment]\n{BROKEN}\n[readiness]\nmode = \"notify\"\ntimeout = \"30s\"\n\n\
         [stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
    );
}

#[test]
#[ignore = "by hand: README's Frameworks table (PyPI)"]
fn daphne_by_hand() {
    let venv = provision_venv("daphne");
    eight_reloads_and_a_broken_release(
        "daphne",
        &[&venv.join("bin/python").display().to_string(), "serve.py"],
        &fixture("daphne"),
        2,
        &format!(
            "[environment]\nPYTHONPATH = {}\n{{BROKEN}}\n[readiness]\nmode = \"log\"\n\
             pattern = \"serving on baton.s socket\"\ntimeout = \"30s\"\n\n[stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
            toml_path(&fixture("uvicorn"))
        ),
    );
}

#[test]
#[ignore = "by hand: README's Frameworks table (PyPI)"]
fn twisted_by_hand() {
    let venv = provision_venv("twisted");
    eight_reloads_and_a_broken_release(
        "twisted",
        &[&venv.join("bin/python").display().to_string(), "serve.py"],
        &fixture("twisted"),
        2,
        &format!(
            "[environment]\nPYTHONPATH = {}\n{{BROKEN}}\n[readiness]\nmode = \"log\"\n\
             pattern = \"serving on baton.s socket\"\ntimeout = \"30s\"\n\n[stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
            toml_path(&fixture("gunicorn"))
        ),
    );
}

/// `target/frameworks-go/server`, built offline from tests/frameworks/go
/// against Debian's go-systemd (GOPATH mode: no module proxy).
fn build_go() -> PathBuf {
    let gocode = Path::new("/usr/share/gocode/src/github.com/coreos/go-systemd/activation");
    let go = Command::new("go").arg("version").output();
    assert!(
        matches!(&go, Ok(o) if o.status.success()) && gocode.exists(),
        "Go and go-systemd are required ({go:?}); Debian: apt-get install golang-go golang-github-coreos-go-systemd-dev"
    );
    let out = target_dir().join("frameworks-go");
    let server = out.join("server");
    with_file_lock(&target_dir().join("frameworks-go.lock"), || {
        run_setup(
            "go build",
            Command::new("go")
                .args(["build", "-o"])
                .arg(&server)
                .arg(".")
                .current_dir(fixture("go"))
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", out.join("cache"))
                .env("GOFLAGS", "")
                .env("GOPROXY", "off"),
        );
    });
    server
}

#[test]
#[ignore = "by hand: README's Frameworks table (Debian: golang-go, golang-github-coreos-go-systemd-dev)"]
fn go_systemd_by_hand() {
    let server = build_go();
    eight_reloads_and_a_broken_release(
        "go",
        &[&server.display().to_string()],
        &fixture("go"),
        2,
        "[environment]\n{BROKEN}\n[readiness]\nmode = \"notify\"\ntimeout = \"30s\"\n\n\
         [stop]\nsignal = \"SIGTERM\"\ntimeout = \"30s\"\n",
    );
}
