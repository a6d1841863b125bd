//! System tests: a real systemd, booted in a container by the test itself
//! ([`container`]), runs the units that `baton init` writes, driven with
//! `systemctl` and `journalctl` the way a user would. Requests come from the
//! host, through the shared network, with the load client that counts every
//! failed request.
//!
//! Each test runs its whole scenario list on each [`container::System`] in
//! turn: Debian 12 (systemd 252, the host) first, then Debian 13 (systemd
//! 257, a cached mmdebstrap root), each in a container of its own. The
//! scenario functions are the same for both; every scenario line, summary
//! line and failure names the system ("Debian 13 (systemd 257): scenario
//! 2 ..."), and a per-system table gives boot, boot + scenarios and total
//! time, i.e. what each system adds to the run.
//!
//! On each system one container is booted and the scenarios run in sequence on it (they
//! build on each other: scenario 3 reads the journal of the generation 2
//! that scenario 2's reloads made). Each prints its result and figures; a
//! failing scenario doesn't stop the others, and the test fails at the end
//! with every failure, each with `systemctl status`, the unit's journal and
//! `baton status`.
//!
//! 1. `systemctl enable --now myapp.socket`: the first request starts the service.
//! 2. `systemctl reload myapp` 6 times under load: 0 failed requests, and each
//!    reload returns only once the new generation serves.
//! 3. `journalctl -u myapp BATON_GENERATION=2`: generation 2's worker lines,
//!    with SYSLOG_PID, BATON_WORKER, BATON_STREAM, PRIORITY, `<N>` prefixes.
//! 4. A broken release: the reload fails, StatusText says why, the old
//!    generation keeps serving.
//! 5. `kill -STOP` on baton: systemd's watchdog restarts the service, and
//!    requests wait in the socket's queue meanwhile.
//! 6. A worker that stops heartbeating is replaced.
//! 7. `systemctl stop` lets an in-flight slow request finish and leaves the
//!    unit's cgroup empty.
//!
//! Scenarios 10-12 are about the process tree (README, "Under systemd"), each
//! with an app of its own:
//!
//! 10. Under `Delegate=yes`, `baton status` says "cgroup", baton runs in
//!     `<unit>/supervisor` and each worker, with what it forks, in a cgroup of
//!     its own.
//! 11. Workers that leave a `setsid` daemon holding the listening socket:
//!     after 3 reloads only the serving generation's processes are left, and
//!     `systemctl stop` finds nothing for systemd to kill.
//! 12. `[limits] memory` counts what a worker forked into a session of its own.
//!
//! The second test, `the_sandboxed_unit_runs_every_example_app`, runs the
//! locked-down unit of `baton init` with the Rust hello, Node/Express and
//! Python/gunicorn examples on both systems; the apps (node_modules, the
//! gunicorn wheels) are provisioned once on the host and copied in, node
//! and python3 are each system's own.
//!
//! Skipped (loudly) only when not root, when systemd-nspawn is missing and
//! cannot be installed, or (Debian 13 only) when its root is not cached and
//! cannot be built (no mmdebstrap, mirror unreachable); under `CI=true`
//! each is a failure that names the system.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

// The helpers of tests/it, shared by path: this suite is a binary of its
// own (tests/it/main.rs says why) and uses only part of them; the `it`
// binary uses all of them, and is where an unused one is caught.
#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;
// Shared with the other container suite; each uses part of it.
#[allow(dead_code)]
#[path = "container/mod.rs"]
mod container;

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::load::Load;
use common::{GetError, baton_bin, example_bin, free_port, get, say, wait_until};
use container::{Container, describe, stdout};
use serde_json::Value;

const APP: &str = "myapp";
const SERVICE: &str = "myapp.service";
const CONFIG: &str = "/etc/baton/myapp.toml";
const DROP_IN: &str = "/etc/systemd/system/myapp.service.d/override.conf";
const WORKERS: u64 = 2;
const RELOADS: u64 = 6;
const LOAD_THREADS: usize = 4;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn systemd_runs_baton_units_in_a_container() {
    container::on_each_system("system tests", units_on);
}

/// The scenarios of this suite on one system, in a container of their own.
fn units_on(system: container::System) -> Option<container::Run> {
    let started = Instant::now();
    let container = Container::boot(system)?;
    let label = container.label();
    say(&format!(
        "system tests: {label}: container {} booted in {:.2}s (systemd pid {} on the host)",
        container.name(),
        container.boot_time.as_secs_f64(),
        container.init_pid()
    ));
    let boot_time = container.boot_time;
    let baton = baton_bin();
    let hello = example_bin("hello");
    let baton = container.install_host_file(&baton);
    let hello = container.install_host_file(&hello);

    let system = System {
        c: container,
        baton,
        hello,
        port: free_port(),
        gen2_pids: Mutex::new(Vec::new()),
    };
    let scenarios: [(&str, Scenario); 15] = [
        (
            "1 socket activation: the first request starts the service",
            socket_activation,
        ),
        ("2 systemctl reload x6 under load", reloads_under_load),
        (
            "3 journald: one entry per worker line, per generation",
            journal_per_generation,
        ),
        (
            "4 a broken release: the reload fails, the old generation serves",
            broken_release,
        ),
        (
            "5 kill -STOP baton: systemd's watchdog restarts it",
            supervisor_watchdog,
        ),
        ("6 a worker that stops heartbeating is replaced", worker_watchdog),
        (
            "7 systemctl stop: the slow request completes, the cgroup empties",
            stop_drains,
        ),
        (
            "8 journald: a burst of lines and a 200 KB line lose nothing",
            journal_burst,
        ),
        (
            "9 EXTEND_TIMEOUT_USEC: a start slower than TimeoutStartSec succeeds",
            extend_timeout,
        ),
        (
            "10 Delegate=yes: a cgroup per worker, baton in supervisor/",
            cgroup_per_worker,
        ),
        (
            "11 setsid daemons left by workers die with their generation",
            daemons_die_with_their_generation,
        ),
        (
            "12 [limits] memory counts a worker's whole cgroup",
            memory_limit_counts_the_cgroup,
        ),
        (
            "13 history survives systemctl restart; baton rollback re-points current",
            history_and_rollback,
        ),
        (
            "14 baton upgrade: the new binary in place, same MainPID and workers",
            upgrade_in_place,
        ),
        (
            "15 reload records: one journal entry per event, explained by journalctl -x",
            reload_records,
        ),
    ];
    let mut results: Vec<(&str, Duration, Result<String, String>)> = Vec::new();
    for (i, (name, scenario)) in scenarios.iter().enumerate() {
        if i > 0 && results[0].2.is_err() {
            results.push((
                name,
                Duration::ZERO,
                Err("not run: scenario 1 set up the app".to_owned()),
            ));
            continue;
        }
        say(&format!("\n=== {label}: scenario {name}"));
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| scenario(&system)));
        let took = t.elapsed();
        // The sandbox test runs alongside: its lines interleave with these.
        let id = name.split(' ').next().unwrap_or(name);
        let outcome = match outcome {
            Ok(figures) => {
                say(&format!(
                    "--- {label}: scenario {id} ok ({:.1}s): {figures}",
                    took.as_secs_f64()
                ));
                Ok(figures)
            }
            Err(panic) => {
                let message = container::panic_message(panic.as_ref());
                let report = format!("{message}\n{}", system.diagnostics());
                say(&format!(
                    "--- {label}: scenario {id} FAILED ({:.1}s): {message}\n(systemctl status, journal and baton status are in the failure report)",
                    took.as_secs_f64()
                ));
                Err(report)
            }
        };
        results.push((name, took, outcome));
    }
    let scenarios_took = started.elapsed();
    let t = Instant::now();
    drop(system);
    let teardown = t.elapsed();

    say(&format!("\n=== system tests on {label}: summary"));
    for (name, took, outcome) in &results {
        let verdict = if outcome.is_ok() { "ok    " } else { "FAILED" };
        say(&format!(
            "{label}: {verdict} {:>5.1}s  scenario {name}",
            took.as_secs_f64()
        ));
    }
    say(&format!(
        "{label}: boot {:.2}s · boot + scenarios {:.1}s · teardown {:.1}s · total {:.1}s",
        boot_time.as_secs_f64(),
        scenarios_took.as_secs_f64(),
        teardown.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    Some(container::Run {
        label,
        boot: boot_time,
        scenarios: scenarios_took.saturating_sub(boot_time),
        total: started.elapsed(),
        ran: results.len(),
        failures: results
            .iter()
            .filter_map(|(name, _, outcome)| outcome.as_ref().err().map(|e| format!("scenario {name}: {e}")))
            .collect(),
    })
}

/// A scenario returns its figures, or panics.
type Scenario = fn(&System) -> String;

/// One request's outcome and how long it took.
type Timed = (Result<(u16, String), GetError>, Duration);

/// The booted container and what the scenarios share.
struct System {
    c: Container,
    baton: String,
    hello: String,
    port: u16,
    /// Generation 2's worker pids, seen by scenario 2 right after the reload
    /// that made it, for scenario 3.
    gen2_pids: Mutex<Vec<i64>>,
}

impl System {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `baton ARGS` inside the container.
    fn baton(&self, args: &[&str]) -> std::process::Output {
        let mut argv = vec![self.baton.as_str()];
        argv.extend_from_slice(args);
        self.c.exec(&argv, COMMAND_TIMEOUT)
    }

    /// `systemctl ARGS`, which must succeed.
    fn systemctl_ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.c.systemctl(args);
        assert!(out.status.success(), "systemctl {}: {}", args.join(" "), describe(&out));
        out
    }

    /// `baton status NAME --json`, if it answers.
    fn status_of(&self, name: &str) -> Option<Value> {
        let out = self.baton(&["status", name, "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn status(&self) -> Value {
        let out = self.baton(&["status", APP, "--json"]);
        assert!(out.status.success(), "baton status {APP} --json: {}", describe(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("baton status JSON: {e}: {}", stdout(&out)))
    }

    /// Waits until a generation serves with every worker ready.
    fn wait_serving(&self, timeout: Duration) -> Value {
        let mut last = None;
        let ok = wait_until(timeout, || {
            last = self.status_of(APP);
            last.as_ref()
                .and_then(serving)
                .is_some_and(|(_, ready, slots)| ready == slots)
        });
        assert!(
            ok,
            "no generation of {APP} serving with all workers ready within {timeout:?}; last status: {last:?}"
        );
        last.unwrap()
    }

    fn main_pid(&self) -> i64 {
        self.c.show(SERVICE, "MainPID").parse().unwrap_or(0)
    }

    fn is_active(&self, unit: &str) -> String {
        stdout(&self.c.systemctl(&["is-active", unit])).trim().to_owned()
    }

    /// Rewrites /etc/baton/NAME.toml inside (through the overlay).
    fn edit_config(&self, path: &str, edit: impl FnOnce(&mut toml_edit::DocumentMut)) {
        let mut doc: toml_edit::DocumentMut = self.c.read_file(path).parse().expect("the config is TOML");
        edit(&mut doc);
        self.c.write_file(path, &doc.to_string());
    }

    /// `journalctl ARGS -o json`, one value per entry.
    fn journal(&self, args: &[&str]) -> Vec<Value> {
        let _ = self.c.journalctl(&["--sync"]);
        let mut argv = args.to_vec();
        argv.extend_from_slice(&["-o", "json"]);
        let out = self.c.journalctl(&argv);
        stdout(&out)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What a failure report carries: the units' status, their journal and
    /// baton's own view.
    fn diagnostics(&self) -> String {
        let status = self
            .c
            .systemctl(&["status", SERVICE, "myapp.socket", "--no-pager", "-l", "-n", "0"]);
        let journal = self.c.journalctl(&["-u", APP, "-n", "50"]);
        let baton = self.baton(&["status", APP]);
        format!(
            "--- systemctl status {SERVICE} myapp.socket:\n{}{}\n--- journalctl -u {APP} -n 50:\n{}\n--- baton status {APP}: {}\n{}{}",
            stdout(&status),
            String::from_utf8_lossy(&status.stderr),
            stdout(&journal),
            baton.status,
            stdout(&baton),
            String::from_utf8_lossy(&baton.stderr),
        )
    }
}

/// (serving generation, its ready workers, its slots).
fn serving(status: &Value) -> Option<(u64, u64, u64)> {
    let sup = &status["supervisor"];
    let id = sup["serving"].as_u64()?;
    let g = generation(status, id)?;
    Some((id, g["ready"].as_u64()?, g["slots"].as_u64()?))
}

fn generation(status: &Value, id: u64) -> Option<&Value> {
    status["supervisor"]["generations"]
        .as_array()?
        .iter()
        .find(|g| g["id"].as_u64() == Some(id))
}

/// (slot, pid, restarts) of a generation's workers.
fn workers(status: &Value, id: u64) -> Vec<(u64, i64, u64)> {
    generation(status, id)
        .and_then(|g| g["workers"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|w| {
            Some((
                w["slot"].as_u64()?,
                w["pid"].as_i64()?,
                w["restarts"].as_u64().unwrap_or(0),
            ))
        })
        .collect()
}

fn pids(status: &Value, id: u64) -> Vec<i64> {
    workers(status, id).into_iter().map(|(_, pid, _)| pid).collect()
}

/// A journal field as text (journald gives binary values as byte arrays).
fn field(entry: &Value, name: &str) -> Option<String> {
    match &entry[name] {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.iter().all(Value::is_u64) => Some(
            String::from_utf8_lossy(
                &items
                    .iter()
                    .filter_map(|b| b.as_u64().map(|b| b as u8))
                    .collect::<Vec<_>>(),
            )
            .into_owned(),
        ),
        Value::Array(items) => items.first().and_then(|v| v.as_str().map(str::to_owned)),
        _ => None,
    }
}

/// `__REALTIME_TIMESTAMP` (µs since the epoch), 0 if missing.
fn realtime(entry: &Value) -> u64 {
    field(entry, "__REALTIME_TIMESTAMP")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

// ---------------------------------------------------------------------------
// The sandboxed unit that `baton init` writes, with every example app.
//
// A container of its own, so these scenarios share nothing with the ones
// above. Each app is deployed the way the README says: under /srv (the
// sandbox makes /home and /root read-only, and the app's own user could not
// read them anyway), with `baton init` and no --user, so it runs as a system
// user named like the app.

/// Reloads under load per app.
const SANDBOX_RELOADS: u64 = 5;

/// One example app, deployed inside the container.
struct ExampleApp {
    name: &'static str,
    directory: &'static str,
    command: Vec<String>,
    /// TOML edits after `baton init` (readiness mode, environment...).
    edit: fn(&mut toml_edit::DocumentMut),
}

/// The sandbox test's container and binaries.
struct Sandbox {
    c: Container,
    baton: String,
    hello: String,
}

impl Sandbox {
    fn baton(&self, args: &[&str]) -> std::process::Output {
        let mut argv = vec![self.baton.as_str()];
        argv.extend_from_slice(args);
        self.c.exec(&argv, COMMAND_TIMEOUT)
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.c.sh(script);
        assert!(out.status.success(), "sh -c {script:?}: {}", describe(&out));
        stdout(&out)
    }

    fn status_of(&self, name: &str) -> Option<Value> {
        let out = self.baton(&["status", name, "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn edit_config(&self, path: &str, edit: impl FnOnce(&mut toml_edit::DocumentMut)) {
        let mut doc: toml_edit::DocumentMut = self.c.read_file(path).parse().expect("the config is TOML");
        edit(&mut doc);
        self.c.write_file(path, &doc.to_string());
    }

    fn diagnostics(&self, name: &str) -> String {
        let status = self
            .c
            .systemctl(&["status", &format!("{name}.service"), "--no-pager", "-l", "-n", "0"]);
        let journal = self.c.journalctl(&["-u", name, "-n", "60"]);
        format!(
            "--- systemctl status {name}:\n{}\n--- journalctl -u {name} -n 60:\n{}",
            stdout(&status),
            stdout(&journal)
        )
    }
}

/// Wheels for examples/python/requirements.txt, downloaded once into
/// target/system-wheels with the system's python3 (what the container has),
/// so that the container's venv installs offline.
fn provision_wheels() -> std::path::PathBuf {
    use common::baton::{run_setup, target_dir, with_file_lock};
    let requirements = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let wheels = target_dir().join("system-wheels");
    let marker = wheels.join(".downloaded-from-requirements.txt");
    with_file_lock(&target_dir().join("system-wheels.lock"), || {
        if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
            return;
        }
        let _ = std::fs::remove_dir_all(&wheels);
        let pip_venv = wheels.join(".pip");
        run_setup(
            "/usr/bin/python3 -m venv (python3-venv)",
            std::process::Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&pip_venv),
        );
        run_setup(
            "pip download -r examples/python/requirements.txt",
            std::process::Command::new(pip_venv.join("bin/pip"))
                .args(["download", "--disable-pip-version-check", "--quiet", "-d"])
                .arg(&wheels)
                .arg("-r")
                .arg(&requirements),
        );
        std::fs::write(&marker, &wanted).unwrap();
    });
    wheels
}

/// Copies a host directory into the container (through the overlay).
fn copy_into(c: &Container, host: &std::path::Path, inside: &str) {
    let target = c.host_path(inside);
    std::fs::create_dir_all(&target).unwrap();
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", host.display()))
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        host.display(),
        target.display(),
        describe(&out)
    );
}

#[test]
fn the_sandboxed_unit_runs_every_example_app() {
    // Before the host-side provisioning, which would fail first (as another
    // user, on target/) and hide the real reason.
    if !container::can_boot() {
        return;
    }
    let node = common::baton::provision_node_modules();
    let wheels = provision_wheels();
    container::on_each_system("sandbox tests", |system| sandbox_on(system, &node, &wheels));
}

/// The sandbox scenarios on one system, in a container of their own. The
/// apps are copied in (not seen through the overlay), so the same copies
/// serve Debian 12 and 13; node and python3 are each system's own.
fn sandbox_on(system: container::System, node: &std::path::Path, wheels: &std::path::Path) -> Option<container::Run> {
    let started = Instant::now();
    let c = Container::boot(system)?;
    let label = c.label();
    let boot = c.boot_time;
    say(&format!(
        "sandbox tests: {label}: container {} booted in {:.2}s",
        c.name(),
        boot.as_secs_f64()
    ));
    let baton = c.install_host_file(&baton_bin());
    let hello = c.install_host_file(&example_bin("hello"));

    // The apps, deployed as root-owned, world-readable files under /srv.
    copy_into(&c, node, "/srv/nodeapp");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python");
    copy_into(&c, &examples, "/srv/pyapp");
    copy_into(&c, wheels, "/srv/wheels");
    let venv = c.exec(
        &[
            "sh",
            "-c",
            "rm -rf /srv/pyapp/.venv && /usr/bin/python3 -m venv /srv/pyapp/.venv && \
             /srv/pyapp/.venv/bin/pip install --disable-pip-version-check --quiet --no-index \
             --find-links /srv/wheels -r /srv/pyapp/requirements.txt",
        ],
        Duration::from_secs(300),
    );
    assert!(
        venv.status.success(),
        "{label}: the venv in the container: {}",
        describe(&venv)
    );

    let s = Sandbox { c, baton, hello };
    let apps = [
        ExampleApp {
            name: "hello",
            directory: "/opt/baton-systest",
            command: vec![s.hello.clone()],
            edit: |_| {},
        },
        ExampleApp {
            name: "express",
            directory: "/srv/nodeapp",
            command: vec!["node".into(), "server.js".into()],
            edit: |doc| {
                doc["environment"]["NODE_ENV"] = toml_edit::value("production");
                doc["readiness"]["mode"] = toml_edit::value("node-ipc");
                doc["stop"]["message"] = toml_edit::value("shutdown");
            },
        },
        ExampleApp {
            name: "gunicorn",
            directory: "/srv/pyapp",
            command: [
                "/srv/pyapp/.venv/bin/gunicorn",
                "--config",
                "gunicorn.conf.py",
                "app:app",
            ]
            .map(str::to_owned)
            .to_vec(),
            edit: |doc| {
                doc["environment"]["GUNICORN_WORKERS"] = toml_edit::value("2");
                doc["environment"]["PYTHONUNBUFFERED"] = toml_edit::value("1");
            },
        },
    ];
    let mut results: Vec<(String, Result<String, String>)> = Vec::new();
    let mut run = |name: String, f: &dyn Fn() -> String, diagnose: &dyn Fn() -> String| {
        say(&format!("\n=== {label}: sandbox scenario {name}"));
        let t = Instant::now();
        // The system test runs alongside: its lines interleave with these.
        let id = name.split([' ', ':']).next().unwrap_or_default().to_owned();
        let outcome = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(figures) => {
                say(&format!(
                    "--- {label}: sandbox {id} ok ({:.1}s): {figures}",
                    t.elapsed().as_secs_f64()
                ));
                Ok(figures)
            }
            Err(panic) => {
                let message = container::panic_message(panic.as_ref());
                say(&format!(
                    "--- {label}: sandbox {id} FAILED ({:.1}s): {message}",
                    t.elapsed().as_secs_f64()
                ));
                Err(format!("{message}\n{}", diagnose()))
            }
        };
        results.push((name, outcome));
    };
    run(
        "exposure: systemd-analyze security --offline=yes on what `baton init` writes".into(),
        &|| exposure_of_the_default_unit(&s),
        &|| String::new(),
    );
    for app in &apps {
        run(
            format!(
                "{}: as its own user, socket activation, {SANDBOX_RELOADS} reloads under load, stop",
                app.name
            ),
            &|| app_in_the_sandbox(&s, app),
            &|| s.diagnostics(app.name),
        );
    }
    run(
        "baton init --config-dir: the unit reads the config there".into(),
        &|| config_dir_elsewhere(&s),
        &|| s.diagnostics("elsewhere"),
    );
    let scenarios = started.elapsed().saturating_sub(boot);
    drop(s);
    say(&format!("\n=== sandbox tests on {label}: summary"));
    for (name, outcome) in &results {
        say(&format!(
            "{label}: {} {name}",
            if outcome.is_ok() { "ok    " } else { "FAILED" }
        ));
    }
    Some(container::Run {
        label,
        boot,
        scenarios,
        total: started.elapsed(),
        ran: results.len(),
        failures: results
            .iter()
            .filter_map(|(name, outcome)| outcome.as_ref().err().map(|e| format!("{name}: {e}")))
            .collect(),
    })
}

/// `Overall exposure level for X.service: 1.9 OK`.
fn exposure(report: &str) -> Option<f64> {
    report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?
        .rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The default `baton init` unit scores at most 2.5; `--user root` is
/// warned about (and scores worse, for the record).
fn exposure_of_the_default_unit(s: &Sandbox) -> String {
    let dir = "/srv/exposure";
    let mut scores = Vec::new();
    for (name, user) in [("scored", None), ("scoredroot", Some("root"))] {
        let mut args = vec!["init", name, "--listen", "127.0.0.1:1", "--unit-dir", dir];
        if let Some(user) = user {
            args.extend_from_slice(&["--user", user]);
        }
        args.extend_from_slice(&["--", "/bin/true"]);
        let out = s.baton(&args);
        assert!(out.status.success(), "baton init {name}: {}", describe(&out));
        let warned = String::from_utf8_lossy(&out.stderr).contains("WARNING");
        assert_eq!(warned, user == Some("root"), "the root warning: {}", describe(&out));
        let unit = format!("{dir}/{name}.service");
        let report = s.c.exec(
            &["systemd-analyze", "security", "--offline=yes", "--no-pager", &unit],
            COMMAND_TIMEOUT,
        );
        let text = stdout(&report);
        let score = exposure(&text)
            .unwrap_or_else(|| panic!("no exposure level from systemd-analyze security: {}", describe(&report)));
        scores.push(score);
    }
    assert!(
        scores[0] <= 2.5,
        "the unit `baton init` writes scores {} (at most 2.5 wanted)",
        scores[0]
    );
    format!(
        "default (a user of its own): {:.1}; --user root (warned about): {:.1}",
        scores[0], scores[1]
    )
}

/// The figures of one app under the sandbox.
fn app_in_the_sandbox(s: &Sandbox, app: &ExampleApp) -> String {
    let name = app.name;
    let service = format!("{name}.service");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "init",
        name,
        "--listen",
        &listen,
        "--workers",
        "2",
        "--directory",
        app.directory,
        "--",
    ];
    args.extend(app.command.iter().map(String::as_str));
    let out = s.baton(&args);
    assert!(out.status.success(), "baton init {name}: {}", describe(&out));
    assert!(
        stdout(&out).contains(&format!("{name} runs as system user {name}")),
        "baton init did not create the app's user: {}",
        describe(&out)
    );
    let unit = s.c.read_file(&format!("/etc/systemd/system/{service}"));
    for line in [
        format!("User={name}"),
        "Delegate=yes".into(),
        "CapabilityBoundingSet=".into(),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line:?} missing from {service}:\n{unit}"
        );
    }
    let passwd = s.sh_ok(&format!("getent passwd {name}"));
    let uid: u32 = passwd.split(':').nth(2).and_then(|u| u.parse().ok()).unwrap();
    assert!(uid > 0 && uid < 1000, "{name} is not a system user: {passwd}");
    s.edit_config(&format!("/etc/baton/{name}.toml"), app.edit);

    let out = s.c.systemctl(&["enable", "--now", &format!("{name}.socket")]);
    assert!(out.status.success(), "enable --now {name}.socket: {}", describe(&out));
    let t = Instant::now();
    let first = get(addr, "/", Duration::from_secs(60));
    let first_took = t.elapsed();
    match &first {
        Ok((200, body)) if body.starts_with("hello from generation 1 ") => {}
        other => panic!("the first request (which starts {service}) got {other:?}"),
    }
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            status = s.status_of(name);
            status
                .as_ref()
                .and_then(serving)
                .is_some_and(|(_, r, n)| r == n && n == 2)
        }),
        "{name} never served with 2/2 workers: {status:?}"
    );
    let status = status.unwrap();

    // baton and every worker run as the app's user, inside the sandbox.
    let main: i64 = s.c.show(&service, "MainPID").parse().unwrap();
    let (id, _, _) = serving(&status).unwrap();
    let mut processes = pids(&status, id);
    processes.push(main);
    for pid in &processes {
        let st = s.sh_ok(&format!(
            "grep -E '^(Uid|CapBnd|NoNewPrivs|Seccomp):' /proc/{pid}/status"
        ));
        let field = |key: &str| {
            st.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert!(field("Uid:").iter().all(|u| *u == uid.to_string()), "pid {pid}:\n{st}");
        assert_eq!(field("CapBnd:"), ["0000000000000000"], "pid {pid}:\n{st}");
        assert_eq!(field("NoNewPrivs:"), ["1"], "pid {pid}:\n{st}");
        assert_eq!(field("Seccomp:"), ["2"], "pid {pid}:\n{st}");
    }

    let load = Load::start(addr, "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::new();
    let mut current = id;
    for i in 1..=SANDBOX_RELOADS {
        let t = Instant::now();
        let out = s.c.systemctl(&["reload", name]);
        times.push(ms(t.elapsed()));
        assert!(
            out.status.success(),
            "reload {i} of {name}: {}; load so far: {}",
            describe(&out),
            load.snapshot()
        );
        let now = s.status_of(name).expect("baton status after a reload");
        let (id, ready, slots) = serving(&now).unwrap();
        assert_eq!((id, ready, slots), (current + 1, 2, 2), "after reload {i}: {now}");
        current = id;
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert_eq!(
        stats.failed, 0,
        "{name}: failed requests across {SANDBOX_RELOADS} reloads: {stats}"
    );
    assert!(stats.ok >= 50, "{name}: too few requests to mean anything: {stats}");

    let t = Instant::now();
    let out = s.c.systemctl(&["stop", &service]);
    let stop_took = t.elapsed();
    assert!(out.status.success(), "systemctl stop {service}: {}", describe(&out));
    let result = s.c.show(&service, "Result");
    let active = stdout(&s.c.systemctl(&["is-active", &service])).trim().to_owned();
    assert_eq!(
        (result.as_str(), active.as_str()),
        ("success", "inactive"),
        "after stop"
    );
    let _ = s.c.systemctl(&["disable", "--now", &format!("{name}.socket")]);
    format!(
        "uid {uid} ({name}), CapBnd 0, NoNewPrivs, seccomp on baton and workers; first request (socket activation) {}; \
         reloads {}; load: {stats}; stop {} Result=success",
        ms(first_took),
        times.join(" "),
        ms(stop_took)
    )
}

/// `baton init --config-dir /srv/elsewhere`: the unit names that config, so
/// its ExecStartPre no longer exits 78 looking for /etc/baton/NAME.toml.
fn config_dir_elsewhere(s: &Sandbox) -> String {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let out = s.baton(&[
        "init",
        "elsewhere",
        "--listen",
        &listen,
        "--config-dir",
        "/srv/elsewhere",
        "--",
        &s.hello,
    ]);
    assert!(out.status.success(), "baton init --config-dir: {}", describe(&out));
    assert!(!s.c.host_path("/etc/baton/elsewhere.toml").exists());
    let unit = s.c.read_file("/etc/systemd/system/elsewhere.service");
    let pre = unit
        .lines()
        .find(|l| l.starts_with("ExecStartPre="))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        pre,
        format!("ExecStartPre={} check --config /srv/elsewhere/elsewhere.toml", s.baton)
    );
    let out = s.c.systemctl(&["start", "elsewhere.service"]);
    assert!(
        out.status.success(),
        "systemctl start elsewhere.service: {}",
        describe(&out)
    );
    let answer = get(SocketAddr::from(([127, 0, 0, 1], port)), "/", Duration::from_secs(30));
    assert!(matches!(&answer, Ok((200, _))), "GET / of elsewhere: {answer:?}");
    let _ = s.c.systemctl(&["stop", "elsewhere.service", "elsewhere.socket"]);
    format!("{pre}; started, and GET / answered 200")
}

// ---------------------------------------------------------------------------
// The scenarios of `systemd_runs_baton_units_in_a_container`.

/// 1. `baton init`, `systemctl enable --now myapp.socket`: nothing runs until
///    the first request, which starts the service and gets answered.
fn socket_activation(s: &System) -> String {
    let listen = format!("127.0.0.1:{}", s.port);
    let out = s.baton(&["init", APP, "--listen", &listen, "--workers", "2", "--", &s.hello]);
    assert!(out.status.success(), "baton init: {}", describe(&out));
    let service = s.c.read_file("/etc/systemd/system/myapp.service");
    let socket = s.c.read_file("/etc/systemd/system/myapp.socket");
    assert!(
        socket.lines().any(|l| l == format!("ListenStream={listen}")),
        "myapp.socket does not listen on {listen}:\n{socket}"
    );
    for line in [
        "Type=notify",
        &format!("ExecStart={} run {APP}", s.baton),
        &format!("ExecReload={} reload {APP}", s.baton),
        "KillMode=mixed",
        "Restart=on-failure",
        "WatchdogSec=30s",
        "RuntimeDirectory=baton/myapp",
        "StateDirectory=baton/myapp",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "{line:?} missing from myapp.service:\n{service}"
        );
    }

    s.systemctl_ok(&["enable", "--now", "myapp.socket"]);
    assert_eq!(s.is_active("myapp.socket"), "active", "myapp.socket is not active");
    let before = s.is_active(SERVICE);
    assert_eq!(before, "inactive", "myapp.service runs before any request");
    assert_eq!(s.main_pid(), 0, "myapp.service has a main pid before any request");

    let t = Instant::now();
    let answer = get(s.addr(), "/", Duration::from_secs(30));
    let first = t.elapsed();
    let body = match answer {
        Ok((200, body)) => body,
        other => panic!("the first request (which should start {SERVICE}) got {other:?}"),
    };
    assert!(
        body.starts_with("hello from generation 1 worker"),
        "unexpected answer to the first request: {body:?}"
    );
    let mut state = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            state = s.is_active(SERVICE);
            state == "active"
        }),
        "after the first request was answered, `systemctl is-active {SERVICE}` says {state:?}"
    );
    let status = s.wait_serving(Duration::from_secs(10));
    assert_eq!(
        status["socket_activated"],
        Value::Bool(true),
        "baton did not use systemd's socket: {status}"
    );
    assert_eq!(serving(&status), Some((1, WORKERS, WORKERS)), "status: {status}");
    format!(
        "service inactive until the first request; it was answered in {} ({:?}); then is-active: active, MainPID {}",
        ms(first),
        body.trim(),
        s.main_pid()
    )
}

/// 2. `systemctl reload` under continuous load (a new connection per request).
fn reloads_under_load(s: &System) -> String {
    let status = s.wait_serving(Duration::from_secs(30));
    let (mut current, _, _) = serving(&status).unwrap();
    let load = Load::start(s.addr(), "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(300));
    let mut took = Vec::new();
    for i in 1..=RELOADS {
        let t = Instant::now();
        let out = s.c.systemctl(&["reload", APP]);
        let elapsed = t.elapsed();
        // Right after it returned: no waiting here.
        let status = s.status();
        assert!(
            out.status.success(),
            "reload {i}: systemctl reload {APP}: {}; load so far: {}",
            describe(&out),
            load.snapshot()
        );
        let (id, ready, slots) =
            serving(&status).unwrap_or_else(|| panic!("reload {i}: nothing serving right after it: {status}"));
        assert_eq!(
            id,
            current + 1,
            "reload {i}: right after `systemctl reload` returned, generation {id} serves, not the new {}: {status}",
            current + 1
        );
        assert_eq!(
            (ready, slots),
            (WORKERS, WORKERS),
            "reload {i}: right after `systemctl reload` returned, generation {id} has {ready}/{slots} workers ready"
        );
        if id == 2 {
            *s.gen2_pids.lock().unwrap() = pids(&status, 2);
        }
        current = id;
        took.push(elapsed);
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert_eq!(stats.failed, 0, "failed requests across {RELOADS} reloads: {stats}");
    assert!(
        stats.ok >= 100,
        "too few requests got through to mean anything: {stats}"
    );
    assert!(
        stats.generations_seen.contains(&current.to_string()),
        "the load never saw the last generation {current}: {stats}"
    );
    let times: Vec<String> = took.iter().map(|d| ms(*d)).collect();
    format!(
        "{RELOADS} reloads, all exit 0, each followed at once by the new generation serving {WORKERS}/{WORKERS} \
         (generations 2..={current}); reload times {}; load: {stats}",
        times.join(" ")
    )
}

/// 3. journald: `journalctl -u myapp BATON_GENERATION=2`, and a shell app's
///    `<3>` prefix and stderr.
fn journal_per_generation(s: &System) -> String {
    let gen2 = s.gen2_pids.lock().unwrap().clone();
    assert_eq!(
        gen2.len() as u64,
        WORKERS,
        "scenario 2 did not record generation 2's workers: {gen2:?}"
    );
    let gen2_text: Vec<String> = gen2.iter().map(i64::to_string).collect();
    let mut entries = Vec::new();
    let mut lines: Vec<Value> = Vec::new();
    let complete = wait_until(Duration::from_secs(10), || {
        entries = s.journal(&["-u", APP, "BATON_GENERATION=2"]);
        lines = entries
            .iter()
            .filter(|e| field(e, "BATON_STREAM").is_some())
            .cloned()
            .collect();
        gen2_text.iter().all(|pid| {
            lines.iter().any(|e| {
                field(e, "SYSLOG_PID").as_ref() == Some(pid) && field(e, "BATON_STREAM").as_deref() == Some("stdout")
            })
        })
    });
    let shown: Vec<String> = entries.iter().take(20).map(Value::to_string).collect();
    assert!(
        complete,
        "`journalctl -u {APP} BATON_GENERATION=2 -o json` has no stdout line (with BATON_STREAM and SYSLOG_PID) \
         from each of generation 2's workers {gen2:?}; it returned {} entries:\n{}",
        entries.len(),
        shown.join("\n")
    );
    for e in &lines {
        let message = field(e, "MESSAGE").unwrap_or_default();
        let pid = field(e, "SYSLOG_PID").unwrap_or_default();
        assert!(
            gen2_text.contains(&pid),
            "SYSLOG_PID {pid} is not a worker of generation 2 {gen2:?}: {e}"
        );
        assert_eq!(field(e, "BATON_GENERATION").as_deref(), Some("2"), "{e}");
        assert_eq!(field(e, "SYSLOG_IDENTIFIER").as_deref(), Some(APP), "{e}");
        let worker = field(e, "BATON_WORKER").unwrap_or_default();
        assert!(["0", "1"].contains(&worker.as_str()), "BATON_WORKER {worker:?}: {e}");
        let stream = field(e, "BATON_STREAM").unwrap_or_default();
        let priority = field(e, "PRIORITY").unwrap_or_default();
        match stream.as_str() {
            "stdout" => assert_eq!(priority, "6", "a stdout line's PRIORITY: {e}"),
            "stderr" => assert_eq!(priority, "4", "a stderr line's PRIORITY: {e}"),
            _ => panic!("BATON_STREAM {stream:?}: {e}"),
        }
        if message.starts_with("hello: generation") {
            assert!(
                message.starts_with(&format!("hello: generation 2 worker {worker} pid {pid} listening on")),
                "the start line does not match its fields: {e}"
            );
        }
    }
    for pid in &gen2_text {
        assert!(
            lines.iter().any(|e| field(e, "SYSLOG_PID").as_ref() == Some(pid)
                && field(e, "MESSAGE").is_some_and(|m| m.starts_with("hello: generation 2 worker"))),
            "no start line from generation 2's worker pid {pid}"
        );
    }
    let own = entries.len() - lines.len();

    // A second app: a shell worker with a `<3>` prefix and a stderr line.
    let port = free_port();
    let script = "/opt/baton-systest/shout.sh";
    s.c.write_executable(
        script,
        "#!/bin/sh\n\
         echo \"<3>shout: something failed in generation $BATON_GENERATION\"\n\
         echo \"shout: a plain line from worker $BATON_WORKER\"\n\
         echo \"shout: a line on stderr\" >&2\n\
         exec sleep infinity\n",
    );
    let listen = format!("127.0.0.1:{port}");
    let out = s.baton(&["init", "shout", "--listen", &listen, "--workers", "1", "--", script]);
    assert!(out.status.success(), "baton init shout: {}", describe(&out));
    s.edit_config("/etc/baton/shout.toml", |doc| {
        doc["readiness"]["mode"] = toml_edit::value("delay");
        doc["readiness"]["delay"] = toml_edit::value("200ms");
    });
    let start = s.c.systemctl(&["start", "shout.service"]);
    let mut shout = Vec::new();
    let seen = start.status.success()
        && wait_until(Duration::from_secs(10), || {
            shout = s
                .journal(&["-u", "shout"])
                .into_iter()
                .filter(|e| field(e, "BATON_STREAM").is_some())
                .collect();
            shout.len() >= 3
        });
    let worker_pid = s
        .status_of("shout")
        .and_then(|st| st["supervisor"]["serving"].as_u64().map(|id| pids(&st, id)))
        .unwrap_or_default();
    let shout_status = s.c.systemctl(&["status", "shout.service", "--no-pager", "-l"]);
    let _ = s.c.systemctl(&["stop", "shout.service", "shout.socket"]);
    assert!(
        start.status.success(),
        "systemctl start shout.service: {}",
        describe(&start)
    );
    let shown: Vec<String> = shout.iter().map(Value::to_string).collect();
    assert!(
        seen,
        "the shell worker's 3 lines did not reach `journalctl -u shout` with BATON_STREAM; got:\n{}\n{}",
        shown.join("\n"),
        stdout(&shout_status)
    );
    let find = |text: &str| {
        shout
            .iter()
            .find(|e| field(e, "MESSAGE").is_some_and(|m| m.contains(text)))
            .cloned()
            .unwrap_or_else(|| panic!("no shout line with {text:?} in:\n{}", shown.join("\n")))
    };
    let error = find("shout: something failed");
    assert_eq!(
        field(&error, "MESSAGE").as_deref(),
        Some("shout: something failed in generation 1"),
        "the <3> prefix was not stripped: {error}"
    );
    assert_eq!(
        field(&error, "PRIORITY").as_deref(),
        Some("3"),
        "the <3> prefix: {error}"
    );
    assert_eq!(field(&error, "BATON_STREAM").as_deref(), Some("stdout"), "{error}");
    let plain = find("shout: a plain line from worker 0");
    assert_eq!(field(&plain, "PRIORITY").as_deref(), Some("6"), "{plain}");
    let err_line = find("shout: a line on stderr");
    assert_eq!(field(&err_line, "PRIORITY").as_deref(), Some("4"), "{err_line}");
    assert_eq!(
        field(&err_line, "BATON_STREAM").as_deref(),
        Some("stderr"),
        "{err_line}"
    );
    for e in [&error, &plain, &err_line] {
        assert_eq!(field(e, "SYSLOG_IDENTIFIER").as_deref(), Some("shout"), "{e}");
        assert_eq!(field(e, "BATON_GENERATION").as_deref(), Some("1"), "{e}");
        assert_eq!(field(e, "BATON_WORKER").as_deref(), Some("0"), "{e}");
        if let [pid] = worker_pid[..] {
            assert_eq!(field(e, "SYSLOG_PID"), Some(pid.to_string()), "{e}");
        }
    }
    assert!(
        !shout
            .iter()
            .any(|e| field(e, "MESSAGE").is_some_and(|m| m.starts_with('<'))),
        "a MESSAGE kept its <N> prefix:\n{}",
        shown.join("\n")
    );
    format!(
        "{} worker lines of generation 2 (pids {gen2:?}), each with SYSLOG_PID, BATON_WORKER, BATON_STREAM, \
         PRIORITY 6/4, SYSLOG_IDENTIFIER={APP}, plus {own} of baton's own entries; \
         shell worker: `<3>` line has PRIORITY=3 and no prefix, stderr PRIORITY=4",
        lines.len()
    )
}

/// 4. A release that exits 3 before it is ready.
/// 8. 20,000 lines as fast as a shell can write them and one 200 KB line:
///    every line is one journal entry, in order; the long line arrives in
///    64 KiB entries whose concatenation is the whole line.
fn journal_burst(s: &System) -> String {
    const LINES: usize = 20_000;
    const LONG: usize = 200_000;
    let port = free_port();
    let script = "/opt/baton-systest/burst.sh";
    s.c.write_executable(
        script,
        &format!(
            "#!/bin/sh\n\
             seq 1 {LINES} | sed 's/^/burst /'\n\
             head -c {LONG} /dev/zero | tr '\\0' 'x'; echo\n\
             echo 'burst done'\n\
             systemd-notify --ready\n\
             exec sleep infinity\n"
        ),
    );
    let listen = format!("127.0.0.1:{port}");
    let out = s.baton(&["init", "burst", "--listen", &listen, "--", script]);
    assert!(out.status.success(), "baton init burst: {}", describe(&out));
    let start = s.c.systemctl(&["start", "burst.service"]);
    assert!(
        start.status.success(),
        "systemctl start burst.service: {}",
        describe(&start)
    );
    // --all: journalctl prints fields over 4096 bytes as null without it.
    let mut entries = Vec::new();
    let done = wait_until(Duration::from_secs(60), || {
        entries = s.journal(&["-u", "burst", "--all", "BATON_STREAM=stdout"]);
        entries
            .iter()
            .any(|e| field(e, "MESSAGE").as_deref() == Some("burst done"))
    });
    let _ = s.c.systemctl(&["stop", "burst.service", "burst.socket"]);
    assert!(
        done,
        "`burst done` never reached the journal ({} entries)",
        entries.len()
    );
    let messages: Vec<String> = entries.iter().filter_map(|e| field(e, "MESSAGE")).collect();
    let numbers: Vec<usize> = messages
        .iter()
        .filter_map(|m| m.strip_prefix("burst ")?.parse().ok())
        .collect();
    assert_eq!(numbers.len(), LINES, "burst lines lost in the journal");
    assert!(
        numbers.iter().enumerate().all(|(i, &n)| n == i + 1),
        "burst lines out of order"
    );
    let long: Vec<usize> = messages
        .iter()
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b == b'x'))
        .map(String::len)
        .collect();
    assert_eq!(long.iter().sum::<usize>(), LONG, "the long line's pieces: {long:?}");
    format!(
        "{LINES} burst lines in order, and a {LONG}-byte line in {} entries of {:?} bytes",
        long.len(),
        long
    )
}

/// 9. The app needs 6 s to get ready, the unit allows 3 s to start: only
///    baton's EXTEND_TIMEOUT_USEC keeps systemd from failing the start.
fn extend_timeout(s: &System) -> String {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let out = s.baton(&["init", "slowstart", "--listen", &listen, "--", &s.hello]);
    assert!(out.status.success(), "baton init slowstart: {}", describe(&out));
    s.edit_config("/etc/baton/slowstart.toml", |doc| {
        doc["environment"]["HELLO_READY_DELAY_MS"] = toml_edit::value("6000");
    });
    s.c.write_file(
        "/etc/systemd/system/slowstart.service.d/override.conf",
        "[Service]\nTimeoutStartSec=3s\n",
    );
    s.systemctl_ok(&["daemon-reload"]);
    let t = Instant::now();
    let start = s.c.systemctl(&["start", "slowstart.service"]);
    let took = t.elapsed();
    let journal: Vec<String> = s
        .journal(&["-u", "slowstart"])
        .iter()
        .filter_map(|e| field(e, "MESSAGE"))
        .collect();
    let active = stdout(&s.c.systemctl(&["is-active", "slowstart.service"]));
    let _ = s.c.systemctl(&["stop", "slowstart.service", "slowstart.socket"]);
    assert!(
        start.status.success(),
        "start failed after {took:?} despite EXTEND_TIMEOUT_USEC: {}\n{}",
        describe(&start),
        journal.join("\n")
    );
    assert_eq!(active.trim(), "active");
    assert!(
        took >= Duration::from_secs(5),
        "the app was ready too early to prove anything: {took:?}"
    );
    assert!(
        !journal.iter().any(|m| m.contains("timed out")),
        "systemd timed out: {}",
        journal.join("\n")
    );
    format!("TimeoutStartSec=3s, ready after {}: started", ms(took))
}

fn broken_release(s: &System) -> String {
    let status = s.wait_serving(Duration::from_secs(30));
    let (old, _, _) = serving(&status).unwrap();
    let old_pids = pids(&status, old);
    let original = s.c.read_file(CONFIG);
    let load = Load::start(s.addr(), "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(300));
    s.edit_config(CONFIG, |doc| {
        doc["environment"]["HELLO_FAIL_START"] =
            toml_edit::value("FATAL: cannot connect to the database (system test)");
    });
    let t = Instant::now();
    let out = s.c.systemctl(&["reload", APP]);
    let took = t.elapsed();
    s.c.write_file(CONFIG, &original);
    assert!(
        !out.status.success(),
        "`systemctl reload {APP}` of a release that exits 3 exited 0: {}",
        describe(&out)
    );
    let mut text = String::new();
    let says_why = wait_until(Duration::from_secs(5), || {
        text = s.c.show(SERVICE, "StatusText");
        text.contains("FAILED") && text.contains("exited with status 3")
    });
    assert!(
        says_why,
        "`systemctl show -p StatusText {APP}` does not say why the reload failed: {text:?}"
    );
    let after = s.status();
    assert_eq!(
        serving(&after),
        Some((old, WORKERS, WORKERS)),
        "the old generation {old} is not serving at full strength after the failed reload: {after}"
    );
    assert_eq!(pids(&after, old), old_pids, "the old generation's workers changed");
    match get(s.addr(), "/", Duration::from_secs(10)) {
        Ok((200, body)) if body.starts_with(&format!("hello from generation {old} ")) => {}
        other => panic!("after the failed reload, GET / answered {other:?}, not generation {old}"),
    }
    assert_eq!(
        s.is_active(SERVICE),
        "active",
        "a failed reload must leave the service active"
    );
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    assert_eq!(stats.failed, 0, "failed requests around the failed reload: {stats}");

    // The config is back: the next reload works.
    let fixed = s.c.systemctl(&["reload", APP]);
    assert!(
        fixed.status.success(),
        "reload after restoring the config: {}",
        describe(&fixed)
    );
    let now = s.status();
    let (id, ready, slots) = serving(&now).unwrap();
    assert!(id > old && ready == slots, "after the good reload: {now}");
    format!(
        "systemctl reload exited {} after {}; StatusText {text:?}; generation {old} kept serving; \
         load: {stats}; restored config reloaded to generation {id}",
        out.status.code().unwrap_or(-1),
        ms(took)
    )
}

/// Requests started together, each timed (for the ones sent while nothing
/// serves).
fn probes(addr: SocketAddr, n: usize) -> Vec<JoinHandle<Timed>> {
    (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = get(addr, "/", Duration::from_secs(30));
                (r, t.elapsed())
            })
        })
        .collect()
}

/// 5. `kill -STOP` baton under a 3 s WatchdogSec.
fn supervisor_watchdog(s: &System) -> String {
    s.c.write_file(DROP_IN, "[Service]\nWatchdogSec=3s\n");
    let result = catch_unwind(AssertUnwindSafe(|| supervisor_watchdog_with_drop_in(s)));
    // systemd keeps a running service's watchdog timeout across
    // daemon-reload; the restart gives baton WATCHDOG_USEC=30s again.
    s.c.remove_file(DROP_IN);
    let reloaded = s.c.systemctl(&["daemon-reload"]);
    let restarted = s.c.systemctl(&["restart", SERVICE]);
    let figures = match result {
        Ok(figures) => figures,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert!(reloaded.status.success(), "daemon-reload: {}", describe(&reloaded));
    assert!(
        restarted.status.success(),
        "restart without the drop-in: {}",
        describe(&restarted)
    );
    s.wait_serving(Duration::from_secs(30));
    assert_eq!(
        s.c.show(SERVICE, "WatchdogUSec"),
        "30s",
        "WatchdogSec after removing the drop-in"
    );
    figures
}

fn supervisor_watchdog_with_drop_in(s: &System) -> String {
    s.systemctl_ok(&["daemon-reload"]);
    // baton reads WATCHDOG_USEC when it starts.
    s.systemctl_ok(&["restart", SERVICE]);
    let status = s.wait_serving(Duration::from_secs(30));
    assert_eq!(s.c.show(SERVICE, "WatchdogUSec"), "3s", "the drop-in did not apply");
    let main = s.main_pid();
    assert!(main > 0, "no MainPID after the restart");
    let restarts_before: u64 = s.c.show(SERVICE, "NRestarts").parse().unwrap_or(0);

    // A healthy baton keeps the watchdog fed.
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(
        (s.main_pid(), s.is_active(SERVICE).as_str()),
        (main, "active"),
        "a healthy baton was not kept alive by its own WATCHDOG=1 pings under WatchdogSec=3s"
    );
    let (id, _, _) = serving(&status).unwrap();
    let old_workers = pids(&status, id);

    // Everything, for the record only: it includes the requests that
    // systemd's SIGKILL of the old workers cuts off (see below).
    let whole = Load::start(s.addr(), "/", 1);
    let stop = s.c.sh(&format!("kill -STOP {main}"));
    let stopped_at = Instant::now();
    assert!(stop.status.success(), "kill -STOP {main}: {}", describe(&stop));

    // While baton is stopped its workers serve on. systemd's watchdog fires
    // 3s after the last ping, which was at most 1.5s before the STOP: this
    // window ends before it.
    let while_stopped = Load::start(s.addr(), "/", 2);
    std::thread::sleep(Duration::from_millis(800));
    let stopped_stats = while_stopped.stop();
    let state = stdout(&s.c.sh(&format!("cut -d' ' -f3 /proc/{main}/stat")))
        .trim()
        .to_owned();
    assert_eq!(
        state, "T",
        "baton (pid {main}) is not stopped 0.8s after kill -STOP (state {state:?})"
    );
    assert_eq!(
        stopped_stats.failed, 0,
        "requests failed while baton was stopped and its workers should serve on: {stopped_stats}"
    );
    assert!(
        stopped_stats.ok > 0,
        "no request answered while baton was stopped: {stopped_stats}"
    );

    // systemd's watchdog: SIGABRT to baton, then (KillMode=mixed) SIGKILL to
    // the rest of the cgroup, then Restart=on-failure after RestartSec=1s.
    // auto-restart means the old cgroup is empty.
    let mut seen = String::new();
    let killed = wait_until(Duration::from_secs(20), || {
        let sub = s.c.show(SERVICE, "SubState");
        let pid = s.main_pid();
        seen = format!("SubState={sub} MainPID={pid}");
        sub == "auto-restart" || (pid != 0 && pid != main)
    });
    let killed_after = stopped_at.elapsed();
    assert!(
        killed,
        "systemd's watchdog did not kill the stopped baton within 20s ({seen})"
    );

    // Requests that start after the kill: nothing accepts them until the new
    // generation is up, so they wait in myapp.socket's queue.
    let timed = probes(s.addr(), 4);
    let after_kill = Load::start(s.addr(), "/", 2);
    let mut new_main = 0;
    let restarted = wait_until(Duration::from_secs(30), || {
        new_main = s.main_pid();
        new_main != 0 && new_main != main
    });
    assert!(restarted, "no new MainPID after the watchdog killed baton ({seen})");
    let restarted_after = stopped_at.elapsed();
    s.wait_serving(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let after_stats = after_kill.stop();
    let whole_stats = whole.stop();
    let mut waits = Vec::new();
    for probe in timed {
        let (result, took) = probe.join().unwrap();
        assert!(
            matches!(&result, Ok((200, _))),
            "a request sent while the service restarted got {result:?} after {took:?}"
        );
        waits.push(ms(took));
    }
    assert_eq!(
        after_stats.failed, 0,
        "requests sent after the watchdog kill failed instead of waiting in the socket's queue: {after_stats}"
    );
    assert!(after_stats.ok > 0, "{after_stats}");

    let journal = stdout(&s.c.journalctl(&["-u", SERVICE, "-o", "cat", "-n", "300"]));
    let line = journal
        .lines()
        .find(|l| l.contains("Watchdog timeout"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("systemd did not log a watchdog timeout for {SERVICE}:\n{journal}"));
    let lingering: Vec<i64> = old_workers
        .iter()
        .copied()
        .filter(|pid| s.c.sh(&format!("test -e /proc/{pid}")).status.success())
        .collect();
    assert!(
        lingering.is_empty(),
        "old workers {lingering:?} outlived the watchdog kill of their baton (of {old_workers:?})"
    );
    let restarts: u64 = s.c.show(SERVICE, "NRestarts").parse().unwrap_or(0);
    assert!(
        restarts > restarts_before,
        "NRestarts {restarts_before} -> {restarts}: Restart=on-failure did not restart it"
    );
    format!(
        "MainPID {main} stopped; {line:?} after {:.1}s; new MainPID {new_main} after {:.1}s; NRestarts {restarts_before} -> {restarts}; \
         while stopped: {stopped_stats}; sent after the kill: {after_stats}; queued probes answered after {}; \
         one thread across everything (not asserted: requests in flight on the workers systemd SIGKILLs fail): {whole_stats}",
        killed_after.as_secs_f64(),
        restarted_after.as_secs_f64(),
        waits.join(" ")
    )
}

/// 6. Workers under `[watchdog] timeout = "2s"` that never ping.
fn worker_watchdog(s: &System) -> String {
    s.wait_serving(Duration::from_secs(30));
    let original = s.c.read_file(CONFIG);
    let load = Load::start(s.addr(), "/", 2);
    s.edit_config(CONFIG, |doc| {
        doc["watchdog"]["timeout"] = toml_edit::value("2s");
        doc["environment"]["HELLO_NO_WATCHDOG"] = toml_edit::value("1");
    });
    let result = catch_unwind(AssertUnwindSafe(|| {
        let out = s.c.systemctl(&["reload", APP]);
        assert!(
            out.status.success(),
            "reload to the non-pinging release: {}",
            describe(&out)
        );
        let status = s.status();
        let (id, _, _) = serving(&status).unwrap();
        let first: Vec<(u64, i64, u64)> = workers(&status, id);
        let t = Instant::now();
        let mut last = Value::Null;
        let mut replaced = None;
        let ok = wait_until(Duration::from_secs(20), || {
            let Some(now) = s.status_of(APP) else { return false };
            let gen_restarts = generation(&now, id).and_then(|g| g["restarts"].as_u64()).unwrap_or(0);
            for (slot, pid, restarts) in workers(&now, id) {
                let was = first.iter().find(|w| w.0 == slot).map(|w| w.1);
                if was.is_some_and(|was| was != pid) && (restarts >= 1 || gen_restarts >= 1) {
                    replaced = Some((slot, was.unwrap(), pid, restarts, gen_restarts));
                }
            }
            last = now;
            replaced.is_some()
        });
        assert!(
            ok,
            "no worker of generation {id} (first {first:?}) was replaced with restarts >= 1 within 20s \
             of the reload, although none pings a 2s watchdog; last status: {last}"
        );
        (id, replaced.unwrap(), t.elapsed())
    }));
    s.c.write_file(CONFIG, &original);
    let fixed = s.c.systemctl(&["reload", APP]);
    let stats = load.stop();
    let (id, (slot, was, now, restarts, gen_restarts), after) = match result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert!(
        fixed.status.success(),
        "reload after restoring the config: {}",
        describe(&fixed)
    );
    s.wait_serving(Duration::from_secs(30));
    let journal = stdout(&s.c.journalctl(&["-u", SERVICE, "-o", "cat", "-n", "300"]));
    let why = journal
        .lines()
        .find(|l| l.contains(&format!("pid {was}")) && l.contains("watchdog"))
        .unwrap_or("(no journal line names the watchdog)");
    format!(
        "generation {id} worker {slot}: pid {was} replaced by {now} {} after the reload ({why:?}); \
         restarts: worker {restarts}, generation {gen_restarts}; load meanwhile (not asserted): {stats}",
        ms(after)
    )
}

/// 7. `systemctl stop myapp.service` with a 3 s request in flight.
fn stop_drains(s: &System) -> String {
    let status = s.wait_serving(Duration::from_secs(30));
    let (id, _, _) = serving(&status).unwrap();
    let cgroup = s.c.show(SERVICE, "ControlGroup");
    assert!(!cgroup.is_empty(), "{SERVICE} has no ControlGroup");
    let main = s.main_pid();
    let mut processes = pids(&status, id);
    processes.push(main);

    // Lists the unit's cgroup in whichever hierarchy the container has
    // (unified, or hybrid with /sys/fs/cgroup/{unified,systemd}).
    let cgroup_listing = || {
        stdout(&s.c.sh(&format!(
            "for root in /sys/fs/cgroup /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do \
               d=$root{cgroup}; if [ -e $d/cgroup.procs ]; then echo \"$d:\"; \
               find $d -name cgroup.procs -exec cat {{}} +; fi; done; \
             systemd-cgls --no-pager -u {SERVICE} 2>&1; true"
        )))
    };
    let left_in = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .filter(|l| l.trim().parse::<u32>().is_ok() || l.contains('─'))
            .map(str::to_owned)
            .collect()
    };
    // The probe sees the running service's processes (so that an empty
    // answer after the stop means something).
    let before = cgroup_listing();
    assert!(
        before.lines().any(|l| l.trim() == main.to_string()) && !left_in(&before).is_empty(),
        "the cgroup probe does not see baton (pid {main}) in {cgroup}:\n{before}"
    );

    let addr = s.addr();
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        (get(addr, "/slow?ms=3000", Duration::from_secs(30)), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let out = s.c.systemctl(&["stop", SERVICE]);
    let stop_took = t.elapsed();
    let (answer, slow_took) = slow.join().unwrap();
    assert!(out.status.success(), "systemctl stop {SERVICE}: {}", describe(&out));
    match &answer {
        Ok((200, body)) if body.starts_with("slow done") => {}
        other => panic!("the slow request in flight during `systemctl stop` got {other:?} after {slow_took:?}"),
    }
    assert_eq!(s.is_active(SERVICE), "inactive", "after systemctl stop");
    let result = s.c.show(SERVICE, "Result");
    let exit = s.c.show(SERVICE, "ExecMainStatus");
    assert_eq!(
        (result.as_str(), exit.as_str()),
        ("success", "0"),
        "baton's stop: Result, ExecMainStatus"
    );

    let listing = cgroup_listing();
    let left = left_in(&listing);
    assert!(
        left.is_empty(),
        "processes left in {cgroup} after systemctl stop:\n{listing}"
    );
    let alive: Vec<i64> = processes
        .iter()
        .copied()
        .filter(|pid| s.c.sh(&format!("test -e /proc/{pid}")).status.success())
        .collect();
    assert!(
        alive.is_empty(),
        "processes of the stopped service still exist: {alive:?} (of baton {main} and workers {processes:?})"
    );
    format!(
        "slow request answered 200 after {}; systemctl stop took {}; Result=success, ExecMainStatus=0; \
         cgroup {cgroup} empty ({}), baton {main} and workers gone",
        ms(slow_took),
        ms(stop_took),
        listing.lines().next().unwrap_or("no cgroup left").trim()
    )
}

/// The app of scenarios 10 and 11: each worker leaves a daemon behind (a
/// double fork into a session of its own, holding the listening socket on
/// fd 3) and then becomes the hello server.
const DAEMONS: &str = "daemons";

/// `baton init`s app `name` with `script` as its command and starts it.
fn start_app(
    s: &System,
    name: &str,
    workers: u64,
    script: &str,
    edit: impl FnOnce(&mut toml_edit::DocumentMut),
) -> u16 {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let workers = workers.to_string();
    let out = s.baton(&["init", name, "--listen", &listen, "--workers", &workers, "--", script]);
    assert!(out.status.success(), "baton init {name}: {}", describe(&out));
    s.edit_config(&format!("/etc/baton/{name}.toml"), edit);
    let service = s.c.read_file(&format!("/etc/systemd/system/{name}.service"));
    assert!(
        service.lines().any(|l| l == "Delegate=yes"),
        "baton init wrote no Delegate=yes:\n{service}"
    );
    assert_units_fit_the_systemd(s, &service);
    s.systemctl_ok(&["start", &format!("{name}.socket"), &format!("{name}.service")]);
    port
}

/// `baton init` wrote the service for the container's own systemd (it asks
/// `systemctl --version`): from 257 on with `ProtectControlGroups=private`,
/// before that without `ProtectControlGroups=` (README "systemd versions").
/// The cgroup scenarios then show that the workers' cgroups work with it.
fn assert_units_fit_the_systemd(s: &System, service: &str) {
    let version_line = stdout(&s.c.exec(&["systemctl", "--version"], COMMAND_TIMEOUT));
    let version: u32 = version_line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("systemctl --version: {version_line:?}"));
    let header = format!("# Written by `baton init` from baton@.service, for systemd {version}.");
    assert_eq!(service.lines().next(), Some(header.as_str()), "{service}");
    let protect = service.lines().find(|l| l.starts_with("ProtectControlGroups="));
    let expected = (version >= 257).then_some("ProtectControlGroups=private");
    assert_eq!(protect, expected, "systemd {version}:\n{service}");
}

/// Waits until app `name` serves with all workers ready, and returns its status.
fn wait_app(s: &System, name: &str) -> Value {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), || {
        last = s.status_of(name);
        last.as_ref()
            .and_then(serving)
            .is_some_and(|(_, ready, slots)| ready == slots)
    });
    assert!(
        ok,
        "{name} is not serving with all workers ready; last status: {last:?}"
    );
    last.unwrap()
}

/// Every process in `unit`'s cgroup tree on the cgroup2 hierarchy, as
/// (sub-cgroup below the unit's, "/" for the unit's own; pid; comm).
fn cgroup_processes(s: &System, unit: &str) -> Vec<(String, i64, String)> {
    let cgroup = s.c.show(unit, "ControlGroup");
    if cgroup.is_empty() {
        return Vec::new();
    }
    let script = format!(
        "root=/sys/fs/cgroup/unified; [ -e $root/cgroup.procs ] || root=/sys/fs/cgroup; dir=$root{cgroup}; \
         [ -d $dir ] || exit 0; \
         find $dir -name cgroup.procs | while read f; do sub=${{f#$dir}}; sub=${{sub%/cgroup.procs}}; \
           for p in $(cat $f); do echo \"${{sub:-/}} $p $(cat /proc/$p/comm 2>/dev/null)\"; done; done"
    );
    stdout(&s.c.sh(&script))
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let sub = f.next()?.trim_start_matches('/').to_owned();
            let pid = f.next()?.parse().ok()?;
            Some((sub, pid, f.next().unwrap_or("").to_owned()))
        })
        .collect()
}

/// The sub-cgroups below `unit`'s (names only).
fn sub_cgroups(s: &System, unit: &str) -> Vec<String> {
    let cgroup = s.c.show(unit, "ControlGroup");
    let out = s.c.sh(&format!(
        "root=/sys/fs/cgroup/unified; [ -e $root/cgroup.procs ] || root=/sys/fs/cgroup; \
         ls -A $root{cgroup} 2>/dev/null | while read d; do [ -d $root{cgroup}/$d ] && echo $d; done; true"
    ));
    stdout(&out).lines().map(str::to_owned).collect()
}

fn show_processes(procs: &[(String, i64, String)]) -> String {
    procs
        .iter()
        .map(|(sub, pid, comm)| format!("  /{sub} {pid} {comm}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn daemons_script(s: &System) -> String {
    let script = "/opt/baton-systest/daemonizer.sh";
    s.c.write_executable(
        script,
        &format!("#!/bin/sh\n( setsid sleep 100000 & )\nexec {}\n", s.hello),
    );
    script.to_owned()
}

/// 10. `baton status` says "cgroup"; baton is in `<unit>/supervisor`, each
///     worker and its daemon in a cgroup of their own.
fn cgroup_per_worker(s: &System) -> String {
    let service = format!("{DAEMONS}.service");
    let script = daemons_script(s);
    start_app(s, DAEMONS, WORKERS, &script, |_| {});
    let status = wait_app(s, DAEMONS);
    let unit = s.c.show(&service, "ControlGroup");
    assert_eq!(
        status["process_tree"], "cgroup",
        "baton status does not report cgroup mode under Delegate=yes: {status}"
    );
    // Under ProtectControlGroups=private (systemd 257+, a cgroup namespace
    // of the unit's own on a cgroup2 system) baton sees its unit's cgroup as
    // the root of the hierarchy, "/".
    let private =
        s.c.read_file(&format!("/etc/systemd/system/{service}"))
            .lines()
            .any(|l| l == "ProtectControlGroups=private");
    let detail = status["process_tree_detail"].as_str().unwrap_or_default();
    assert!(
        detail == format!("delegated cgroup {unit}") || (private && detail == "delegated cgroup /"),
        "{status}"
    );
    let text = stdout(&s.baton(&["status", DAEMONS]));
    assert!(
        text.contains("process tree: a cgroup per worker"),
        "baton status (text) does not show the mode:\n{text}"
    );
    let main: i64 = s.c.show(&service, "MainPID").parse().unwrap_or(0);
    let own = |pid: i64| {
        stdout(&s.c.sh(&format!("cat /proc/{pid}/cgroup")))
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            .unwrap_or_default()
    };
    assert_eq!(own(main), format!("{unit}/supervisor"), "baton's own cgroup");

    let (id, _, _) = serving(&status).unwrap();
    let mut seen = Vec::new();
    // baton names cgroups as it sees them: from the root of its cgroup
    // namespace, which under ProtectControlGroups=private is the unit's.
    let seen_by_baton = if private { "" } else { unit.as_str() };
    for w in generation(&status, id).unwrap()["workers"].as_array().unwrap() {
        let pid = w["pid"].as_i64().unwrap();
        let cgroup = w["cgroup"]
            .as_str()
            .unwrap_or_else(|| panic!("worker without a cgroup: {w}"));
        let slot = w["slot"].as_u64().unwrap();
        assert_eq!(
            cgroup,
            format!("{seen_by_baton}/gen{id}-worker{slot}-id{}", w["id"]),
            "worker cgroup name: {w}"
        );
        let full = format!("{unit}/gen{id}-worker{slot}-id{}", w["id"]);
        assert_eq!(own(pid), full, "worker pid {pid} is not in the cgroup status names");
        seen.push(full);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len() as u64, WORKERS, "workers share a cgroup: {seen:?}");

    // Each worker's daemon stayed in its worker's cgroup.
    let mut procs = Vec::new();
    let settled = wait_until(Duration::from_secs(5), || {
        procs = cgroup_processes(s, &service);
        procs.iter().filter(|p| p.2 == "sleep").count() as u64 == WORKERS
    });
    assert!(settled, "not one daemon per worker:\n{}", show_processes(&procs));
    for (sub, pid, comm) in &procs {
        let expected = match comm.as_str() {
            "baton" => sub == "supervisor",
            "sleep" | "hello" => sub.starts_with(&format!("gen{id}-worker")),
            _ => false,
        };
        assert!(
            expected,
            "pid {pid} ({comm}) in /{sub}; the unit's processes:\n{}",
            show_processes(&procs)
        );
    }
    format!(
        "process_tree \"cgroup\"; baton {main} in {unit}/supervisor; workers in {seen:?}, each with its daemon:\n{}",
        show_processes(&procs)
    )
}

/// 11. 3 reloads of 2 workers that each leave a `setsid` daemon holding
///     the socket: only the serving generation's processes are left, the old
///     cgroups are gone, and `systemctl stop` leaves systemd nothing to kill.
fn daemons_die_with_their_generation(s: &System) -> String {
    let service = format!("{DAEMONS}.service");
    if s.is_active(&service) != "active" {
        let script = daemons_script(s);
        start_app(s, DAEMONS, WORKERS, &script, |_| {});
    }
    wait_app(s, DAEMONS);
    for i in 1..=3 {
        let out = s.c.systemctl(&["reload", DAEMONS]);
        assert!(out.status.success(), "reload {i}: {}", describe(&out));
    }
    let status = wait_app(s, DAEMONS);
    let (id, _, _) = serving(&status).unwrap();
    let current = format!("gen{id}-worker");
    let mut procs = Vec::new();
    let mut subs = Vec::new();
    // Retired workers exit after their stop signal; give them a moment.
    let only_current = wait_until(Duration::from_secs(15), || {
        procs = cgroup_processes(s, &service);
        subs = sub_cgroups(s, &service);
        procs
            .iter()
            .all(|(sub, _, comm)| (comm == "baton" && sub == "supervisor") || sub.starts_with(&current))
            && subs
                .iter()
                .all(|d| d == "supervisor" || d == ".control" || d.starts_with(&current))
    });
    let daemons = procs.iter().filter(|p| p.2 == "sleep").count() as u64;
    assert!(
        only_current && daemons == WORKERS,
        "after 3 reloads, {daemons} daemons (expected {WORKERS}, of generation {id}); the unit's processes:\n{}\n\
         its cgroups: {subs:?}",
        show_processes(&procs)
    );
    let left = show_processes(&procs);

    let t = Instant::now();
    let out = s.c.systemctl(&["stop", &service, &format!("{DAEMONS}.socket")]);
    let took = t.elapsed();
    assert!(out.status.success(), "systemctl stop: {}", describe(&out));
    let result = s.c.show(&service, "Result");
    assert_eq!(result, "success", "{service} Result after stop");
    let after = cgroup_processes(s, &service);
    assert!(after.is_empty(), "left after stop:\n{}", show_processes(&after));
    let journal = stdout(&s.c.journalctl(&["-u", &service, "-o", "cat"]));
    let killed: Vec<&str> = journal.lines().filter(|l| l.contains("Killing process")).collect();
    assert!(
        killed.is_empty(),
        "baton left processes for systemd to kill at stop:\n{}",
        killed.join("\n")
    );
    format!(
        "after 3 reloads (generation {id}), the unit holds:\n{left}\nsystemctl stop took {}: Result=success, \
         nothing left for systemd to kill",
        ms(took)
    )
}

/// 12. `[limits] memory = "48MiB"`, and the worker leaves a 96 MiB daemon
///     in a session of its own: counting the worker's cgroup (not its
///     process group) catches it, and the daemon dies with the worker.
fn memory_limit_counts_the_cgroup(s: &System) -> String {
    const APP: &str = "hog";
    let service = format!("{APP}.service");
    let script = "/opt/baton-systest/hog.sh";
    // Only the first worker starts a hog (PrivateTmp keeps the marker for
    // the life of the service), so the replacement stays under the limit.
    s.c.write_executable(
        script,
        &format!(
            "#!/bin/sh\n\
             if mkdir /tmp/hog-started 2>/dev/null; then\n\
               ( setsid python3 -c 'import time; b = bytearray(96 << 20); time.sleep(100000)' & )\n\
             fi\n\
             exec {}\n",
            s.hello
        ),
    );
    start_app(s, APP, 1, script, |doc| {
        doc["limits"]["memory"] = toml_edit::value("48MiB");
    });
    let first = wait_app(s, APP);
    let (id, _, _) = serving(&first).unwrap();
    let first_pid = pids(&first, id)[0];
    let t = Instant::now();
    let mut last = Value::Null;
    let mut peak = 0;
    let replaced = wait_until(Duration::from_secs(30), || {
        let Some(now) = s.status_of(APP) else { return false };
        peak = peak.max(
            generation(&now, id)
                .and_then(|g| g["workers"][0]["rss_bytes"].as_u64())
                .unwrap_or(0),
        );
        let pid = serving(&now).and_then(|(g, ready, _)| (ready == 1).then(|| pids(&now, g)));
        last = now;
        pid.is_some_and(|p| p.first() != Some(&first_pid))
    });
    let after = t.elapsed();
    let source = last["memory_source"].clone();
    let journal = stdout(&s.c.journalctl(&["-u", &service, "-o", "cat"]));
    let hogs = stdout(&s.c.sh("pgrep -f 'bytearra[y]' || true")).trim().to_owned();
    let _ = s.c.systemctl(&["stop", &service, &format!("{APP}.socket")]);
    assert!(
        replaced,
        "the worker whose daemon holds 96 MiB was not replaced under [limits] memory = 48MiB within 30s \
         (peak reported {} MiB); last status: {last}",
        peak >> 20
    );
    let why = journal
        .lines()
        .find(|l| l.contains("above [limits] memory"))
        .unwrap_or_else(|| panic!("no journal line says the memory limit was exceeded:\n{journal}"))
        .to_owned();
    assert!(
        hogs.is_empty(),
        "the 96 MiB daemon (pids {hogs}) outlived the worker replaced for it"
    );
    format!(
        "peak {} MiB reported (memory_source {source}); worker pid {first_pid} replaced after {}: {why:?}; its daemon is gone",
        peak >> 20,
        ms(after)
    )
}

/// The directory generation `id` runs in, as `baton status` reports it.
fn directory(status: &Value, id: u64) -> Option<String> {
    generation(status, id)?["directory"].as_str().map(str::to_owned)
}

/// 13. Releases under systemd: a `current` symlink layout owned by root
///     (baton runs as `User=myapp`, so only the operator may re-point it),
///     two releases, `systemctl restart`, then `baton history` and
///     `baton rollback` from a root shell with nothing but the app's name.
fn history_and_rollback(s: &System) -> String {
    const ROOT: &str = "/srv/myapp";
    let v1 = format!("{ROOT}/releases/v1");
    let v2 = format!("{ROOT}/releases/v2");
    let current = format!("{ROOT}/current");
    let deploy = |to: &str| {
        let out = s.c.sh(&format!(
            "mkdir -p {v1} {v2} && ln -sfn {to} {current}.tmp && mv -T {current}.tmp {current}"
        ));
        assert!(out.status.success(), "deploying {to}: {}", describe(&out));
    };
    let original = s.c.read_file(CONFIG);
    // Scenario 7 stopped it.
    s.systemctl_ok(&["start", SERVICE]);
    s.wait_serving(Duration::from_secs(30));

    deploy(&v1);
    s.edit_config(CONFIG, |doc| {
        doc["directory"] = toml_edit::value(current.as_str());
        doc["environment"]["APP_RELEASE"] = toml_edit::value("v1");
    });
    s.systemctl_ok(&["reload", APP]);
    deploy(&v2);
    s.edit_config(CONFIG, |doc| doc["environment"]["APP_RELEASE"] = toml_edit::value("v2"));
    s.systemctl_ok(&["reload", APP]);
    let status = s.status();
    let (on_v2, _, _) = serving(&status).unwrap();
    assert_eq!(directory(&status, on_v2).as_deref(), Some(v2.as_str()), "{status}");

    let pid_before = s.main_pid();
    s.systemctl_ok(&["restart", SERVICE]);
    let status = s.wait_serving(Duration::from_secs(30));
    let pid_after = s.main_pid();
    assert_ne!(pid_before, pid_after, "systemctl restart did not restart baton");
    let (restarted, _, _) = serving(&status).unwrap();
    assert_eq!(directory(&status, restarted).as_deref(), Some(v2.as_str()), "{status}");

    // A root shell, the app's name and nothing else.
    let out = s.baton(&["history", APP, "--json"]);
    assert!(out.status.success(), "baton history {APP} --json: {}", describe(&out));
    let history: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("baton history JSON: {e}: {}", stdout(&out)));
    let entries = history["entries"].as_array().cloned().unwrap_or_default();
    let dirs: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["release"]["directory"].as_str())
        .collect();
    assert_eq!(
        dirs.first(),
        Some(&v2.as_str()),
        "the newest entry is not v2: {history:#}"
    );
    assert!(
        dirs.contains(&v1.as_str()),
        "v1 is not in the history after the restart: {history:#}"
    );
    assert!(
        entries.len() >= 3,
        "fewer than 3 entries (v1, v2, v2 after the restart): {history:#}"
    );

    // The service's own user, in a shell, with the app's name only.
    for args in [["history", APP, "--json"], ["status", APP, "--json"]] {
        let mut argv = vec!["runuser", "-u", APP, "--", s.baton.as_str()];
        argv.extend_from_slice(&args);
        let out = s.c.exec(&argv, COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "as {APP}: baton {}: {}",
            args.join(" "),
            describe(&out)
        );
        let answer: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("as {APP}: baton {}: {e}: {}", args.join(" "), stdout(&out)));
        assert!(
            answer["entries"].as_array().is_some_and(|e| e.len() == entries.len()) || answer["supervisor"].is_object(),
            "as {APP}: baton {}: {answer}",
            args.join(" ")
        );
    }

    let load = Load::start(s.addr(), "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = s.baton(&["rollback", APP]);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "baton rollback {APP}: {}", describe(&out));
    assert!(
        said.contains(&format!("re-pointed {current} → {v1}")),
        "baton rollback did not say it re-pointed {current}: {said}"
    );
    let link = stdout(&s.c.exec(&["readlink", &current], COMMAND_TIMEOUT))
        .trim()
        .to_owned();
    assert_eq!(link, v1, "{current} after the rollback");
    let status = s.status();
    let (rolled, ready, slots) = serving(&status).unwrap();
    assert!(rolled > restarted && ready == slots, "after the rollback: {status}");
    assert_eq!(directory(&status, rolled).as_deref(), Some(v1.as_str()), "{status}");
    assert_eq!(stats.failed, 0, "failed requests across the rollback: {stats}");
    assert!(stats.ok >= 50, "too little load to mean anything: {stats}");

    // The re-pointed link is what a restart (or a reboot) starts.
    s.systemctl_ok(&["restart", SERVICE]);
    let status = s.wait_serving(Duration::from_secs(30));
    let (after, _, _) = serving(&status).unwrap();
    assert_eq!(
        directory(&status, after).as_deref(),
        Some(v1.as_str()),
        "after a restart: {status}"
    );

    s.c.write_file(CONFIG, &original);
    s.systemctl_ok(&["reload", APP]);
    let by = if said.contains("(as you)") {
        "the root client"
    } else {
        "baton"
    };
    format!(
        "{} history entries after systemctl restart; baton rollback exit 0 in {} (re-pointed by {by}); \
         load across it: {stats}; after another restart, v1 serves",
        entries.len(),
        ms(took)
    )
}

/// 14. `baton upgrade myapp` under systemd, after "installing" a new baton
///     binary over the path the unit runs (a new file renamed over it, as
///     a package does): exit 0, the same MainPID and worker pids, no
///     restart counted, the unit active, 0 failed requests, and the new
///     image answers `systemctl reload`.
fn upgrade_in_place(s: &System) -> String {
    let status = s.wait_serving(Duration::from_secs(30));
    let (generation, _, _) = serving(&status).unwrap();
    let workers = pids(&status, generation);
    let main = s.main_pid();
    let restarts = s.c.show(SERVICE, "NRestarts");
    let load = Load::start(s.addr(), "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(300));
    let install = format!("cp {0} {0}.new && mv {0}.new {0}", s.baton);
    let out = s.c.sh(&install);
    assert!(out.status.success(), "installing the new binary: {}", describe(&out));
    let exe_before = stdout(&s.c.exec(&["readlink", &format!("/proc/{main}/exe")], COMMAND_TIMEOUT))
        .trim()
        .to_owned();
    let t = Instant::now();
    let out = s.baton(&["upgrade", APP]);
    let took = t.elapsed();
    assert!(out.status.success(), "baton upgrade {APP}: {}", describe(&out));
    let said = stdout(&out);
    assert!(said.contains("upgraded from baton"), "{said}");
    let after = s.status();
    assert_eq!(s.main_pid(), main, "MainPID changed across the upgrade");
    assert_eq!(pids(&after, generation), workers, "the workers changed: {after}");
    assert_eq!(s.is_active(SERVICE), "active");
    assert_eq!(s.c.show(SERVICE, "NRestarts"), restarts, "systemd counted a restart");
    assert_eq!(after["upgrades"].as_array().map(Vec::len), Some(1), "{after}");
    let exe_after = stdout(&s.c.exec(&["readlink", &format!("/proc/{main}/exe")], COMMAND_TIMEOUT))
        .trim()
        .to_owned();
    assert_eq!(exe_after, s.baton, "the supervisor does not run the new file");
    // The new image takes reloads.
    s.systemctl_ok(&["reload", APP]);
    let reloaded = s.status();
    assert_eq!(serving(&reloaded).map(|g| g.0), Some(generation + 1), "{reloaded}");
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert_eq!(stats.failed, 0, "failed requests across the upgrade: {stats}");
    assert!(stats.ok >= 50, "too little load to mean anything: {stats}");
    let entries = s.journal(&["-u", APP, "--since", "-1min"]);
    assert!(
        entries
            .iter()
            .filter_map(|e| field(e, "MESSAGE"))
            .any(|m| m.contains("upgraded in place")),
        "no 'upgraded in place' entry in the journal"
    );
    format!(
        "baton upgrade exit 0 in {}; MainPID {main} kept, exe {exe_before:?} -> {exe_after:?}; workers {workers:?} \
         kept; NRestarts {restarts} unchanged; then systemctl reload ok; load: {stats}",
        ms(took)
    )
}

/// The MESSAGE_IDs of the records scenario 15 expects (src/systemd/records.rs;
/// an id never changes, so a copy here checks that too).
const RELOAD_OK: &str = "07845afa3c8041bcad351de5b79b3ff4";
const RELOAD_FAILED: &str = "b7ff280ca9494d42a022c0296706db0a";
const CANARY_OK: &str = "7879ff6798d246ce8ca6d47a102a9029";
const PROMOTE_OK: &str = "d614ae3d819e46d894cf5557830c823c";
const ROLLBACK_OK: &str = "8b5c5f46e07a4c9ea57477b0faca4a5a";

/// 15. The packaged catalog installed and compiled, then a good reload, a
///     failed one, a canary promoted and a canary rolled back: each ends in
///     exactly one entry of the unit with its MESSAGE_ID and BATON_*
///     fields, and `journalctl -x` shows the catalog's explanation.
fn reload_records(s: &System) -> String {
    s.c.write_file(
        "/usr/lib/systemd/catalog/baton.catalog",
        include_str!("../packaging/baton.catalog"),
    );
    let out = s.c.journalctl(&["--update-catalog"]);
    assert!(out.status.success(), "journalctl --update-catalog: {}", describe(&out));
    let status = s.wait_serving(Duration::from_secs(30));
    let (before, _, _) = serving(&status).unwrap();
    // Only what this scenario writes counts.
    let _ = s.c.journalctl(&["--sync"]);
    let last = s.journal(&["-n", "1"]);
    let cursor = last
        .first()
        .and_then(|e| field(e, "__CURSOR"))
        .expect("a journal cursor");
    let since = last.first().map_or(0, realtime);
    // Entries after `since`, filtered here: systemd 252's journalctl finds
    // nothing for `--after-cursor` with a field match (257's does; see the
    // figures).
    let after = |args: &[&str]| -> Vec<Value> { s.journal(args).into_iter().filter(|e| realtime(e) > since).collect() };
    let unit = format!("_SYSTEMD_UNIT={SERVICE}");
    let records = |id: &str| -> Vec<Value> { after(&[&unit, &format!("MESSAGE_ID={id}")]) };
    let one = |id: &str, what: &str| -> Value {
        let mut found = Vec::new();
        // journald may take a moment to index the entry.
        wait_until(Duration::from_secs(5), || {
            found = records(id);
            !found.is_empty()
        });
        assert_eq!(
            found.len(),
            1,
            "{what}: not exactly one record with MESSAGE_ID={id}: {found:#?}"
        );
        found.remove(0)
    };
    let check = |e: &Value, what: &str, result: &str, generation: u64| {
        let f = |name: &str| field(e, name).unwrap_or_default();
        assert_eq!(f("BATON_RESULT"), result, "{what}: {e:#}");
        assert_eq!(f("BATON_GENERATION"), generation.to_string(), "{what}: {e:#}");
        assert!(
            f("BATON_DURATION_MS").parse::<u64>().is_ok(),
            "{what}: BATON_DURATION_MS: {e:#}"
        );
        assert!(!f("BATON_RELEASE").is_empty(), "{what}: no BATON_RELEASE: {e:#}");
        assert_eq!(f("BATON_APP"), APP, "{what}: {e:#}");
        assert_eq!(
            f("BATON_REASON").is_empty(),
            result == "ok",
            "{what}: BATON_REASON: {e:#}"
        );
        assert!(!f("MESSAGE").is_empty(), "{what}: {e:#}");
    };

    // A good reload.
    s.systemctl_ok(&["reload", APP]);
    let good = before + 1;
    let e = one(RELOAD_OK, "the good reload");
    check(&e, "the good reload", "ok", good);

    // A failed reload: its candidate exits 3.
    let original = s.c.read_file(CONFIG);
    s.edit_config(CONFIG, |doc| {
        doc["environment"]["HELLO_FAIL_START"] = toml_edit::value("FATAL: records scenario");
    });
    let out = s.c.systemctl(&["reload", APP]);
    s.c.write_file(CONFIG, &original);
    assert!(!out.status.success(), "the broken reload exited 0: {}", describe(&out));
    let failed = one(RELOAD_FAILED, "the failed reload");
    check(&failed, "the failed reload", "failed", good + 1);
    let reason = field(&failed, "BATON_REASON").unwrap_or_default();
    assert!(
        reason.contains("exited with status 3"),
        "BATON_REASON of the failed reload: {reason:?}"
    );

    // A canary, promoted.
    let baton_ok = |args: &[&str]| {
        let out = s.baton(args);
        assert!(out.status.success(), "baton {}: {}", args.join(" "), describe(&out));
    };
    baton_ok(&["reload", APP, "--canary", "1"]);
    let promoted = good + 2;
    baton_ok(&["promote", APP]);
    check(&one(CANARY_OK, "the first canary"), "the first canary", "ok", promoted);
    check(&one(PROMOTE_OK, "the promotion"), "the promotion", "ok", promoted);

    // A canary, rolled back: the record of the rollback names the
    // generation that keeps serving.
    baton_ok(&["reload", APP, "--canary", "1"]);
    baton_ok(&["rollback", APP]);
    let canaries = records(CANARY_OK);
    assert_eq!(canaries.len(), 2, "two canary records: {canaries:#?}");
    check(&canaries[1], "the second canary", "ok", promoted + 1);
    check(&one(ROLLBACK_OK, "the rollback"), "the rollback", "ok", promoted);
    let status = s.wait_serving(Duration::from_secs(30));
    assert_eq!(serving(&status).map(|g| g.0), Some(promoted), "{status}");
    // Exactly one record per event: nothing else of baton's with an id.
    let all: Vec<String> = after(&[&unit, "SYSLOG_IDENTIFIER=baton"])
        .iter()
        .filter_map(|e| field(e, "MESSAGE_ID"))
        .collect();
    assert_eq!(
        all,
        [RELOAD_OK, RELOAD_FAILED, CANARY_OK, PROMOTE_OK, CANARY_OK, ROLLBACK_OK],
        "the records, in order"
    );

    // journalctl -x explains the failed reload from the catalog.
    let out =
        s.c.journalctl(&["-x", "-n", "1", &unit, &format!("MESSAGE_ID={RELOAD_FAILED}")]);
    let text = stdout(&out);
    assert!(
        text.contains("keeps serving at full")
            && text.contains(&format!("journalctl MESSAGE_ID={RELOAD_FAILED}"))
            && text.contains("exited with status 3"),
        "journalctl -x does not show the catalog text: {text}"
    );
    let explained = text.lines().filter(|l| l.starts_with("░░ ")).count();
    let by_app = after(&[&format!("BATON_APP={APP}"), &format!("MESSAGE_ID={RELOAD_FAILED}")]);
    assert_eq!(
        by_app.len(),
        1,
        "BATON_APP={APP} MESSAGE_ID={RELOAD_FAILED}: {by_app:#?}"
    );
    let with_u = after(&["-u", APP, &format!("MESSAGE_ID={RELOAD_FAILED}")]).len();
    let after_cursor = s
        .journal(&[
            &format!("--after-cursor={cursor}"),
            &unit,
            &format!("MESSAGE_ID={RELOAD_FAILED}"),
        ])
        .len();
    format!(
        "6 records (reload ok/failed, canary, promote, canary, rollback), one each, with their fields; \
         journalctl -x adds {explained} lines of catalog text to the failed reload; \
         the failed reload found by -u {APP}: {with_u}, by BATON_APP: {}, by --after-cursor and the unit's field: {after_cursor}",
        by_app.len()
    )
}
