//! Package tests: the .deb that `packaging/build deb` makes, installed with
//! apt in a real systemd container ([`container`]) on each system in turn
//! (Debian 12 with systemd 252, then Debian 13 with systemd 257; the .debs
//! are built once and installed on both), then the story of
//! README's "Packages" and "Under systemd" driven the way a user would, with requests from the host through the shared
//! network and the load client that counts every failed request.
//!
//! The test builds two packages of this checkout itself:
//! `baton_0.1.0-1_amd64.deb` and, with `--version 0.1.1`,
//! `baton_0.1.1-1_amd64.deb` (the same binary under a newer package version).
//! dpkg and apt run only inside the container, never on the host.
//!
//! 1. The story, each step asserted: `apt-get install` of 0.1.0 (offline:
//!    its dependencies are already installed), `baton --version`, the man
//!    page, `systemctl cat baton@.service`; `baton init myapp`, whose unit runs
//!    /usr/bin/baton; `systemctl enable --now myapp.socket` and a first
//!    request; 5 `systemctl reload`s under load with 0 failed requests;
//!    the journal catalog: the postinst compiled it (`journalctl
//!    --list-catalog` lists every id of packaging/baton.catalog, none before
//!    the install), and `journalctl -x -u myapp` explains the 5 reload
//!    records with its text;
//!    `dpkg -r baton`: the note names myapp, the binary is gone, the units and
//!    config stay, daemon-reload works and the running service keeps serving;
//!    the postrm took baton's ids out of the catalog.
//! 2. Upgrade: reinstall 0.1.0 with /etc/baton/no-auto-upgrade (the
//!    running supervisor is left alone, and the notes say so), restart
//!    myapp under it, then install 0.1.1
//!    under continuous load: exit 0, 0 failed requests, the same MainPID,
//!    `dpkg -s` says 0.1.1, the postinst upgraded myapp's supervisor in
//!    place (`baton upgrade --all`: it says so, and the MainPID now runs
//!    the new /usr/bin/baton, not the deleted one), and `systemctl reload`
//!    works. Then `systemctl restart` (no longer needed to switch binaries)
//!    is still checked; the requests that fail during that restart are
//!    counted and reported, not asserted.
//! 3. A summary with the figures, per system; every step line, summary line
//!    and failure names the system, and a per-system table gives boot and
//!    total time.
//!
//! Skipped (loudly) only when not root, when systemd-nspawn is missing and
//! cannot be installed, or (Debian 13 only) when its root is not cached and
//! cannot be built (no mmdebstrap, mirror unreachable); under `CI=true`
//! each is a failure.

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
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::load::{Load, LoadStats};
use common::{example_bin, free_port, get, say, skip, wait_until};
use container::{Container, build_deb, describe, stdout};
use serde_json::Value;

const APP: &str = "myapp";
const SERVICE: &str = "myapp.service";
const SOCKET: &str = "myapp.socket";
const WORKERS: u64 = 2;
const RELOADS: u64 = 5;
const LOAD_THREADS: usize = 4;
/// Where the packages go inside the container.
const PKG_DIR: &str = "/opt/baton-pkgtest";
const OLD: &str = "0.1.0";
const NEW: &str = "0.1.1";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const APT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn deb_installs_upgrades_and_removes_in_a_container() {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        skip("the package tests install the .deb in a systemd container and need root");
        return;
    }

    // The packages, built the way the README says.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (old_deb, build_old) = build_deb(root, None, &format!("baton_{OLD}-1_amd64.deb"));
    let (new_deb, build_new) = build_deb(root, Some(NEW), &format!("baton_{NEW}-1_amd64.deb"));
    say(&format!(
        "package tests: built {} in {:.1}s and {} in {:.1}s (once, for every system)",
        old_deb.display(),
        build_old.as_secs_f64(),
        new_deb.display(),
        build_new.as_secs_f64()
    ));
    let builds = [
        format!("build {OLD}: {:.1}s (shared)", build_old.as_secs_f64()),
        format!("build {NEW}: {:.1}s (shared)", build_new.as_secs_f64()),
    ];
    say(&format!(
        "package tests: {} before the containers",
        secs(started.elapsed())
    ));
    container::on_each_system("package tests", |system| deb_on(system, &old_deb, &new_deb, &builds));
}

/// The steps on one system, in a container of its own.
fn deb_on(system: container::System, old_deb: &Path, new_deb: &Path, builds: &[String]) -> Option<container::Run> {
    let started = Instant::now();
    let c = Container::boot(system)?;
    let label = c.label();
    let boot = c.boot_time;
    say(&format!(
        "package tests: {label}: container {} booted in {:.2}s (systemd pid {} on the host)",
        c.name(),
        c.boot_time.as_secs_f64(),
        c.init_pid()
    ));
    let hello = c.install_host_file(&example_bin("hello"));
    let pkg = Pkg {
        old_deb: copy_into(&c, old_deb),
        new_deb: copy_into(&c, new_deb),
        c,
        hello,
        port: free_port(),
    };
    let mut summary = Summary {
        lines: builds
            .iter()
            .cloned()
            .chain([format!("container boot: {:.1}s", pkg.c.boot_time.as_secs_f64())])
            .collect(),
        ..Summary::default()
    };

    let steps: [(&str, Step); 11] = [
        ("1.1 apt-get install ./baton_0.1.0-1_amd64.deb", install_old),
        (
            "1.2 baton --version, man -w baton, systemctl cat baton@.service",
            installed_files,
        ),
        ("1.3 baton init myapp: its unit runs /usr/bin/baton", init_app),
        (
            "1.4 systemctl enable --now myapp.socket: the first request",
            enable_socket,
        ),
        ("1.5 systemctl reload myapp x5 under load", reloads_under_load),
        (
            "1.6 the journal catalog: --list-catalog, journalctl -x -u myapp",
            journal_catalog,
        ),
        (
            "1.7 dpkg -r baton: clean, the app stays and keeps serving",
            remove_package,
        ),
        (
            "2.1 reinstall 0.1.0 with no-auto-upgrade, restart myapp under it",
            reinstall_old,
        ),
        ("2.2 install 0.1.1 under load: no interruption", upgrade_under_load),
        ("2.3 systemctl reload after the upgrade", reload_after_upgrade),
        (
            "2.4 systemctl restart myapp.service: the new binary",
            restart_after_upgrade,
        ),
    ];
    let mut failure = None;
    for (name, step) in steps {
        say(&format!("\n=== {label}: step {name}"));
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| step(&pkg, &mut summary))) {
            Ok(figures) => {
                say(&format!(
                    "--- {label}: ok ({:.1}s): {figures}",
                    t.elapsed().as_secs_f64()
                ));
                summary
                    .steps
                    .push(format!("ok     {:>5.1}s  {name}", t.elapsed().as_secs_f64()));
            }
            Err(panic) => {
                let message = container::panic_message(panic.as_ref());
                say(&format!(
                    "--- {label}: FAILED ({:.1}s): {message}\n(systemctl status and the journal are in the failure report)",
                    t.elapsed().as_secs_f64()
                ));
                summary
                    .steps
                    .push(format!("FAILED {:>5.1}s  {name}", t.elapsed().as_secs_f64()));
                failure = Some(format!("step {name}: {message}\n{}", pkg.diagnostics()));
                // Each step builds on the ones before it.
                break;
            }
        }
    }
    let scenarios = started.elapsed();
    let t = Instant::now();
    drop(pkg);
    let teardown = t.elapsed();

    say(&format!("\n=== package tests on {label}: summary"));
    for line in &summary.steps {
        say(&format!("{label}: {line}"));
    }
    for line in &summary.lines {
        say(&format!("{label}:   {line}"));
    }
    say(&format!(
        "{label}:   reloads: {} (all exit 0) · requests under load: {} · failed: {} (the restart in 2.4 not counted: {} of {} failed)",
        summary.reloads,
        summary.requests,
        summary.failed,
        summary.restart.as_ref().map_or(0, |s| s.failed),
        summary.restart.as_ref().map_or(0, LoadStats::total),
    ));
    say(&format!(
        "{label}:   boot {:.1}s · teardown {:.1}s · total {:.1}s",
        boot.as_secs_f64(),
        teardown.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    Some(container::Run {
        label,
        boot,
        scenarios: scenarios.saturating_sub(boot),
        total: started.elapsed(),
        ran: summary.steps.len(),
        failures: failure.into_iter().collect(),
    })
}

/// The MESSAGE_IDs packaging/baton.catalog explains (the ids themselves
/// are checked against src/systemd/records.rs by a unit test).
fn catalog_ids() -> Vec<&'static str> {
    include_str!("../packaging/baton.catalog")
        .lines()
        .filter_map(|l| l.strip_prefix("-- "))
        .map(str::trim)
        .collect()
}

/// The record of a reload that worked (src/systemd/records.rs).
const RELOAD_OK: &str = "07845afa3c8041bcad351de5b79b3ff4";

/// The ids of `catalog_ids` that `journalctl --list-catalog` lists.
fn listed_ids(p: &Pkg) -> Vec<&'static str> {
    let out = p.c.journalctl(&["--list-catalog"]);
    assert!(out.status.success(), "journalctl --list-catalog: {}", describe(&out));
    let text = stdout(&out);
    catalog_ids()
        .into_iter()
        .filter(|id| text.lines().any(|l| l.starts_with(id)))
        .collect()
}

/// A step returns its figures, or panics.
type Step = fn(&Pkg, &mut Summary) -> String;

#[derive(Default)]
struct Summary {
    steps: Vec<String>,
    lines: Vec<String>,
    reloads: u64,
    /// Requests under load where 0 failures are asserted.
    requests: u64,
    failed: u64,
    /// The load across `systemctl restart` (reported only).
    restart: Option<LoadStats>,
    /// MainPID running the 0.1.0 package's binary, before the upgrade.
    main_before_upgrade: i64,
    generation_after_upgrade: u64,
}

impl Summary {
    fn count(&mut self, stats: &LoadStats) {
        self.requests += stats.total();
        self.failed += stats.failed;
    }
}

/// The booted container and what the steps share.
struct Pkg {
    c: Container,
    /// Paths inside the container.
    old_deb: String,
    new_deb: String,
    hello: String,
    port: u16,
}

impl Pkg {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn exec(&self, argv: &[&str]) -> Output {
        self.c.exec(argv, COMMAND_TIMEOUT)
    }

    /// `systemctl ARGS`, which must succeed.
    fn systemctl_ok(&self, args: &[&str]) -> Output {
        let out = self.c.systemctl(args);
        assert!(out.status.success(), "systemctl {}: {}", args.join(" "), describe(&out));
        out
    }

    /// `apt-get install -y DEB` inside, offline: the .deb's dependencies are
    /// installed already, and any download would go to a dead proxy and fail.
    /// (`--no-download` can't be used: with it, apt-get 2.6 fails on a local
    /// .deb with "Internal Error, Pathname to install is not absolute".)
    fn apt_get_install(&self, deb: &str) -> (Output, Duration) {
        let t = Instant::now();
        let out = self.c.exec(
            &[
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "-o",
                "Acquire::Retries=0",
                "-o",
                "Acquire::http::Proxy=http://127.0.0.1:9",
                "-o",
                "Acquire::https::Proxy=http://127.0.0.1:9",
                "-o",
                "Dpkg::Use-Pty=0",
                deb,
            ],
            APT_TIMEOUT,
        );
        (out, t.elapsed())
    }

    /// [`Pkg::apt_get_install`], asserting exit 0 and that only the local
    /// .deb was "fetched".
    fn apt_install(&self, deb: &str) -> (Output, Duration) {
        let (out, took) = self.apt_get_install(deb);
        assert!(out.status.success(), "apt-get install {deb}: {}", describe(&out));
        assert_offline(&out, deb);
        (out, took)
    }

    fn test_e(&self, path: &str) -> bool {
        self.exec(&["test", "-e", path]).status.success()
    }

    fn main_pid(&self) -> i64 {
        self.c.show(SERVICE, "MainPID").parse().unwrap_or(0)
    }

    fn is_active(&self, unit: &str) -> String {
        stdout(&self.c.systemctl(&["is-active", unit])).trim().to_owned()
    }

    /// `readlink /proc/PID/exe` inside the container.
    fn exe_of(&self, pid: i64) -> String {
        stdout(&self.exec(&["readlink", &format!("/proc/{pid}/exe")]))
            .trim()
            .to_owned()
    }

    /// The installed package's version, per `dpkg -s baton`.
    fn dpkg_version(&self) -> Option<String> {
        let out = self.exec(&["dpkg", "-s", "baton"]);
        stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(str::to_owned)
    }

    /// `baton status myapp --json`, when there is a /usr/bin/baton to ask.
    fn status(&self) -> Option<Value> {
        let out = self.exec(&["/usr/bin/baton", "status", APP, "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Waits until a generation serves with every worker ready; returns it.
    fn wait_serving(&self, timeout: Duration) -> u64 {
        let mut last = None;
        let ok = wait_until(timeout, || {
            last = self.status();
            last.as_ref()
                .and_then(serving)
                .is_some_and(|(_, ready, slots)| ready == slots && slots == WORKERS)
        });
        assert!(
            ok,
            "no generation of {APP} serving with {WORKERS}/{WORKERS} workers ready within {timeout:?}; last status: {last:?}"
        );
        serving(last.as_ref().unwrap()).unwrap().0
    }

    /// A few requests from the host, each of which must be answered.
    fn answers(&self, n: usize) -> String {
        let mut body = String::new();
        for i in 0..n {
            match get(self.addr(), "/", Duration::from_secs(10)) {
                Ok((200, b)) => body = b,
                other => panic!("request {i} of {n} to {} got {other:?}", self.addr()),
            }
        }
        body.trim().to_owned()
    }

    /// What a failure report carries.
    fn diagnostics(&self) -> String {
        let status = self
            .c
            .systemctl(&["status", SERVICE, SOCKET, "--no-pager", "-l", "-n", "0"]);
        let journal = self.c.journalctl(&["-u", APP, "-n", "50"]);
        let dpkg = self.exec(&["dpkg", "-l", "baton"]);
        format!(
            "--- systemctl status {SERVICE} {SOCKET}:\n{}{}\n--- journalctl -u {APP} -n 50:\n{}\n--- dpkg -l baton:\n{}{}",
            stdout(&status),
            String::from_utf8_lossy(&status.stderr),
            stdout(&journal),
            stdout(&dpkg),
            String::from_utf8_lossy(&dpkg.stderr),
        )
    }
}

/// Copies a host file into the container's PKG_DIR; returns the path inside.
fn copy_into(c: &Container, host_file: &Path) -> String {
    let name = host_file.file_name().and_then(|n| n.to_str()).expect("a file name");
    let inside = format!("{PKG_DIR}/{name}");
    let host = c.host_path(&inside);
    std::fs::copy(host_file, &host).unwrap_or_else(|e| panic!("copying {} into the overlay: {e}", host_file.display()));
    inside
}

/// (serving generation, its ready workers, its slots).
fn serving(status: &Value) -> Option<(u64, u64, u64)> {
    let sup = &status["supervisor"];
    let id = sup["serving"].as_u64()?;
    let g = sup["generations"]
        .as_array()?
        .iter()
        .find(|g| g["id"].as_u64() == Some(id))?;
    Some((id, g["ready"].as_u64()?, g["slots"].as_u64()?))
}

/// Asserts that apt fetched nothing but the local .deb.
fn assert_offline(out: &Output, deb: &str) {
    let text = stdout(out);
    let fetched: Vec<&str> = text
        .lines()
        .filter(|l| (l.starts_with("Get:") && !l.contains(deb)) || l.contains("http://") || l.contains("https://"))
        .collect();
    assert!(
        fetched.is_empty(),
        "apt-get install {deb} fetched from the network: {fetched:?}\n{text}"
    );
}

/// The lines of `text` that start with `baton:` (what the maintainer
/// scripts print).
fn notes(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("baton:")).collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// 1.1 `apt-get install` of 0.1.0, offline.
fn install_old(p: &Pkg, summary: &mut Summary) -> String {
    let control = p.exec(&["dpkg-deb", "-f", &p.old_deb, "Package", "Version"]);
    assert!(
        control.status.success(),
        "dpkg-deb -f {}: {}",
        p.old_deb,
        describe(&control)
    );
    assert_eq!(
        stdout(&control).trim(),
        format!("Package: baton\nVersion: {OLD}-1"),
        "the control fields of {}",
        p.old_deb
    );
    let control = p.exec(&["dpkg-deb", "-f", &p.new_deb, "Package", "Version"]);
    assert_eq!(
        stdout(&control).trim(),
        format!("Package: baton\nVersion: {NEW}-1"),
        "the control fields of {}",
        p.new_deb
    );
    assert!(!p.test_e("/usr/bin/baton"), "/usr/bin/baton exists before the install");
    // So that 1.6 finding them proves the postinst compiled the catalog.
    let listed = listed_ids(p);
    assert!(
        listed.is_empty(),
        "journalctl --list-catalog lists baton's ids before the install: {listed:?}"
    );

    let (out, took) = p.apt_install(&p.old_deb);
    assert_eq!(
        p.dpkg_version().as_deref(),
        Some("0.1.0-1"),
        "dpkg -s baton after the install"
    );
    let text = stdout(&out);
    let need = text
        .lines()
        .find(|l| l.starts_with("Need to get"))
        .unwrap_or("(no \"Need to get\" line)");
    let newly = text
        .lines()
        .find(|l| l.contains("newly installed"))
        .unwrap_or("(no summary line)");
    summary.lines.push(format!("apt-get install {OLD}: {}", secs(took)));
    format!("exit 0 in {}, offline ({need}; {newly})", secs(took))
}

/// 1.2 What the package installed.
fn installed_files(p: &Pkg, _: &mut Summary) -> String {
    let version = p.exec(&["/usr/bin/baton", "--version"]);
    assert!(
        version.status.success(),
        "/usr/bin/baton --version: {}",
        describe(&version)
    );
    let version = stdout(&version).trim().to_owned();
    assert!(version.contains(OLD), "baton --version says {version:?}");

    let man = p.exec(&["man", "-w", "baton"]);
    let man_page = if man.status.success() {
        stdout(&man).trim().to_owned()
    } else {
        // man-db's configuration may exclude something; the file is what counts.
        assert!(
            p.test_e("/usr/share/man/man1/baton.1.gz"),
            "man -w baton failed ({}) and /usr/share/man/man1/baton.1.gz is missing",
            describe(&man)
        );
        format!("/usr/share/man/man1/baton.1.gz (man -w failed: {})", describe(&man))
    };
    let pages = stdout(&p.exec(&["sh", "-c", "ls /usr/share/man/man1/ | grep '^baton' | tr '\\n' ' '"]));

    let cat = p.systemctl_ok(&["cat", "baton@.service"]);
    let cat = stdout(&cat);
    assert!(
        cat.lines().any(|l| l == "ExecStart=/usr/bin/baton run %i"),
        "systemctl cat baton@.service:\n{cat}"
    );
    p.systemctl_ok(&["cat", "baton@.socket"]);
    let unit_path = cat
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .to_owned();
    let mut missing = Vec::new();
    for file in [
        "/etc/baton/example.toml.sample",
        "/usr/share/bash-completion/completions/baton",
        "/usr/share/zsh/vendor-completions/_baton",
        "/usr/share/fish/vendor_completions.d/baton.fish",
        "/usr/share/doc/baton/copyright",
        "/usr/share/doc/baton/changelog.gz",
    ] {
        if !p.test_e(file) {
            missing.push(file);
        }
    }
    assert!(missing.is_empty(), "files missing after the install: {missing:?}");
    format!(
        "{version:?}; man -w baton: {man_page}; man pages: {}; systemctl cat baton@.service: {unit_path}; \
         sample config, completions and docs present",
        pages.trim()
    )
}

/// 1.3 `baton init myapp`.
fn init_app(p: &Pkg, _: &mut Summary) -> String {
    let listen = format!("127.0.0.1:{}", p.port);
    let out = p.exec(&[
        "/usr/bin/baton",
        "init",
        APP,
        "--listen",
        &listen,
        "--workers",
        "2",
        "--",
        &p.hello,
    ]);
    assert!(out.status.success(), "baton init: {}", describe(&out));
    let service = p.c.read_file("/etc/systemd/system/myapp.service");
    let socket = p.c.read_file("/etc/systemd/system/myapp.socket");
    for line in [
        "ExecStart=/usr/bin/baton run myapp",
        "ExecReload=/usr/bin/baton reload myapp",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "{line:?} missing from myapp.service:\n{service}"
        );
    }
    assert!(
        socket.lines().any(|l| l == format!("ListenStream={listen}")),
        "myapp.socket does not listen on {listen}:\n{socket}"
    );
    assert!(
        p.test_e("/etc/baton/myapp.toml"),
        "baton init wrote no /etc/baton/myapp.toml"
    );
    format!(
        "exit 0; ExecStart=/usr/bin/baton run myapp; ListenStream={listen}; command {}",
        p.hello
    )
}

/// 1.4 `systemctl enable --now myapp.socket`, then the first request.
fn enable_socket(p: &Pkg, _: &mut Summary) -> String {
    p.systemctl_ok(&["enable", "--now", SOCKET]);
    assert_eq!(p.is_active(SOCKET), "active", "{SOCKET} after enable --now");
    let t = Instant::now();
    let body = match get(p.addr(), "/", Duration::from_secs(30)) {
        Ok((200, body)) => body,
        other => panic!("the first request (which should start {SERVICE}) got {other:?}"),
    };
    let first = t.elapsed();
    assert!(
        body.starts_with("hello from generation 1 worker"),
        "the first answer: {body:?}"
    );
    let generation = p.wait_serving(Duration::from_secs(20));
    let main = p.main_pid();
    let exe = p.exe_of(main);
    assert_eq!(exe, "/usr/bin/baton", "/proc/{main}/exe of myapp's MainPID");
    format!(
        "the first request was answered in {} ({:?}); generation {generation} serving, MainPID {main} runs {exe}",
        secs(first),
        body.trim()
    )
}

/// 1.5 `systemctl reload myapp` under continuous load.
fn reloads_under_load(p: &Pkg, summary: &mut Summary) -> String {
    let mut current = p.wait_serving(Duration::from_secs(20));
    let load = Load::start(p.addr(), "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(300));
    let mut took = Vec::new();
    for i in 1..=RELOADS {
        let t = Instant::now();
        let out = p.c.systemctl(&["reload", APP]);
        let elapsed = t.elapsed();
        assert!(
            out.status.success(),
            "reload {i}: systemctl reload {APP}: {}; load so far: {}",
            describe(&out),
            load.snapshot()
        );
        let generation = p.wait_serving(Duration::from_secs(10));
        assert_eq!(generation, current + 1, "reload {i}: the generation serving afterwards");
        current = generation;
        took.push(secs(elapsed));
        summary.reloads += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    summary.count(&stats);
    assert_eq!(stats.failed, 0, "failed requests across {RELOADS} reloads: {stats}");
    assert!(
        stats.ok >= 100,
        "too few requests got through to mean anything: {stats}"
    );
    summary.lines.push(format!("{RELOADS} reloads under load: {stats}"));
    format!(
        "{RELOADS} reloads, all exit 0 (generations 2..={current}), in {}; load: {stats}",
        took.join(" ")
    )
}

/// 1.6 The journal catalog the package installed: the postinst ran
/// `journalctl --update-catalog` (every id is listed, none was before the
/// install), and `journalctl -x -u myapp` explains each of 1.5's reload
/// records with the catalog's text, the record's fields filled in.
fn journal_catalog(p: &Pkg, _: &mut Summary) -> String {
    let file = "/usr/lib/systemd/catalog/baton.catalog";
    assert!(p.test_e(file), "{file} is missing after the install");
    let ids = catalog_ids();
    assert!(
        ids.contains(&RELOAD_OK),
        "{RELOAD_OK} is not in packaging/baton.catalog"
    );
    let listed = listed_ids(p);
    assert_eq!(
        listed, ids,
        "journalctl --list-catalog after the install (the postinst runs journalctl --update-catalog)"
    );

    let generation = p.wait_serving(Duration::from_secs(10));
    let _ = p.c.journalctl(&["--sync"]);
    let match_id = format!("MESSAGE_ID={RELOAD_OK}");
    let mut messages = String::new();
    wait_until(Duration::from_secs(5), || {
        messages = stdout(&p.c.journalctl(&["-u", APP, &match_id, "-o", "cat"]));
        messages.lines().count() as u64 >= RELOADS
    });
    assert_eq!(
        messages.lines().count() as u64,
        RELOADS,
        "one record per reload of 1.5 with {match_id}:\n{messages}"
    );
    let out = p.c.journalctl(&["-x", "-u", APP, "-n", "1", &match_id]);
    let text = stdout(&out);
    let explained: Vec<&str> = text.lines().filter(|l| l.starts_with("░░ ")).collect();
    for needle in [
        format!("░░ Subject: baton: reload of {APP} finished, generation {generation} serving"),
        "░░ The listening sockets stayed open throughout: no connection was refused.".to_owned(),
        format!("░░ served; `baton rollback {APP}` returns to the one before."),
    ] {
        assert!(
            explained.iter().any(|l| l.trim_end() == needle),
            "journalctl -x -u {APP} {match_id} lacks {needle:?}:\n{text}"
        );
    }
    assert!(
        !explained.iter().any(|l| l.contains("@BATON_")),
        "a field of the catalog text was not filled in:\n{text}"
    );
    format!(
        "{file} installed; journalctl --list-catalog lists all {} of baton's ids (none before the install); \
         {RELOADS} reload records; journalctl -x adds {} lines of catalog text to the last, \
         generation {generation} named",
        ids.len(),
        explained.len()
    )
}

/// 1.7 `dpkg -r baton` with myapp running.
fn remove_package(p: &Pkg, summary: &mut Summary) -> String {
    let main = p.main_pid();
    assert!(main > 0, "{SERVICE} has no MainPID before the removal");
    let generation = p.wait_serving(Duration::from_secs(10));

    let load = Load::start(p.addr(), "/", 2);
    let t = Instant::now();
    let out = p.exec(&["dpkg", "-r", "baton"]);
    let took = t.elapsed();
    assert!(out.status.success(), "dpkg -r baton: {}", describe(&out));
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let note = notes(&text);
    assert!(
        note.iter().any(|l| l.contains("leaves the apps") && l.contains(APP)),
        "dpkg -r printed no prerm note naming {APP}:\n{text}"
    );
    assert!(
        !p.test_e("/usr/bin/baton"),
        "/usr/bin/baton is still there after dpkg -r"
    );
    for kept in [
        "/etc/baton/myapp.toml",
        "/etc/systemd/system/myapp.socket",
        "/etc/systemd/system/myapp.service",
    ] {
        assert!(p.test_e(kept), "{kept} is gone after dpkg -r baton");
    }
    let state = stdout(&p.exec(&["dpkg-query", "-W", "-f", "${Status}", "baton"]));
    let listed = listed_ids(p);
    assert!(
        listed.is_empty(),
        "journalctl --list-catalog still lists baton's ids after dpkg -r (the postrm updates the catalog): {listed:?}"
    );

    p.systemctl_ok(&["daemon-reload"]);
    let template = p.c.systemctl(&["cat", "baton@.service"]);
    assert!(
        !template.status.success(),
        "systemctl cat baton@.service still works after dpkg -r and daemon-reload: {}",
        describe(&template)
    );
    std::thread::sleep(Duration::from_millis(1500));
    let stats = load.stop();
    summary.count(&stats);
    assert_eq!(
        stats.failed, 0,
        "failed requests across dpkg -r and daemon-reload: {stats}"
    );
    assert!(stats.ok > 0, "{stats}");
    assert_eq!(
        p.is_active(SERVICE),
        "active",
        "{SERVICE} after dpkg -r and daemon-reload"
    );
    assert_eq!(p.main_pid(), main, "{SERVICE}'s MainPID changed across dpkg -r");
    let exe = p.exe_of(main);
    assert_eq!(
        exe, "/usr/bin/baton (deleted)",
        "the running baton (pid {main}) should still map the removed binary"
    );
    let body = p.answers(3);
    assert!(
        body.starts_with(&format!("hello from generation {generation} ")),
        "after dpkg -r, GET / answered {body:?}, not generation {generation}"
    );
    summary.lines.push(format!("dpkg -r baton: {}", secs(took)));
    summary
        .lines
        .push(format!("load across dpkg -r + daemon-reload: {stats}"));
    format!(
        "exit 0 in {}; note: {note:?}; /usr/bin/baton gone, myapp.toml and units kept; dpkg state {state:?}; \
         catalog ids gone from --list-catalog; daemon-reload ok, baton@.service gone; MainPID {main} still active, exe {exe:?}, generation {generation} \
         answering; load: {stats}",
        secs(took)
    )
}

/// 2.1 Reinstall 0.1.0 with the automatic upgrade turned off
/// (/etc/baton/no-auto-upgrade): the running supervisor is left alone, and
/// the notes say how to upgrade it. Then restart myapp so that it runs the
/// installed file.
fn reinstall_old(p: &Pkg, summary: &mut Summary) -> String {
    let old_main = p.main_pid();
    let opt_out = p.exec(&["touch", "/etc/baton/no-auto-upgrade"]);
    assert!(
        opt_out.status.success(),
        "touch /etc/baton/no-auto-upgrade: {}",
        describe(&opt_out)
    );
    let (out, took) = p.apt_install(&p.old_deb);
    let _ = p.exec(&["rm", "-f", "/etc/baton/no-auto-upgrade"]);
    assert_eq!(
        p.dpkg_version().as_deref(),
        Some("0.1.0-1"),
        "dpkg -s baton after the reinstall"
    );
    let note = notes(&stdout(&out)).join(" | ");
    assert!(
        note.contains("no-auto-upgrade exists")
            && note.contains("baton upgrade --all")
            && !note.contains("upgraded from"),
        "with /etc/baton/no-auto-upgrade, the postinst upgraded anyway or said nothing: {note:?}"
    );
    assert_eq!(p.main_pid(), old_main, "the reinstall touched {SERVICE}");
    assert_eq!(
        p.exe_of(old_main),
        "/usr/bin/baton (deleted)",
        "with /etc/baton/no-auto-upgrade, the supervisor was upgraded anyway"
    );
    p.systemctl_ok(&["restart", SERVICE]);
    let generation = p.wait_serving(Duration::from_secs(30));
    let main = p.main_pid();
    assert!(
        main > 0 && main != old_main,
        "MainPID {old_main} -> {main} across the restart"
    );
    let exe = p.exe_of(main);
    assert_eq!(exe, "/usr/bin/baton", "/proc/{main}/exe after restarting under {OLD}");
    let body = p.answers(3);
    summary.main_before_upgrade = main;
    summary
        .lines
        .push(format!("apt-get install {OLD} again: {}", secs(took)));
    format!(
        "exit 0 in {}; its notes: {note:?}; restarted: MainPID {old_main} -> {main}, exe {exe}, generation \
         {generation} serving ({body:?})",
        secs(took)
    )
}

/// 2.2 Install 0.1.1 while myapp serves under load.
fn upgrade_under_load(p: &Pkg, summary: &mut Summary) -> String {
    let main = summary.main_before_upgrade;
    assert_eq!(p.main_pid(), main, "MainPID before the upgrade");
    let generation = p.wait_serving(Duration::from_secs(10));
    let load = Load::start(p.addr(), "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(500));
    let before = load.snapshot();
    let (out, took) = p.apt_get_install(&p.new_deb);
    let during = load.snapshot();
    std::thread::sleep(Duration::from_millis(2500));
    let stats = load.stop();
    summary.count(&stats);
    assert!(
        out.status.success(),
        "apt-get install {}: {}; load: {stats}",
        p.new_deb,
        describe(&out)
    );
    assert_eq!(
        stats.failed, 0,
        "failed requests across the upgrade to {NEW} (and 2.5s after it): {stats}"
    );
    assert!(
        during.total() > before.total(),
        "no request completed while apt-get ran: {before} / {during}"
    );
    assert!(stats.ok >= 50, "too few requests to mean anything: {stats}");
    assert_eq!(
        p.dpkg_version().as_deref(),
        Some("0.1.1-1"),
        "dpkg -s baton after the upgrade"
    );
    assert_eq!(p.main_pid(), main, "{SERVICE}'s MainPID changed across the upgrade");
    assert_eq!(p.is_active(SERVICE), "active", "{SERVICE} after the upgrade");
    let text = stdout(&out);
    let note = notes(&text);
    // The postinst upgraded the running supervisor in place.
    assert!(
        note.iter()
            .any(|l| l.contains(&format!("{APP}: upgraded from baton")) && l.contains("none restarted")),
        "the package upgrade did not say it upgraded {APP} in place:\n{text}"
    );
    let exe = p.exe_of(main);
    assert_eq!(
        exe, "/usr/bin/baton",
        "/proc/{main}/exe after the package upgrade (the new file, not the deleted one)"
    );
    let after = p.wait_serving(Duration::from_secs(10));
    assert_eq!(after, generation, "the serving generation changed across the upgrade");
    let version = stdout(&p.exec(&["/usr/bin/baton", "--version"])).trim().to_owned();
    summary
        .lines
        .push(format!("apt-get install {NEW} (upgrade): {}", secs(took)));
    summary.lines.push(format!("load across the upgrade + 2.5s: {stats}"));
    summary.generation_after_upgrade = after;
    format!(
        "exit 0 in {}; load during apt-get: {} requests, {} failed; whole load: {stats}; MainPID {main} unchanged, \
         exe now {exe:?}; dpkg -s: 0.1.1-1; /usr/bin/baton --version: {version:?}; note: {note:?}",
        secs(took),
        during.total() - before.total(),
        during.failed - before.failed,
    )
}

/// 2.3 The new client reloads the old supervisor.
fn reload_after_upgrade(p: &Pkg, summary: &mut Summary) -> String {
    let main = summary.main_before_upgrade;
    let generation = summary.generation_after_upgrade;
    let load = Load::start(p.addr(), "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = p.c.systemctl(&["reload", APP]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "systemctl reload {APP} after the upgrade: {}; load: {}",
        describe(&out),
        load.snapshot()
    );
    summary.reloads += 1;
    let after = p.wait_serving(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    summary.count(&stats);
    assert_eq!(after, generation + 1, "the generation serving after the reload");
    assert_eq!(
        stats.failed, 0,
        "failed requests across the reload after the upgrade: {stats}"
    );
    assert_eq!(p.main_pid(), main, "the reload changed MainPID");
    summary.lines.push(format!("reload after the upgrade: {stats}"));
    format!(
        "exit 0 in {}; generation {generation} -> {after} under the old supervisor (MainPID {main}); load: {stats}",
        secs(took)
    )
}

/// 2.4 `systemctl restart myapp.service`: baton from the new package.
fn restart_after_upgrade(p: &Pkg, summary: &mut Summary) -> String {
    let old_main = p.main_pid();
    let load = Load::start(p.addr(), "/", LOAD_THREADS);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = p.c.systemctl(&["restart", SERVICE]);
    let took = t.elapsed();
    let restarted = out.status.success();
    let generation = if restarted {
        p.wait_serving(Duration::from_secs(30))
    } else {
        0
    };
    std::thread::sleep(Duration::from_millis(1000));
    let stats = load.stop();
    summary.restart = Some(stats.clone());
    assert!(
        restarted,
        "systemctl restart {SERVICE}: {}; load: {stats}",
        describe(&out)
    );
    let main = p.main_pid();
    assert!(
        main > 0 && main != old_main,
        "MainPID {old_main} -> {main} across the restart"
    );
    let exe = p.exe_of(main);
    assert_eq!(exe, "/usr/bin/baton", "/proc/{main}/exe after the restart");
    assert_eq!(p.is_active(SERVICE), "active", "{SERVICE} after the restart");
    let body = p.answers(3);
    summary
        .lines
        .push(format!("restart after the upgrade (not asserted): {stats}"));
    format!(
        "exit 0 in {}; MainPID {old_main} -> {main}, exe {exe:?}; generation {generation} serving ({body:?}); \
         load across the restart (reported, not asserted): {stats}",
        secs(took)
    )
}
