//! Fleet system test: contrib/ansible rolls releases of an app, and baton
//! itself, across three hosts behind HAProxy, under continuous load, the
//! way README's "Fleets" tells an operator to.
//!
//! The hosts are three Debian 13 containers ([`container`], the cached
//! mmdebstrap root, which has openssh-server) named fleet1..fleet3, each
//! booting systemd with sshd and a root key the test generates. They share
//! no network with the machine: the test makes a network namespace of its
//! own ([`container::Network`], `ip netns add baton-net-<pid>-<random>`)
//! with a bridge at 10.213.7.1/24, boots each nspawn inside it with
//! `--network-bridge`, and gives each `host0` 10.213.7.11..13. In the same
//! namespace run HAProxy (Debian 12's, a child of the test with `-db`, its
//! config written by the test: active health checks, retries and
//! redispatch, each choice explained in [`haproxy_config`]), Ansible
//! (ansible-core from PyPI, pinned in tests/fleet/requirements.txt, in a
//! venv under target/ made once) and the load client, whose threads start
//! from a thread that joined the namespace; the load goes to HAProxy on the
//! namespace's own loopback. Nothing is sent to any address outside
//! namespaces the test made.
//!
//! The app is examples/hello with a `serve` script, one directory per
//! release on the controller: v1 and v2 are good, v3 fails at start on
//! every host, v4 fails at start only on fleet2. baton comes as the .deb
//! that `packaging/build deb` makes (0.1.0, and 0.1.1 for the upgrade).
//!
//! 1. `install.yml` (0.1.0, release v1): every host serves v1, HAProxy sees
//!    3 hosts UP; then `install.yml` again under load: changed=0 on every
//!    host, 0 failed requests.
//! 2. `release.yml` v2 under load: every host ends on v2 (`readlink
//!    current` and the serving generation's directory in `baton status
//!    --json`, read on each host, not from Ansible), 0 failed requests.
//! 3. `release.yml` v3 (broken): the play fails at the canary host, which
//!    still serves v2; the other two are untouched (same generation, no
//!    v3 on disk); 0 failed requests.
//! 4. `release.yml` v4 (fails on fleet2, the second batch): the play fails,
//!    every host serves v2 at the end, fleet1 through a rollback (a newer
//!    generation than before), fleet3 untouched; the failed requests are
//!    reported.
//! 5. `upgrade.yml` with the 0.1.1 .deb under load: 0 failed requests,
//!    every host's MainPID and worker pids unchanged, dpkg says 0.1.1,
//!    `baton status` lists one more upgrade.
//!
//! Every scenario prints its figures and the PLAY RECAP lines of its runs;
//! a table at the end gives, per scenario, requests, failed, each host's
//! release, recap lines and seconds. A failing scenario's message carries
//! each host's `systemctl status`, the unit's journal and `baton status`,
//! HAProxy's per-host counters and the end of the playbook's output (whole
//! in target/fleet-logs/). Scenario 1 failing stops the rest.
//!
//! Skipped (loudly) only when not root, when systemd-nspawn, iproute2,
//! ssh, haproxy or python3's venv are missing and cannot be installed, when
//! the Debian 13 root is not cached and cannot be built, or when
//! ansible-core cannot be installed from PyPI; under `CI=true` each is a
//! failure. A playbook missing from contrib/ansible is a failure, never a
//! skip.
//!
//! Alone: `cargo build --examples && cargo test --test fleet -- --nocapture`
//! (as root). On 2 cores, with the .debs, the venv and the Debian 13 root
//! already made, it takes 5-6 minutes, most of it Ansible's (a rolling
//! release with a canary is about 1.5-2 minutes for 3 hosts).

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

// The helpers of tests/it, shared by path (see tests/system.rs).
#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "container/mod.rs"]
mod container;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::baton::{run_setup, target_dir, with_file_lock};
use common::load::{Load, LoadStats};
use common::{example_bin, say, skip, wait_until};
use container::{Container, Network, Options, build_deb, describe, run_bounded, stdout};
use serde_json::Value;

const APP: &str = "myapp";
const SERVICE: &str = "myapp.service";
/// fleet1..fleet3 at <PREFIX>.11..13; the bridge (and HAProxy) at .1.
const HOSTS: u8 = 3;
const PREFIX: [u8; 3] = [10, 213, 7];
/// The app's port on each host, and HAProxy's.
const PORT: u16 = 8080;
const WORKERS: u64 = 2;
const LOAD_THREADS: usize = 4;
const OLD: &str = "0.1.0";
const NEW: &str = "0.1.1";
const PLAYBOOK_TIMEOUT: Duration = Duration::from_secs(900);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Load keeps going this long after a playbook returns, so a host that
/// breaks right after its turn still shows in the counts.
const AFTER: Duration = Duration::from_secs(2);

#[test]
fn ansible_rolls_releases_across_three_hosts_behind_haproxy() {
    let started = Instant::now();
    let Some(tools) = preconditions() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ansible_dir = root.join("contrib/ansible");
    for playbook in ["install.yml", "release.yml", "upgrade.yml"] {
        assert!(
            ansible_dir.join(playbook).is_file(),
            "{} is missing: the fleet test runs the playbooks of contrib/ansible",
            ansible_dir.join(playbook).display()
        );
    }

    let (old_deb, build_old) = build_deb(root, None, &format!("baton_{OLD}-1_amd64.deb"));
    let (new_deb, build_new) = build_deb(root, Some(NEW), &format!("baton_{NEW}-1_amd64.deb"));
    say(&format!(
        "fleet: built {} in {:.1}s and {} in {:.1}s",
        old_deb.display(),
        build_old.as_secs_f64(),
        new_deb.display(),
        build_new.as_secs_f64()
    ));
    let Some(venv) = ansible_venv() else {
        return;
    };
    let Some(debian13) = container::debian13_root().map_err(|why| skip(&why)).ok() else {
        return;
    };
    say(&format!("fleet: Debian 13 root {}", debian13.display()));
    let prepared = started.elapsed();

    let t = Instant::now();
    let fleet = Fleet::start(tools, venv, ansible_dir, old_deb, new_deb);
    let setup = t.elapsed();
    say(&format!(
        "fleet: {HOSTS} hosts up (boot, network, sshd, ansible ping) and HAProxy started in {:.1}s",
        setup.as_secs_f64()
    ));

    let scenarios: [(&str, Scenario); 5] = [
        ("1 install.yml (twice: changed=0)", install),
        ("2 release.yml v2 (good)", good_release),
        ("3 release.yml v3 (broken at start)", broken_release),
        ("4 release.yml v4 (fails on fleet2)", fails_on_second_batch),
        ("5 upgrade.yml baton 0.1.1", upgrade),
    ];
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (i, (name, scenario)) in scenarios.iter().enumerate() {
        if i > 0 && outcomes[0].error.is_some() {
            outcomes.push(Outcome {
                name: (*name).to_owned(),
                error: Some("not run: scenario 1 (install) failed".to_owned()),
                ..Outcome::default()
            });
            continue;
        }
        say(&format!("\n=== fleet: scenario {name}"));
        let mut outcome = Outcome {
            name: (*name).to_owned(),
            ..Outcome::default()
        };
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| scenario(&fleet, &mut outcome)));
        outcome.secs = t.elapsed().as_secs_f64();
        outcome.releases = fleet.releases_line();
        match result {
            Ok(()) => say(&format!(
                "fleet: scenario {name}: ok in {:.1}s: {}",
                outcome.secs, outcome.note
            )),
            Err(panic) => {
                let message = container::panic_message(panic.as_ref());
                say(&format!("fleet: scenario {name}: FAILED after {:.1}s", outcome.secs));
                outcome.error = Some(format!("{message}\n\n{}", fleet.diagnostics()));
            }
        }
        outcomes.push(outcome);
    }

    let t = Instant::now();
    drop(fleet);
    let teardown = t.elapsed();
    say("\n##### fleet: scenarios");
    say(&format!(
        "{:<38} {:>8} {:>6} {:>7}  {:<30} recap",
        "scenario", "requests", "failed", "seconds", "releases"
    ));
    for o in &outcomes {
        say(&format!(
            "{:<38} {:>8} {:>6} {:>7.1}  {:<30} {}{}",
            o.name,
            o.requests,
            o.failed,
            o.secs,
            o.releases,
            o.recap.first().map(String::as_str).unwrap_or("-"),
            if o.error.is_some() { "  FAILED" } else { "" }
        ));
        for line in o.recap.iter().skip(1) {
            say(&format!("{:<38} {:>8} {:>6} {:>7}  {:<30} {line}", "", "", "", "", ""));
        }
    }
    say(&format!(
        "fleet: builds, venv and root {:.1}s · hosts and HAProxy {:.1}s · scenarios {:.1}s · teardown {:.1}s · total {:.1}s",
        prepared.as_secs_f64(),
        setup.as_secs_f64(),
        outcomes.iter().map(|o| o.secs).sum::<f64>(),
        teardown.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| format!("scenario {}: {e}", o.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "fleet: {} of {} scenarios failed:\n\n{}",
        failures.len(),
        outcomes.len(),
        failures.join("\n\n")
    );
}

type Scenario = fn(&Fleet, &mut Outcome);

/// One scenario's figures, for its line in the table.
#[derive(Default)]
struct Outcome {
    name: String,
    requests: u64,
    failed: u64,
    /// "fleet1=v2 fleet2=v2 fleet3=v2", read on the hosts at the end.
    releases: String,
    /// The PLAY RECAP lines of its playbook runs, each prefixed with the run.
    recap: Vec<String>,
    secs: f64,
    note: String,
    error: Option<String>,
}

impl Outcome {
    fn count(&mut self, stats: &LoadStats) {
        self.requests += stats.total();
        self.failed += stats.failed;
    }

    fn recap(&mut self, run: &str, play: &Play) {
        for line in &play.recap {
            self.recap.push(format!("{run}: {line}"));
        }
    }
}

/// Host tools the test runs: where they are.
struct Tools {
    haproxy: PathBuf,
}

/// Root, the container tools, iproute2, ssh, haproxy and python3 (for the
/// venv): `None` after [`skip`] when one is missing and apt cannot
/// install it.
fn preconditions() -> Option<Tools> {
    if !container::can_boot() {
        return None;
    }
    let needs = [
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("haproxy", "haproxy"),
        ("python3", "python3-venv"),
    ];
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        say(&format!("fleet: missing {missing:?}; running apt-get install -y"));
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        let out = run_bounded(cmd, Duration::from_secs(600));
        if let Some((tool, package)) = needs.iter().find(|(tool, _)| which(tool).is_none()) {
            skip(&format!(
                "`{tool}` is missing and `apt-get install -y {package}` did not install it: {}",
                describe(&out)
            ));
            return None;
        }
    }
    Some(Tools {
        haproxy: which("haproxy").expect("haproxy was just found"),
    })
}

fn which(tool: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(tool))
    .find(|p| p.is_file())
}

/// `target/fleet-ansible-venv` with tests/fleet/requirements.txt installed
/// (ansible-core, pinned); made once, again when the requirements change,
/// under a file lock. `None` after [`skip`] when PyPI can't be reached.
fn ansible_venv() -> Option<PathBuf> {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fleet/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let venv = target_dir().join("fleet-ansible-venv");
    let marker = venv.join(".baton-installed-from-requirements.txt");
    let playbook = venv.join("bin/ansible-playbook");
    let made = with_file_lock(&target_dir().join("fleet-ansible-venv.lock"), || {
        // A venv's scripts name its own path in their #! line: one copied
        // with a target/ directory from another worktree cannot run them.
        let here = std::fs::read_to_string(&playbook)
            .is_ok_and(|script| script.starts_with(&format!("#!{}/", venv.display())));
        if here && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
            return Ok(());
        }
        if venv.exists() {
            std::fs::remove_dir_all(&venv).unwrap();
        }
        run_setup(
            "python3 -m venv",
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        );
        let t = Instant::now();
        let mut pip = Command::new(venv.join("bin/pip"));
        pip.args(["install", "--disable-pip-version-check", "--quiet", "-r"])
            .arg(&requirements)
            .stdin(Stdio::null());
        let out = run_bounded(pip, Duration::from_secs(600));
        if !out.status.success() {
            return Err(format!(
                "pip install -r {} (ansible-core from PyPI) failed: {}",
                requirements.display(),
                describe(&out)
            ));
        }
        std::fs::write(&marker, &wanted).unwrap();
        say(&format!(
            "fleet: made {} in {:.1}s",
            venv.display(),
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    });
    match made {
        Ok(()) => Some(venv),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

/// HAProxy, a child of the test inside the namespace. Dropping it kills it.
struct Haproxy {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A row of HAProxy's `show stat` for one host.
#[derive(Clone, Debug, Default)]
struct ServerStat {
    status: String,
    /// Sessions (requests here: one per connection) sent to it.
    sessions: u64,
    /// Connection errors, response errors, retries, redispatches.
    econ: u64,
    eresp: u64,
    retries: u64,
    redispatches: u64,
}

impl std::fmt::Display for ServerStat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sessions={} econ={} eresp={} retries={} redispatches={}",
            self.status, self.sessions, self.econ, self.eresp, self.retries, self.redispatches
        )
    }
}

/// The HAProxy configuration; every choice that matters explained.
fn haproxy_config(net: &Network, socket: &Path) -> String {
    let servers: String = (1..=HOSTS)
        .map(|i| format!("    server fleet{i} {}:{PORT}\n", net.address(10 + i)))
        .collect();
    format!(
        "\
# Written by tests/fleet.rs.
global
    # Where the test reads each host's state and counters (show stat).
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    # A request whose connection to a host fails (refused, reset before any
    # response byte: a host whose socket is gone, after a reboot or a full
    # restart) is tried again, up to 3 times,
    retries 3
    retry-on conn-failure empty-response
    # each time on another host: a dead host costs latency, not a failed
    # request. A baton reload needs none of this (the listening socket never
    # closes); the test reports HAProxy's retries and redispatches per host,
    # so a retry cannot hide a problem from the figures.
    option redispatch 1
    # One request per connection to a host: every request goes through the
    # host's listening socket anew (what a reload must not disturb), and no
    # idle connection to a draining worker is reused.
    option http-server-close

frontend fleet
    # The namespace's loopback (the load client) and the bridge.
    bind 127.0.0.1:{PORT}
    bind {gateway}:{PORT}
    default_backend hosts

backend hosts
    balance roundrobin
    # Active health checks: GET / every 500 ms; 2 failures take a host out,
    # 2 successes put it back.
    option httpchk GET /
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 2
{servers}",
        socket = socket.display(),
        gateway = net.gateway(),
    )
}

/// One booted host.
struct Host {
    name: String,
    address: Ipv4Addr,
    c: Container,
}

/// What a host serves, read on the host itself.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Serving {
    /// `readlink /srv/APP/current`'s last component.
    current: String,
    /// The serving generation's id and the last component of its directory.
    generation: u64,
    release: String,
    /// Ready workers == slots.
    ready: bool,
    /// baton's pid (status) and the serving generation's worker pids.
    pid: i64,
    workers: Vec<i64>,
    /// `upgrades` in `baton status`.
    upgrades: usize,
}

impl Host {
    fn exec(&self, argv: &[&str]) -> Output {
        self.c.exec(argv, COMMAND_TIMEOUT)
    }

    fn status(&self) -> Result<Value, String> {
        let out = self.exec(&["baton", "status", APP, "--json"]);
        if !out.status.success() {
            return Err(format!("{}: baton status {APP} --json: {}", self.name, describe(&out)));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{}: baton status JSON: {e}: {}", self.name, stdout(&out)))
    }

    fn serving(&self) -> Result<Serving, String> {
        let status = self.status()?;
        let sup = &status["supervisor"];
        let id = sup["serving"]
            .as_u64()
            .ok_or_else(|| format!("{}: no serving generation: {status}", self.name))?;
        let generation = sup["generations"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["id"].as_u64() == Some(id)))
            .ok_or_else(|| format!("{}: generation {id} not listed: {status}", self.name))?;
        let last = |path: &str| {
            path.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let link = stdout(&self.exec(&["readlink", &format!("/srv/{APP}/current")]));
        let workers = generation["workers"]
            .as_array()
            .map(|ws| ws.iter().filter_map(|w| w["pid"].as_i64()).collect())
            .unwrap_or_default();
        Ok(Serving {
            current: last(link.trim()),
            generation: id,
            release: last(generation["directory"].as_str().unwrap_or_default()),
            ready: generation["ready"]
                .as_u64()
                .is_some_and(|r| Some(r) == generation["slots"].as_u64() && r > 0),
            pid: status["pid"].as_i64().unwrap_or(-1),
            workers,
            upgrades: status["upgrades"].as_array().map_or(0, Vec::len),
        })
    }

    /// Whether `/srv/APP/releases/NAME` exists.
    fn has_release(&self, name: &str) -> bool {
        self.exec(&["test", "-e", &format!("/srv/{APP}/releases/{name}")])
            .status
            .success()
    }

    fn diagnostics(&self) -> String {
        let mut text = format!("--- {} ({})\n", self.name, self.address);
        for argv in [
            vec!["systemctl", "status", "--no-pager", "-n", "0", SERVICE, "myapp.socket"],
            vec!["journalctl", "--no-pager", "-n", "40", "-u", SERVICE],
            vec!["baton", "status", APP],
            vec!["readlink", "/srv/myapp/current"],
            vec!["ls", "/srv/myapp/releases"],
        ] {
            let out = self.exec(&argv);
            text.push_str(&format!(
                "$ {}\n{}{}",
                argv.join(" "),
                stdout(&out),
                container::stderr(&out)
            ));
        }
        text
    }
}

/// An ansible-playbook run.
struct Play {
    out: Output,
    took: Duration,
    /// The lines after PLAY RECAP, one per host.
    recap: Vec<String>,
    /// Where its whole output is.
    log: PathBuf,
}

impl Play {
    fn ok(&self) -> bool {
        self.out.status.success()
    }

    /// `key=N` of `host`'s recap line.
    fn count(&self, host: &str, key: &str) -> Option<u64> {
        let line = self.recap.iter().find(|l| l.split_whitespace().next() == Some(host))?;
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))?
            .parse()
            .ok()
    }

    /// The last lines of its output, for a failure message.
    fn tail(&self) -> String {
        let text = format!("{}{}", stdout(&self.out), container::stderr(&self.out));
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "ansible-playbook {} after {:.1}s; its last lines (all in {}):\n{}",
            self.out.status,
            self.took.as_secs_f64(),
            self.log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

/// Everything the scenarios use. Fields drop in order: HAProxy, then the
/// hosts, then the network, then the temp dir.
struct Fleet {
    haproxy: Haproxy,
    hosts: Vec<Host>,
    net: Network,
    venv: PathBuf,
    ansible_dir: PathBuf,
    inventory: PathBuf,
    /// vars.json: the role's variables (release v1, the 0.1.0 .deb).
    vars: PathBuf,
    releases: PathBuf,
    new_deb: PathBuf,
    logs: PathBuf,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn start(tools: Tools, venv: PathBuf, ansible_dir: PathBuf, old_deb: PathBuf, new_deb: PathBuf) -> Fleet {
        let dir = tempfile::Builder::new().prefix("baton-fleet-").tempdir().unwrap();
        let logs = target_dir().join("fleet-logs");
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).unwrap();

        // The key Ansible logs in with.
        let key = dir.path().join("id_ed25519");
        let mut keygen = Command::new("ssh-keygen");
        keygen
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "baton-fleet-test", "-f"])
            .arg(&key);
        let out = run_bounded(keygen, COMMAND_TIMEOUT);
        assert!(out.status.success(), "ssh-keygen: {}", describe(&out));
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();

        let releases = dir.path().join("releases");
        make_releases(&releases);

        let net = Network::create(PREFIX);
        say(&format!(
            "fleet: network namespace {} with bridge {} at {}/24",
            net.name(),
            net.bridge(),
            net.gateway()
        ));
        let mut hosts = Vec::new();
        for i in 1..=HOSTS {
            let name = format!("fleet{i}");
            let options = Options {
                hostname: Some(name.clone()),
                network: Some(&net),
            };
            let c = Container::boot_with(container::System::Debian13, &options)
                .expect("the preconditions were checked: a boot that skips is a bug");
            let address = net.attach(&c, 10 + i);
            c.exec(&["mkdir", "-m", "700", "-p", "/root/.ssh"], COMMAND_TIMEOUT);
            c.write_file("/root/.ssh/authorized_keys", &public);
            let out = c.sh("chmod 600 /root/.ssh/authorized_keys && ssh-keygen -A && systemctl start ssh.service");
            assert!(out.status.success(), "{name}: starting sshd: {}", describe(&out));
            say(&format!(
                "fleet: {name} ({}) booted in {:.1}s at {address}, sshd started",
                c.label(),
                c.boot_time.as_secs_f64()
            ));
            hosts.push(Host { name, address, c });
        }

        let inventory = dir.path().join("inventory.ini");
        let mut ini = String::from("[baton_hosts]\n");
        for h in &hosts {
            ini.push_str(&format!("{} ansible_host={}\n", h.name, h.address));
        }
        ini.push_str(&format!(
            "\n[baton_hosts:vars]\nansible_user=root\nansible_ssh_private_key_file={}\n\
             ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n\
             ansible_python_interpreter=/usr/bin/python3\n",
            key.display()
        ));
        std::fs::write(&inventory, ini).unwrap();
        let vars = dir.path().join("vars.json");
        let role_vars = serde_json::json!({
            "baton_package": old_deb.display().to_string(),
            "baton_app": APP,
            "baton_listen": format!("0.0.0.0:{PORT}"),
            "baton_workers": WORKERS,
            "baton_command": ["./serve"],
            "baton_release": "v1",
            "baton_release_src": releases.join("v1").display().to_string(),
            // release.yml's canary hold on the first host (the role's
            // default is longer): long enough for a worker that dies soon
            // after its start to abort the canary, short enough for a test.
            "baton_canary_hold": "3s",
        });
        std::fs::write(&vars, serde_json::to_string_pretty(&role_vars).unwrap()).unwrap();

        let socket = dir.path().join("haproxy.sock");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(&net, &socket)).unwrap();
        let log = logs.join("haproxy.log");
        let file = std::fs::File::create(&log).unwrap();
        // setpriv: HAProxy dies with the test thread that started it.
        let child = net
            .command("setpriv")
            .args(["--pdeathsig", "SIGKILL", "--"])
            .arg(&tools.haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting haproxy");
        let haproxy = Haproxy { child, socket, log };
        let mut fleet = Fleet {
            haproxy,
            hosts,
            net,
            venv,
            ansible_dir,
            inventory,
            vars,
            releases,
            new_deb,
            logs,
            dir,
        };
        assert!(
            wait_until(Duration::from_secs(15), || fleet.haproxy_stats().is_ok()),
            "HAProxy did not answer on {} within 15s: {:?}; its log:\n{}",
            fleet.haproxy.socket.display(),
            fleet.haproxy_stats().err(),
            std::fs::read_to_string(&fleet.haproxy.log).unwrap_or_default()
        );
        if let Ok(Some(status)) = fleet.haproxy.child.try_wait() {
            panic!(
                "HAProxy exited ({status}); its log:\n{}",
                std::fs::read_to_string(&fleet.haproxy.log).unwrap_or_default()
            );
        }

        // Ansible reaches every host over ssh before any playbook runs, so
        // an ssh problem is not mistaken for a playbook's.
        let ping = || {
            let mut cmd = fleet.ansible("ansible");
            cmd.args(["baton_hosts", "-i"])
                .arg(&fleet.inventory)
                .args(["-m", "ansible.builtin.ping"]);
            run_bounded(cmd, Duration::from_secs(120))
        };
        let t = Instant::now();
        let mut out = ping();
        // sshd may still be starting: a few tries, 2 s apart.
        for _ in 0..5 {
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
            out = ping();
        }
        assert!(
            out.status.success(),
            "ansible -m ping to the 3 hosts failed: {}\n{}",
            describe(&out),
            fleet.diagnostics()
        );
        say(&format!(
            "fleet: ansible -m ping: all hosts in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
        fleet
    }

    /// `ip netns exec NS <venv>/bin/<tool>`, from contrib/ansible, with an
    /// environment of its own (home, temp and ssh control dirs in the temp
    /// dir; no colours).
    fn ansible(&self, tool: &str) -> Command {
        let home = self.dir.path().join("ansible-home");
        let mut cmd = self.net.command(self.venv.join("bin").join(tool));
        cmd.current_dir(&self.ansible_dir)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.venv.join("bin").display()),
            )
            .env("HOME", self.dir.path())
            .env("LANG", "C.UTF-8")
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", home.join("cp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env("ANSIBLE_PIPELINING", "True")
            .stdin(Stdio::null());
        cmd
    }

    /// `ansible-playbook -i INV PLAYBOOK -e @vars.json EXTRA...`, bounded;
    /// prints and returns its recap lines, and keeps its whole output in
    /// target/fleet-logs/<log>.log.
    fn playbook(&self, log: &str, playbook: &str, extra: &[String]) -> Play {
        let mut cmd = self.ansible("ansible-playbook");
        cmd.arg("-i")
            .arg(&self.inventory)
            .arg(playbook)
            .arg("-e")
            .arg(format!("@{}", self.vars.display()));
        for e in extra {
            cmd.args(["-e", e]);
        }
        say(&format!("fleet: ansible-playbook {playbook} {}", extra.join(" ")));
        let t = Instant::now();
        let out = run_bounded(cmd, PLAYBOOK_TIMEOUT);
        let took = t.elapsed();
        let text = stdout(&out);
        let log = self.logs.join(format!("{log}.log"));
        std::fs::write(&log, format!("{text}\n--- stderr\n{}", container::stderr(&out))).unwrap();
        let recap: Vec<String> = text
            .lines()
            .skip_while(|l| !l.starts_with("PLAY RECAP"))
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| l.contains(" : ok="))
            .collect();
        say(&format!(
            "fleet: {playbook}: {} in {:.1}s; PLAY RECAP:\n  {}",
            out.status,
            took.as_secs_f64(),
            recap.join("\n  ")
        ));
        Play { out, took, recap, log }
    }

    fn release_vars(&self, release: &str) -> Vec<String> {
        vec![
            format!("baton_release={release}"),
            format!("baton_release_src={}", self.releases.join(release).display()),
        ]
    }

    /// Load through HAProxy, from inside the namespace.
    fn load(&self) -> Load {
        let front = SocketAddr::from(([127, 0, 0, 1], PORT));
        let load = self.net.run(move || Load::start(front, "/", LOAD_THREADS));
        std::thread::sleep(Duration::from_millis(500));
        load
    }

    /// HAProxy's `show stat` rows of the hosts, by name.
    fn haproxy_stats(&self) -> Result<BTreeMap<String, ServerStat>, String> {
        let mut stream = UnixStream::connect(&self.haproxy.socket).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream.write_all(b"show stat\n").map_err(|e| format!("write: {e}"))?;
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(|e| format!("read: {e}"))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .ok_or_else(|| format!("no header in {text:?}"))?
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st), Some(stot), Some(econ), Some(eresp), Some(wretr), Some(wredis)) = (
            col("pxname"),
            col("svname"),
            col("status"),
            col("stot"),
            col("econ"),
            col("eresp"),
            col("wretr"),
            col("wredis"),
        ) else {
            return Err(format!("unexpected header {header:?}"));
        };
        let mut rows = BTreeMap::new();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.get(px) != Some(&"hosts") || !f.get(sv).is_some_and(|s| s.starts_with("fleet")) {
                continue;
            }
            let n = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            rows.insert(
                f[sv].to_owned(),
                ServerStat {
                    status: f.get(st).unwrap_or(&"?").to_string(),
                    sessions: n(stot),
                    econ: n(econ),
                    eresp: n(eresp),
                    retries: n(wretr),
                    redispatches: n(wredis),
                },
            );
        }
        Ok(rows)
    }

    /// Waits until HAProxy has every host UP.
    fn wait_all_up(&self, timeout: Duration) {
        let mut last = Ok(BTreeMap::new());
        let up = wait_until(timeout, || {
            last = self.haproxy_stats();
            last.as_ref()
                .is_ok_and(|rows| rows.len() == usize::from(HOSTS) && rows.values().all(|r| r.status == "UP"))
        });
        assert!(
            up,
            "HAProxy does not see the {HOSTS} hosts UP after {timeout:?}: {last:?}"
        );
    }

    /// Each host's [`Serving`], or why not.
    fn serving(&self) -> Vec<Result<Serving, String>> {
        self.hosts.iter().map(Host::serving).collect()
    }

    fn serving_ok(&self) -> Vec<Serving> {
        self.serving()
            .into_iter()
            .map(|s| s.unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// "fleet1=v2 fleet2=v2 fleet3=v2" (the serving generation's release;
    /// "current→X" added where the link says otherwise).
    fn releases_line(&self) -> String {
        self.hosts
            .iter()
            .zip(self.serving())
            .map(|(h, s)| match s {
                Ok(s) if s.current == s.release => format!("{}={}", h.name, s.release),
                Ok(s) => format!("{}={}(current→{})", h.name, s.release, s.current),
                Err(_) => format!("{}=?", h.name),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn stats_line(&self) -> String {
        match self.haproxy_stats() {
            Ok(rows) => rows
                .iter()
                .map(|(name, r)| format!("{name}: {r}"))
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("HAProxy stats: {e}"),
        }
    }

    fn diagnostics(&self) -> String {
        let mut text = format!("HAProxy: {}\n", self.stats_line());
        for h in &self.hosts {
            text.push_str(&h.diagnostics());
        }
        text
    }

    /// Asserts every host serves `release` (its generation ready) and
    /// `current` points to it.
    fn assert_all_on(&self, release: &str) -> Vec<Serving> {
        let serving = self.serving_ok();
        for (h, s) in self.hosts.iter().zip(&serving) {
            assert!(
                s.release == release && s.current == release && s.ready,
                "{} should serve {release} (and current → {release}): {s:?}",
                h.name
            );
        }
        serving
    }
}

impl Drop for Fleet {
    /// Powers the hosts off side by side (each may take seconds); then the
    /// fields go: HAProxy, the network, the temp dir.
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for host in self.hosts.drain(..) {
                s.spawn(move || drop(host));
            }
        });
    }
}

/// The releases on the controller: hello and a serve script each.
fn make_releases(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let hello = example_bin("hello");
    for (name, pre) in [
        ("v1", ""),
        ("v2", ""),
        (
            "v3",
            "echo 'release v3 is broken: serve refuses to start (the fleet test'\\''s broken release)' >&2\nexit 1\n",
        ),
        (
            "v4",
            "if [ \"$(uname -n)\" = fleet2 ]; then\n    \
             echo 'release v4 fails on fleet2 only (the fleet test'\\''s second-batch failure)' >&2\n    exit 1\nfi\n",
        ),
    ] {
        let release = dir.join(name);
        std::fs::create_dir_all(&release).unwrap();
        std::fs::copy(&hello, release.join("hello")).unwrap();
        let serve = release.join("serve");
        std::fs::write(
            &serve,
            format!("#!/bin/sh\n# Release {name} of the fleet test's app.\n{pre}exec ./hello\n"),
        )
        .unwrap();
        std::fs::set_permissions(&serve, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// 1. install.yml, then again under load: changed=0, 0 failed.
fn install(f: &Fleet, o: &mut Outcome) {
    let play = f.playbook("1-install", "install.yml", &[]);
    o.recap("install", &play);
    assert!(play.ok(), "install.yml failed: {}", play.tail());
    let mut last = Vec::new();
    let served = wait_until(Duration::from_secs(30), || {
        last = f.serving();
        last.iter().all(|s| s.as_ref().is_ok_and(|s| s.ready))
    });
    assert!(served, "not every host serves after install.yml: {last:?}");
    f.assert_all_on("v1");
    f.wait_all_up(Duration::from_secs(15));

    let before = f.haproxy_stats().unwrap();
    let load = f.load();
    let again = f.playbook("1-install-again", "install.yml", &[]);
    std::thread::sleep(AFTER);
    let stats = load.stop();
    o.count(&stats);
    o.recap("install again", &again);
    assert!(again.ok(), "install.yml (second run) failed: {}", again.tail());
    for h in &f.hosts {
        assert_eq!(
            again.count(&h.name, "changed"),
            Some(0),
            "{}: the second install.yml run changed something (recap {:?}): {}",
            h.name,
            again.recap,
            again.tail()
        );
    }
    assert_eq!(
        stats.failed, 0,
        "failed requests during the second install.yml: {stats}"
    );
    assert!(stats.ok >= 50, "too little load to mean anything: {stats}");
    let after = f.haproxy_stats().unwrap();
    for (name, row) in &after {
        let got = row.sessions - before.get(name).map_or(0, |r| r.sessions);
        assert!(got > 0, "HAProxy sent no request to {name}: {}", f.stats_line());
    }
    f.assert_all_on("v1");
    o.note = format!(
        "install {:.1}s, again {:.1}s (changed=0 on all); load: {stats}; HAProxy: {}",
        play.took.as_secs_f64(),
        again.took.as_secs_f64(),
        f.stats_line()
    );
}

/// 2. release.yml v2 under load: every host on v2, 0 failed.
fn good_release(f: &Fleet, o: &mut Outcome) {
    let before = f.serving_ok();
    let load = f.load();
    let play = f.playbook("2-release-v2", "release.yml", &f.release_vars("v2"));
    std::thread::sleep(AFTER);
    let stats = load.stop();
    o.count(&stats);
    o.recap("release v2", &play);
    assert!(play.ok(), "release.yml v2 failed: {}", play.tail());
    let after = f.assert_all_on("v2");
    for ((h, b), a) in f.hosts.iter().zip(&before).zip(&after) {
        assert!(
            a.generation > b.generation,
            "{}: no new generation ({} before, {} after)",
            h.name,
            b.generation,
            a.generation
        );
    }
    assert_eq!(stats.failed, 0, "failed requests during release v2: {stats}");
    assert!(stats.ok >= 50, "too little load to mean anything: {stats}");
    f.wait_all_up(Duration::from_secs(10));
    o.note = format!(
        "{:.1}s; load: {stats}; HAProxy: {}",
        play.took.as_secs_f64(),
        f.stats_line()
    );
}

/// 3. release.yml v3 (fails at start): stops at the canary host, nothing
///    else touched, 0 failed.
fn broken_release(f: &Fleet, o: &mut Outcome) {
    let before = f.serving_ok();
    let load = f.load();
    let play = f.playbook("3-release-v3-broken", "release.yml", &f.release_vars("v3"));
    std::thread::sleep(AFTER);
    let stats = load.stop();
    o.count(&stats);
    o.recap("release v3", &play);
    assert!(!play.ok(), "release.yml v3 (broken) succeeded: {}", play.tail());
    let output = stdout(&play.out);
    assert!(
        output.contains("release v3 is broken"),
        "the play's output does not carry the broken release's stderr line: {}",
        play.tail()
    );
    assert!(
        play.count("fleet1", "failed").unwrap_or(0) > 0,
        "the play should fail at fleet1, the canary host (recap {:?})",
        play.recap
    );
    for host in ["fleet2", "fleet3"] {
        assert_eq!(
            play.count(host, "changed").unwrap_or(0),
            0,
            "{host}: changed by a play that should have stopped at fleet1 (recap {:?})",
            play.recap
        );
    }
    let after = f.assert_all_on("v2");
    for (i, ((h, b), a)) in f.hosts.iter().zip(&before).zip(&after).enumerate() {
        if i > 0 {
            assert_eq!(
                a.generation, b.generation,
                "{}: touched by a play that should have stopped at fleet1",
                h.name
            );
            assert!(!h.has_release("v3"), "{}: v3 was placed on it", h.name);
        }
    }
    assert_eq!(stats.failed, 0, "failed requests during the broken release: {stats}");
    assert!(stats.ok >= 50, "too little load to mean anything: {stats}");
    o.note = format!(
        "failed as it should, {:.1}s; fleet1 gen {}→{}; load: {stats}; HAProxy: {}",
        play.took.as_secs_f64(),
        before[0].generation,
        after[0].generation,
        f.stats_line()
    );
}

/// 4. release.yml v4 (fails on fleet2): fleet1 rolled back, fleet3
///    untouched, all on v2; failed requests reported.
fn fails_on_second_batch(f: &Fleet, o: &mut Outcome) {
    let before = f.serving_ok();
    let load = f.load();
    let play = f.playbook("4-release-v4-fleet2", "release.yml", &f.release_vars("v4"));
    std::thread::sleep(AFTER);
    let stats = load.stop();
    o.count(&stats);
    o.recap("release v4", &play);
    assert!(
        !play.ok(),
        "release.yml v4 (fails on fleet2) succeeded: {}",
        play.tail()
    );
    // `systemctl reload` says only that the job failed; the release's
    // own line is in fleet2's journal, where the play's message points.
    let journal = stdout(&f.hosts[1].exec(&["journalctl", "--no-pager", "-u", SERVICE]));
    assert!(
        journal.contains("release v4 fails on fleet2"),
        "fleet2's journal of {SERVICE} does not carry the release's stderr line: {}",
        play.tail()
    );
    assert!(
        play.count("fleet2", "failed").unwrap_or(0) > 0,
        "the play should fail at fleet2 (recap {:?})",
        play.recap
    );
    assert_eq!(
        play.count("fleet3", "changed").unwrap_or(0),
        0,
        "fleet3: changed by a play that should have stopped at fleet2 (recap {:?})",
        play.recap
    );
    let after = f.assert_all_on("v2");
    assert!(
        after[0].generation >= before[0].generation + 2,
        "fleet1 should have gone to v4 and back (two new generations): {} before, {} after",
        before[0].generation,
        after[0].generation
    );
    assert_eq!(
        after[2].generation, before[2].generation,
        "fleet3 was touched by a play that should have stopped at fleet2"
    );
    assert!(!f.hosts[2].has_release("v4"), "fleet3: v4 was placed on it");
    assert!(stats.ok >= 50, "too little load to mean anything: {stats}");
    o.note = format!(
        "failed as it should, {:.1}s; fleet1 gen {}→{} (rolled back), fleet2 gen {}→{}; load: {stats} \
         (reported, not asserted); HAProxy: {}",
        play.took.as_secs_f64(),
        before[0].generation,
        after[0].generation,
        before[1].generation,
        after[1].generation,
        f.stats_line()
    );
}

/// 5. upgrade.yml with the 0.1.1 .deb under load: 0 failed, no worker
///    restarted.
fn upgrade(f: &Fleet, o: &mut Outcome) {
    let before = f.serving_ok();
    let load = f.load();
    let play = f.playbook(
        "5-upgrade",
        "upgrade.yml",
        &[format!("baton_package={}", f.new_deb.display())],
    );
    std::thread::sleep(AFTER);
    let stats = load.stop();
    o.count(&stats);
    o.recap("upgrade", &play);
    assert!(play.ok(), "upgrade.yml failed: {}", play.tail());
    // Whatever each host served before (v2 after scenarios 2-4), it
    // serves still, from the same processes.
    let after = f.serving_ok();
    for ((h, b), a) in f.hosts.iter().zip(&before).zip(&after) {
        assert!(
            a.ready && (&a.release, &a.current) == (&b.release, &b.current),
            "{}: served {b:?} before the upgrade, {a:?} after",
            h.name
        );
        assert_eq!(a.pid, b.pid, "{}: baton's pid changed across the upgrade", h.name);
        assert_eq!(
            (a.generation, &a.workers),
            (b.generation, &b.workers),
            "{}: a worker restarted across the upgrade",
            h.name
        );
        assert_eq!(
            a.upgrades,
            b.upgrades + 1,
            "{}: baton status does not list one more upgrade",
            h.name
        );
        let dpkg = stdout(&h.exec(&["dpkg-query", "-W", "-f", "${Version}", "baton"]));
        assert_eq!(dpkg.trim(), format!("{NEW}-1"), "{}: dpkg-query -W baton", h.name);
        let exe = stdout(&h.exec(&["readlink", &format!("/proc/{}/exe", a.pid)]));
        assert_eq!(exe.trim(), "/usr/bin/baton", "{}: baton's /proc/PID/exe", h.name);
    }
    assert_eq!(stats.failed, 0, "failed requests during the upgrade: {stats}");
    assert!(stats.ok >= 50, "too little load to mean anything: {stats}");
    o.note = format!(
        "{:.1}s; pids and workers unchanged, dpkg {NEW}-1, one more upgrade in status on each host; load: {stats}",
        play.took.as_secs_f64()
    );
}
