//! A real systemd booted in a container, for the system and package tests,
//! on either of two systems ([`System`]):
//!
//! - Debian 12 (systemd 252): an overlay with `lowerdir=/` on a temp dir, so
//!   the container is the host itself (Debian 12) and sees its files at the
//!   same absolute paths;
//! - Debian 13 (systemd 257): an overlay with `lowerdir=` an mmdebstrap
//!   root of trixie, built once by `tests/container/debian13-root` and
//!   cached under `target/debian13/` (keyed by its include list). The
//!   container sees none of the host's files: what a scenario needs from the
//!   host (this checkout's binaries, the example apps, wheels) is copied in
//!   ([`Container::install_host_file`], or the suites' own copies).
//!
//! Either way everything the container writes lands in the overlay only,
//! and every boot starts from the same clean lower layer. Then:
//!
//! - `systemd-nspawn -D root --register=no --keep-unit -M baton-test-<random> -b`,
//!   booting a small target (journald, sysinit and sockets; no getty, no
//!   services that would bind ports on the shared host network);
//! - commands run inside with `nsenter -t <container's systemd> -a`;
//! - host networking is shared, so a port listened on inside is reachable
//!   from the test on 127.0.0.1; or, with [`Container::boot_with`] and a
//!   [`Network`] (a network namespace of the test's own with a bridge),
//!   the container gets a veth on that bridge (`--network-bridge`, nspawn
//!   started inside the namespace) and an address of the test's choosing,
//!   and is reachable only from inside that namespace (tests/fleet.rs).
//!
//! [`Container::label`] names the system with the systemd version that
//! `systemctl --version` reports inside ("Debian 13 (systemd 257)"); the
//! suites put it in every failure and summary line.
//!
//! Dropping a [`Container`] powers it off (SIGTERM to nspawn, bounded, then
//! SIGKILL to nspawn and to the container's init), unmounts the overlay (lazily
//! if it must) and removes the temp dir, also when a test panics. nspawn is
//! started with a parent-death signal, so even a killed test process doesn't
//! leave a container running; a later run removes the overlay such a run left
//! behind.
//!
//! [`Container::boot`] returns `None`, after printing `SKIPPED: <reason>`
//! to the real stderr, only when a precondition is missing: not root;
//! systemd-nspawn missing and `apt-get install -y systemd-container` could
//! not install it; for Debian 13, no cached root and mmdebstrap missing (and
//! not installable) or the Debian mirror not answering. And only outside
//! CI: under `CI=true` a missing precondition fails the test (see [`skip`]).
//! Anything else that goes wrong is a test failure.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{say, skip};

/// PATH for every command run inside (and for the tools run on the host).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Prefix of the temp dirs (`<tmp>/baton-systest-XXXX`).
const DIR_PREFIX: &str = "baton-systest-";
/// The target the container boots: journald (and what every service needs,
/// sysinit and sockets), without timers, gettys or the host's daemons
/// (postgres, sshd...) that multi-user.target would start on the shared network.
const TARGET_NAME: &str = "baton-test.target";
const TARGET_UNIT: &str = "\
[Unit]
Description=baton system tests: sysinit, sockets and journald only
Requires=sysinit.target sockets.target systemd-journald.service
Wants=dbus.socket
After=sysinit.target sockets.target systemd-journald.service dbus.socket
AllowIsolate=yes
";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The systems the suites run on, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// The host itself (an overlay of `/`): Debian 12, systemd 252.
    Debian12,
    /// An mmdebstrap root of trixie: Debian 13, systemd 257.
    Debian13,
}

impl System {
    pub const ALL: [System; 2] = [System::Debian12, System::Debian13];
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Debian12 => "Debian 12",
            System::Debian13 => "Debian 13",
        })
    }
}

/// The Debian 13 root (see `tests/container/debian13-root`), built on first
/// use. `Err` is a missing precondition (for [`skip`]); a failed build
/// panics.
pub fn debian13_root() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/container/debian13-root");
    let target = crate::common::baton::target_dir();
    let t = Instant::now();
    let mut cmd = Command::new(&script);
    cmd.arg(&target).env("PATH", PATH).stdin(Stdio::null());
    let out = run_bounded(cmd, Duration::from_secs(1500));
    let log = stderr(&out);
    match out.status.code() {
        Some(0) => {
            let root = PathBuf::from(stdout(&out).trim());
            if !log.trim().is_empty() {
                say(&format!(
                    "Debian 13 root ready in {:.1}s:\n{}",
                    t.elapsed().as_secs_f64(),
                    log.trim()
                ));
            }
            assert!(
                root.join("usr/lib/systemd/systemd").exists(),
                "{} printed {}, which has no systemd",
                script.display(),
                root.display()
            );
            Ok(root)
        }
        Some(2) => Err(format!("Debian 13: {}", log.trim())),
        _ => panic!(
            "Debian 13: {} {} failed ({}):\n{}",
            script.display(),
            target.display(),
            out.status,
            log.trim()
        ),
    }
}

/// How [`Container::boot_with`] boots a container, beyond the defaults of
/// [`Container::boot`] (the host's network, the root's own hostname).
#[derive(Default)]
pub struct Options<'a> {
    /// Written to /etc/hostname and given to nspawn (`--hostname`).
    pub hostname: Option<String>,
    /// A private network: the container gets a veth on its bridge.
    pub network: Option<&'a Network>,
}

/// Prefix of the network namespaces [`Network::create`] makes:
/// `baton-net-<pid of the test>-<random>`.
const NETNS_PREFIX: &str = "baton-net-";
/// The bridge inside each namespace (the namespace is the test's own, so
/// the name is the same in every one).
const BRIDGE: &str = "br-baton";

/// A network namespace of the test's own (`ip netns add`), with a bridge in
/// it that holds the address `<prefix>.1/24`. Containers booted with it
/// ([`Options::network`]) get a veth on that bridge and, from
/// [`Network::attach`], the address `<prefix>.N/24`. Nothing in it routes
/// anywhere else: no default route, no link to the host's namespace, so the
/// traffic of whatever runs inside stays among the test's own addresses.
///
/// Dropping it deletes the namespace (the bridge, and the veths of
/// containers already gone, go with it). A namespace a killed run left
/// behind (its owner pid, in the name, is gone) is deleted by the next
/// [`Network::create`].
pub struct Network {
    name: String,
    prefix: [u8; 3],
}

impl Network {
    /// Creates the namespace, its bridge `<prefix>.1/24` and its loopback.
    /// Panics if `ip` fails (the caller checked for root and iproute2).
    pub fn create(prefix: [u8; 3]) -> Network {
        remove_stale_networks();
        let random = RandomState::new().hash_one((std::process::id(), Instant::now()));
        let network = Network {
            name: format!("{NETNS_PREFIX}{}-{:06x}", std::process::id(), random & 0xff_ffff),
            prefix,
        };
        ip(&["netns", "add", &network.name]);
        // From here on a panic drops `network`, which deletes the namespace.
        let gateway = format!("{}/24", network.gateway());
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", BRIDGE, "type", "bridge"],
            vec!["addr", "add", gateway.as_str(), "dev", BRIDGE],
            vec!["link", "set", BRIDGE, "up"],
        ] {
            let mut argv = vec!["-n", network.name.as_str()];
            argv.extend(args);
            ip(&argv);
        }
        network
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn bridge(&self) -> &str {
        BRIDGE
    }

    /// The bridge's address, `<prefix>.1`.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.address(1)
    }

    /// `<prefix>.<host>`.
    pub fn address(&self, host: u8) -> std::net::Ipv4Addr {
        let [a, b, c] = self.prefix;
        std::net::Ipv4Addr::new(a, b, c, host)
    }

    /// Gives the container's `host0` the address `<prefix>.<host>/24` and
    /// brings it (and `lo`) up, from the host with the host's `ip` in the
    /// container's network namespace. Returns the address.
    pub fn attach(&self, c: &Container, host: u8) -> std::net::Ipv4Addr {
        let address = self.address(host);
        let cidr = format!("{address}/24");
        let init = c.init_pid().to_string();
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", cidr.as_str(), "dev", "host0"],
            vec!["link", "set", "host0", "up"],
        ] {
            let mut cmd = Command::new("nsenter");
            cmd.args(["-t", &init, "-n", "ip"]).args(&args).env("PATH", PATH);
            let out = run_bounded(cmd, Duration::from_secs(30));
            assert!(
                out.status.success(),
                "container {}: ip {}: {}",
                c.name(),
                args.join(" "),
                describe(&out)
            );
        }
        address
    }

    /// `ip netns exec <name> program`: a command to run inside.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread of its own that has joined this namespace
    /// (`setns`), and returns what it returns. Threads that `f` starts
    /// stay in the namespace after it returns (a load client's).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
                f()
            })
            .expect("spawning a thread for the network namespace")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", &self.name]).env("PATH", PATH);
        let out = run_bounded(cmd, Duration::from_secs(30));
        if !out.status.success() {
            say(&format!("ip netns del {}: {}", self.name, describe(&out)));
        }
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args).env("PATH", PATH);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "ip {}: {}", args.join(" "), describe(&out));
}

/// Namespaces of [`Network`]s whose owner (the pid in the name) is gone.
fn remove_stale_networks() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        say(&format!("removing a stale test network namespace: {name}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", &name]).env("PATH", PATH);
        let _ = run_bounded(cmd, Duration::from_secs(30));
    }
}

/// `packaging/build deb [--version V]` in the checkout `root`: the .deb
/// (`target/packaging/<expected>`, checked to be new) and how long the
/// build took. Panics with the build's output if it fails.
pub fn build_deb(root: &Path, version: Option<&str>, expected: &str) -> (PathBuf, Duration) {
    let t = Instant::now();
    let before = std::time::SystemTime::now() - Duration::from_secs(2);
    let mut cmd = Command::new(root.join("packaging/build"));
    cmd.arg("deb").current_dir(root).stdin(Stdio::null());
    if let Some(v) = version {
        cmd.args(["--version", v]);
    }
    let out = run_bounded(cmd, Duration::from_secs(600));
    let took = t.elapsed();
    let what = format!(
        "packaging/build deb{}",
        version.map(|v| format!(" --version {v}")).unwrap_or_default()
    );
    assert!(out.status.success(), "{what} failed after {took:?}: {}", describe(&out));
    let deb = root.join("target/packaging").join(expected);
    let modified = std::fs::metadata(&deb).and_then(|m| m.modified()).unwrap_or_else(|e| {
        panic!(
            "{what} exited 0 but {} is missing ({e}): {}",
            deb.display(),
            describe(&out)
        )
    });
    assert!(
        modified >= before,
        "{what} exited 0 but did not (re)write {} (it is older than the build): {}",
        deb.display(),
        describe(&out)
    );
    (deb, took)
}

/// A booted container. See the module documentation.
pub struct Container {
    name: String,
    system: System,
    /// What `systemctl --version` says inside: "252", "257".
    systemd_version: String,
    dir: PathBuf,
    root: PathBuf,
    mounted: bool,
    nspawn: Option<Child>,
    /// The container's own cgroups (one per hierarchy), removed at teardown.
    cgroups: Vec<PathBuf>,
    /// Host pid of the container's systemd, and its start time (to never
    /// signal a recycled pid).
    init: Option<(i32, u64)>,
    /// From spawning nspawn to `is-system-running` saying running/degraded.
    pub boot_time: Duration,
}

/// For a test that prepares things on the host before it boots a
/// container: whether it can run here. If not, it has said SKIPPED (or
/// panicked under CI, see [`skip`]) and the test returns.
pub fn can_boot() -> bool {
    match skip_reason() {
        Some(reason) => {
            skip(&reason);
            false
        }
        None => true,
    }
}

/// Why the system tests can't run here, after trying to install what is
/// missing; `None` when they can.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the system tests boot systemd in a container and need root".to_owned());
    }
    for tool in ["nsenter", "setpriv", "mount", "umount", "timeout"] {
        if which(tool).is_none() {
            return Some(format!("`{tool}` is not installed (util-linux / coreutils)"));
        }
    }
    if which("systemd-nspawn").is_none() {
        say("system tests: systemd-nspawn is missing; running `apt-get install -y systemd-container`");
        let install = |args: &[&str]| {
            let mut cmd = Command::new("apt-get");
            cmd.args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null());
            run_bounded(cmd, Duration::from_secs(600))
        };
        let mut out = install(&["install", "-y", "-qq", "systemd-container"]);
        if !out.status.success() {
            let _ = install(&["update", "-qq"]);
            out = install(&["install", "-y", "-qq", "systemd-container"]);
        }
        if which("systemd-nspawn").is_none() {
            return Some(format!(
                "systemd-nspawn is missing and `apt-get install -y systemd-container` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    None
}

impl Container {
    /// Boots a container, or (see [`skip`] and [`skip_reason`]) prints
    /// `SKIPPED: <reason>` and returns `None`, or under `CI=true` panics with
    /// the reason. Panics if the boot itself fails.
    pub fn boot(system: System) -> Option<Container> {
        Container::boot_with(system, &Options::default())
    }

    /// [`Container::boot`] with a hostname and, optionally, a network of
    /// its own: a veth on `network`'s bridge (`--network-bridge`), nspawn
    /// started inside that namespace. The container's end (`host0`) gets
    /// no address here; see [`Network::attach`].
    pub fn boot_with(system: System, options: &Options) -> Option<Container> {
        if let Some(reason) = skip_reason() {
            skip(&reason);
            return None;
        }
        let lower = match system {
            System::Debian12 => PathBuf::from("/"),
            System::Debian13 => match debian13_root() {
                Ok(root) => root,
                Err(reason) => {
                    skip(&reason);
                    return None;
                }
            },
        };
        remove_stale_overlays();

        let started = Instant::now();
        let random = RandomState::new().hash_one((std::process::id(), Instant::now()));
        let name = format!("baton-test-{:012x}", random & 0xffff_ffff_ffff);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .expect("creating the container's temp dir")
            .keep();
        let mut c = Container {
            name,
            system,
            systemd_version: String::new(),
            root: dir.join("root"),
            dir,
            mounted: false,
            nspawn: None,
            cgroups: Vec::new(),
            init: None,
            boot_time: Duration::ZERO,
        };
        // From here on, a panic drops `c`, which cleans up whatever exists.
        std::fs::write(c.dir.join("owner"), std::process::id().to_string()).expect("writing the owner file");
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir(c.dir.join(sub)).expect("creating the overlay dirs");
        }
        let overlay = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            c.dir.join("upper").display(),
            c.dir.join("work").display()
        );
        let mut mount = Command::new("mount");
        mount
            .args(["-t", "overlay", "overlay", "-o", &overlay])
            .arg(&c.root)
            .env("PATH", PATH);
        let out = run_bounded(mount, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "{system}: mounting the overlay on {} failed: {}",
            c.root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        c.mounted = true;
        c.write_file(&format!("/etc/systemd/system/{TARGET_NAME}"), TARGET_UNIT);
        if let Some(hostname) = &options.hostname {
            c.write_file("/etc/hostname", &format!("{hostname}\n"));
        }

        let log = std::fs::File::create(c.dir.join("nspawn.log")).expect("creating nspawn.log");
        // setpriv: if the thread that started it dies (a killed test run),
        // nspawn gets SIGTERM and powers the container off.
        //
        // With --keep-unit nspawn makes its own cgroup the container's root
        // cgroup, so every container gets a fresh one: two containers that
        // shared one would share `/system.slice/myapp.service`, and a
        // `systemctl stop` in one would kill the other's processes.
        let cgroups = c.make_cgroups();
        // Debian 13 boots into a pure cgroup2 tree (/sys/fs/cgroup), the
        // layout every Debian 13 machine has, rather than this host's hybrid
        // one (which systemd 257 boots too, but marks tainted "cgroupsv1").
        // Debian 12 keeps the host's layout, as the host itself runs it.
        let mut child = Command::new("sh");
        child.env_clear();
        if system == System::Debian13 {
            child.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1");
        }
        child.args([
            "-c",
            r#"for cg in $BATON_TEST_CGROUPS; do echo $$ > "$cg/cgroup.procs" || exit 125; done; exec "$@""#,
            "sh",
        ]);
        // nsenter --net (not `ip netns exec`, which remounts /sys and so
        // hides the cgroup tree nspawn needs) execs the rest in the
        // network's namespace: nspawn makes the veth there and puts its
        // host end on the bridge.
        if let Some(network) = options.network {
            child.args(["nsenter", &format!("--net={}", network.path().display()), "--"]);
        }
        child
            .args(["setpriv", "--pdeathsig", "SIGTERM", "--", "systemd-nspawn", "-D"])
            .arg(&c.root)
            .args(["--register=no", "--keep-unit", "-M", &c.name, "-b"]);
        if let Some(hostname) = &options.hostname {
            child.arg(format!("--hostname={hostname}"));
        }
        if let Some(network) = options.network {
            child.arg(format!("--network-bridge={}", network.bridge()));
        }
        let child = child
            .arg(format!("systemd.unit={TARGET_NAME}"))
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("BATON_TEST_CGROUPS", cgroups.join(" "))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("starting systemd-nspawn");
        let nspawn_pid = child.id() as i32;
        c.nspawn = Some(child);
        let _ = std::fs::write(c.dir.join("nspawn.pid"), nspawn_pid.to_string());

        // The container's systemd: the child of nspawn that is pid 1 of its
        // namespace and has exec'd systemd.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let init = loop {
            if let Some(status) = c.nspawn.as_mut().and_then(|n| n.try_wait().ok().flatten()) {
                panic!(
                    "{system}: systemd-nspawn exited ({status}) during boot; its log:\n{}",
                    c.boot_log()
                );
            }
            let found = crate::common::baton::children_of(nspawn_pid)
                .into_iter()
                .map(|(pid, _)| pid)
                .find(|&pid| is_container_init(pid));
            if let Some(pid) = found {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "{system}: no systemd appeared under systemd-nspawn (pid {nspawn_pid}) within {BOOT_TIMEOUT:?}; its log:\n{}",
                c.boot_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        c.init = Some((init, proc_starttime(init).unwrap_or(0)));

        let mut state = String::new();
        while Instant::now() < deadline {
            if let Some(status) = c.nspawn.as_mut().and_then(|n| n.try_wait().ok().flatten()) {
                panic!(
                    "{system}: systemd-nspawn exited ({status}) during boot; its log:\n{}",
                    c.boot_log()
                );
            }
            let out = c.exec(&["systemctl", "is-system-running"], Duration::from_secs(10));
            state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if state != "running" && state != "degraded" {
            let jobs = c.systemctl(&["list-jobs", "--no-pager"]);
            panic!(
                "{system}: the container's systemd is not up after {BOOT_TIMEOUT:?} (is-system-running: {state:?}); jobs:\n{}\nnspawn log:\n{}",
                String::from_utf8_lossy(&jobs.stdout),
                c.boot_log()
            );
        }
        c.boot_time = started.elapsed();
        let version = c.exec(&["systemctl", "--version"], Duration::from_secs(10));
        // "systemd 257 (257.9-1~deb13u1)"
        c.systemd_version = stdout(&version).split_whitespace().nth(1).unwrap_or("?").to_owned();
        if state == "degraded" {
            let failed = c.systemctl(&["--failed", "--no-pager", "--no-legend"]);
            say(&format!(
                "{}: container {}: degraded; failed units:\n{}",
                c.label(),
                c.name,
                String::from_utf8_lossy(&failed.stdout)
            ));
        }
        Some(c)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn system(&self) -> System {
        self.system
    }

    /// "Debian 12 (systemd 252)", with the version systemd reports inside.
    pub fn label(&self) -> String {
        format!("{} (systemd {})", self.system, self.systemd_version)
    }

    /// Host pid of the container's systemd.
    pub fn init_pid(&self) -> i32 {
        self.init.map(|(pid, _)| pid).unwrap_or(0)
    }

    /// What nspawn printed (the container's console).
    pub fn boot_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("nspawn.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Runs `argv` inside the container (all its namespaces, its root and
    /// cwd), with a clean environment, killed after `timeout`.
    pub fn exec(&self, argv: &[&str], timeout: Duration) -> Output {
        let secs = timeout.as_secs().max(1).to_string();
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init_pid().to_string(), "-a", "timeout", "-k", "5", &secs])
            .args(argv)
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null());
        run_bounded(cmd, timeout + Duration::from_secs(10))
    }

    /// `sh -c script` inside, bounded to a minute.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script], DEFAULT_TIMEOUT)
    }

    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        self.exec(&argv, DEFAULT_TIMEOUT)
    }

    pub fn journalctl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["journalctl", "--no-pager"];
        argv.extend_from_slice(args);
        self.exec(&argv, DEFAULT_TIMEOUT)
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        stdout(&self.systemctl(&["show", "-p", prop, "--value", unit]))
            .trim()
            .to_owned()
    }

    /// Where `path` (absolute, inside) is on the host, refusing paths that
    /// leave the container's root through a symlink. Only for the container's
    /// root filesystem (/etc, /opt, /srv, ...), not for the tmpfs mounts
    /// (/run, /tmp) that exist only in its namespace.
    pub fn host_path(&self, path: &str) -> PathBuf {
        assert!(path.starts_with('/'), "{path} is not absolute");
        let host = self.root.join(path.trim_start_matches('/'));
        let parent = host.parent().expect("a parent dir").to_owned();
        std::fs::create_dir_all(&parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        let real = parent.canonicalize().expect("canonicalize");
        assert!(
            real.starts_with(&self.root),
            "{path} leads out of the container's root (to {})",
            real.display()
        );
        host
    }

    /// Writes `path` (absolute, inside) through the overlay.
    pub fn write_file(&self, path: &str, contents: &str) {
        let host = self.host_path(path);
        std::fs::write(&host, contents).unwrap_or_else(|e| panic!("writing {}: {e}", host.display()));
    }

    /// [`Container::write_file`], mode 0755.
    pub fn write_executable(&self, path: &str, contents: &str) {
        use std::os::unix::fs::PermissionsExt;
        self.write_file(path, contents);
        std::fs::set_permissions(self.host_path(path), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    pub fn read_file(&self, path: &str) -> String {
        let host = self.host_path(path);
        std::fs::read_to_string(&host).unwrap_or_else(|e| panic!("reading {}: {e}", host.display()))
    }

    pub fn remove_file(&self, path: &str) {
        let host = self.host_path(path);
        if let Err(e) = std::fs::remove_file(&host) {
            assert!(
                e.kind() == std::io::ErrorKind::NotFound,
                "removing {}: {e}",
                host.display()
            );
        }
    }

    /// Copies a host file (a binary of this build) into the container at
    /// `/opt/baton-systest/bin/NAME` and returns that path. A copy, not the
    /// host path seen through `lowerdir=/`: the checkout may live under
    /// /tmp, which is a fresh tmpfs inside the container, on Debian 13 the
    /// host's files are not there at all, and a `cargo build`
    /// on the host while the suite runs must not swap the binary under the
    /// running units (a new `baton reload` talking to an old `baton run`).
    pub fn install_host_file(&self, host_file: &Path) -> String {
        let name = host_file.file_name().and_then(|n| n.to_str()).expect("a file name");
        let inside = format!("/opt/baton-systest/bin/{name}");
        let host = self.host_path(&inside);
        if let Some(dir) = host.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::copy(host_file, &host)
            .unwrap_or_else(|e| panic!("copying {} into the overlay: {e}", host_file.display()));
        let meta = std::fs::metadata(host_file).unwrap_or_else(|e| panic!("{}: {e}", host_file.display()));
        let seen = self.exec(&["stat", "-L", "-c", "%s", &inside], Duration::from_secs(10));
        assert_eq!(
            stdout(&seen).trim(),
            meta.len().to_string(),
            "{inside} is not visible inside the container: {}",
            stderr(&seen)
        );
        inside
    }

    fn nspawn_running(&mut self) -> bool {
        self.nspawn
            .as_mut()
            .is_some_and(|n| n.try_wait().ok().flatten().is_none())
    }

    fn wait_nspawn(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.nspawn_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.nspawn_running()
    }

    fn init_alive(&self) -> bool {
        self.init
            .is_some_and(|(pid, start)| proc_starttime(pid) == Some(start) && crate::common::baton::alive(pid))
    }

    fn teardown(&mut self) {
        if let Some(pid) = self.nspawn.as_ref().map(|n| n.id() as i32) {
            if self.nspawn_running() {
                // nspawn asks the container's systemd to power off.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                if !self.wait_nspawn(Duration::from_secs(15)) {
                    say(&format!(
                        "container {}: nspawn ignored SIGTERM for 15s, killing it",
                        self.name
                    ));
                    if self.init_alive() {
                        let _ = kill(Pid::from_raw(self.init_pid()), Signal::SIGKILL);
                    }
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    self.wait_nspawn(Duration::from_secs(10));
                }
            }
        }
        // Killing the namespace's pid 1 takes every process of it along.
        if self.init_alive() {
            let _ = kill(Pid::from_raw(self.init_pid()), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.init_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for cg in self.cgroups.drain(..) {
            // Empty once the container's processes are gone; the kernel
            // may take a moment to notice.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !remove_cgroup_tree(&cg) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.mounted {
            self.mounted = !unmount(&self.root);
        }
        if self.mounted {
            say(&format!(
                "container {}: could not unmount {}; leaving {} in place",
                self.name,
                self.root.display(),
                self.dir.display()
            ));
        } else {
            remove_dir(&self.dir);
        }
    }
}

impl Container {
    /// Creates a cgroup named after the container in the cgroup2 hierarchy
    /// and, on a hybrid host, in systemd's named v1 hierarchy too. Returns
    /// their paths for the shell that starts nspawn to join.
    fn make_cgroups(&mut self) -> Vec<String> {
        let mut roots = Vec::new();
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            roots.push("/sys/fs/cgroup");
        } else {
            for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"] {
                if Path::new(root).join("cgroup.procs").exists() {
                    roots.push(root);
                }
            }
        }
        for root in roots {
            let cg = Path::new(root).join(&self.name);
            std::fs::create_dir(&cg)
                .unwrap_or_else(|e| panic!("creating the container's cgroup {}: {e}", cg.display()));
            self.cgroups.push(cg);
        }
        self.cgroups.iter().map(|p| p.display().to_string()).collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.teardown();
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `exit N`, its stdout and its stderr, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {:?}; stderr: {:?}",
        out.status,
        stdout(out).trim(),
        stderr(out).trim()
    )
}

/// Runs `cmd` with its output captured, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|stream| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = stream {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut outputs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    Output {
        status,
        stdout: outputs.next().unwrap_or_default(),
        stderr: outputs.next().unwrap_or_default(),
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks.
fn proc_starttime(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// pid 1 of its own pid namespace, running systemd.
fn is_container_init(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let ns_pid_one = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|ids| ids.split_whitespace().last() == Some("1"));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ns_pid_one && comm.trim() == "systemd"
}

/// Mount points (in this mount namespace) at or below `path`.
fn mounts_under(path: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(path))
        .collect()
}

/// Unmounts `root`, lazily if it stays busy. Returns whether it is gone.
fn unmount(root: &Path) -> bool {
    for attempt in 0..20 {
        if mounts_under(root).is_empty() {
            return true;
        }
        let mut cmd = Command::new("umount");
        cmd.arg(root).env("PATH", PATH);
        if attempt == 19 {
            cmd = Command::new("umount");
            cmd.arg("-l").arg(root).env("PATH", PATH);
        }
        let _ = run_bounded(cmd, Duration::from_secs(30));
        if mounts_under(root).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    mounts_under(root).is_empty()
}

/// Removes a container's temp dir, but never while anything is mounted below
/// it: removing recursively through the overlay would walk the host's root.
fn remove_dir(dir: &Path) {
    if !mounts_under(dir).is_empty() {
        say(&format!(
            "not removing {}: something is mounted below it",
            dir.display()
        ));
        return;
    }
    for sub in ["upper", "work"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    // Not recursive: the mount point must be empty by now.
    let _ = std::fs::remove_dir(dir.join("root"));
    for file in ["owner", "nspawn.pid", "nspawn.log"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        say(&format!("could not remove {}: {e}", dir.display()));
    }
}

/// Overlays left by runs that were killed (their owner and their nspawn are
/// gone): unmount and remove them.
/// rmdir of a cgroup and everything below it, deepest first (a cgroup
/// with children cannot be removed). True once it is gone.
fn remove_cgroup_tree(cg: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(cg);
    !cg.exists()
}

fn remove_stale_overlays() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let pid_in = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        };
        let owner_alive = pid_in("owner").is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists());
        let nspawn_alive = pid_in("nspawn.pid").is_some_and(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
                .unwrap_or(false)
        });
        if owner_alive || nspawn_alive {
            continue;
        }
        say(&format!("removing a stale system-test overlay: {}", dir.display()));
        if unmount(&dir.join("root")) {
            remove_dir(&dir);
        }
    }
}

/// What one system's run of a suite reports to [`on_each_system`].
pub struct Run {
    /// [`Container::label`].
    pub label: String,
    pub boot: Duration,
    /// From the end of the boot to the end of the last scenario.
    pub scenarios: Duration,
    /// Everything on this system, teardown included.
    pub total: Duration,
    /// How many scenarios (or steps) ran, and which failed, with why.
    pub ran: usize,
    pub failures: Vec<String>,
}

/// Runs `suite` on each [`System`] in turn (Debian 12 first), each in its
/// own container, then prints what each took and fails with every
/// failure, each naming its system. `run` returns `None` when it skipped
/// (it has said why); a panic in it (a boot that failed, a precondition
/// missing under CI) is a failure of that system, and the next one still
/// runs.
pub fn on_each_system(suite: &str, run: impl Fn(System) -> Option<Run>) {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for system in System::ALL {
        say(&format!("\n##### {suite} on {system}"));
        let t = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(system))) {
            Ok(Some(r)) => {
                lines.push(format!(
                    "{}: {} of {} ok · boot {:.1}s · boot + scenarios {:.1}s · total {:.1}s",
                    r.label,
                    r.ran - r.failures.len(),
                    r.ran,
                    r.boot.as_secs_f64(),
                    (r.boot + r.scenarios).as_secs_f64(),
                    r.total.as_secs_f64()
                ));
                failures.extend(r.failures.iter().map(|f| format!("{}: {f}", r.label)));
            }
            Ok(None) => lines.push(format!("{system}: SKIPPED ({:.1}s)", t.elapsed().as_secs_f64())),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                lines.push(format!(
                    "{system}: FAILED before or between its scenarios after {:.1}s",
                    t.elapsed().as_secs_f64()
                ));
                failures.push(format!("{system}: {message}"));
            }
        }
    }
    say(&format!("\n##### {suite}: per system"));
    for line in &lines {
        say(line);
    }
    assert!(
        failures.is_empty(),
        "{suite}: {} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// What a caught panic said (scenario runners report it and go on).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}
