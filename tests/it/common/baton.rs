//! A real `baton run` process in a temp dir, and the client commands
//! pointed at it. Each test gets its own runtime dir (BATON_RUNTIME_DIR), so
//! control sockets never collide, and its own loopback port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{baton_bin, free_port, wait_until};

pub struct Baton {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
    log: Arc<Mutex<String>>,
    /// Output readers still running (stdout, stderr).
    readers: Arc<std::sync::atomic::AtomicUsize>,
}

/// The `[[listen]]` + `command` part every test needs; `extra` is appended.
pub fn config_text(port: u16, command: &[&str], workers: usize, extra: &str) -> String {
    let argv: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "name = \"app\"\ncommand = [{}]\nworkers = {workers}\n\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:{port}\"\n\n{extra}\n",
        argv.join(", ")
    )
}

impl Baton {
    /// Starts `baton run --config` with `config` (see [`config_text`]) and
    /// waits until the first generation serves.
    pub fn start(port: u16, config: &str) -> Baton {
        let b = Baton::spawn(port, config);
        assert!(
            b.wait_serving(1, Duration::from_secs(30)),
            "baton did not become ready; its log:\n{}",
            b.log()
        );
        b
    }

    /// Starts it without waiting.
    pub fn spawn(port: u16, config: &str) -> Baton {
        Baton::spawn_with_env(port, config, &[])
    }

    /// Starts it without waiting, with extra environment (NOTIFY_SOCKET...).
    pub fn spawn_with_env(port: u16, config: &str, env: &[(&str, &str)]) -> Baton {
        Baton::spawn_bin(&baton_bin(), port, config, env)
    }

    /// Starts the baton binary at `bin` (a copy, for `baton upgrade`)
    /// without waiting.
    pub fn spawn_bin(bin: &Path, port: u16, config: &str, env: &[(&str, &str)]) -> Baton {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.toml");
        std::fs::write(&path, config).expect("write config");
        let mut command = Command::new(bin);
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("BATON_RUNTIME_DIR", dir.path().join("run"))
            // The release history stays in the test's directory.
            .env("BATON_STATE_DIR", dir.path().join("state"))
            .env("BATON_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A binary a test just copied (`baton upgrade`'s tests) may be
        // briefly open for writing in a child another test thread forked
        // before its exec closed the descriptor: ETXTBSY, which passes.
        let mut tries = 0;
        let mut child = loop {
            match command.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("start baton"),
            }
        };
        let log = Arc::new(Mutex::new(String::new()));
        let readers = Arc::new(std::sync::atomic::AtomicUsize::new(2));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let (log, readers) = (log.clone(), readers.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("BATON_TEST_ECHO").is_some() {
                        eprintln!("{line}");
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                readers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        Baton {
            child,
            dir,
            port,
            config: path,
            log,
            readers,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything baton and its workers printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("rewrite config");
    }

    /// Runs a client subcommand (`reload`, `status`, ...) against this baton.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(baton_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("BATON_RUNTIME_DIR", self.dir.path().join("run"))
            .env("BATON_STATE_DIR", self.dir.path().join("state"))
            .stdin(Stdio::null())
            .output()
            .expect("run baton client")
    }

    /// `baton reload` on another thread, for signals and requests mid-reload.
    pub fn reload_in_background(&self) -> std::thread::JoinHandle<Output> {
        let (config, runtime) = (self.config.clone(), self.dir.path().join("run"));
        std::thread::spawn(move || {
            Command::new(baton_bin())
                .args(["reload", "--config"])
                .arg(config)
                .env("BATON_RUNTIME_DIR", runtime)
                .stdin(Stdio::null())
                .output()
                .expect("run baton reload")
        })
    }

    /// `baton reload` `count` times, each asserted to succeed (with the
    /// output and baton's log on failure), pausing `pause` after each so
    /// requests land on every generation. Returns when the first finished.
    pub fn reload_times(&self, count: usize, pause: Duration) -> Instant {
        let mut first_done = None;
        for i in 0..count {
            let out = self.reload();
            first_done.get_or_insert_with(Instant::now);
            assert!(
                out.status.success(),
                "reload {i} failed: {}\n{}\nbaton log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(pause);
        }
        first_done.unwrap_or_else(Instant::now)
    }

    pub fn reload(&self) -> Output {
        self.client(&["reload"])
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.client(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn try_status(&self) -> Option<serde_json::Value> {
        let out = self.client(&["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Waits until generation `generation` is serving with every worker ready.
    pub fn wait_serving(&self, generation: u64, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.try_status().is_some_and(|s| {
                let sup = &s["supervisor"];
                sup["serving"].as_u64() == Some(generation)
                    && sup["generations"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|g| g["id"].as_u64() == Some(generation) && g["ready"] == g["slots"])
            })
        })
    }

    /// pids of the workers of `generation` (any state).
    pub fn worker_pids(&self, generation: u64) -> Vec<i32> {
        let s = self.status();
        s["supervisor"]["generations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["id"].as_u64() == Some(generation))
            .flat_map(|g| g["workers"].as_array().cloned().unwrap_or_default())
            .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
            .collect()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal baton");
    }

    /// Waits for baton to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the readers pass on baton's last lines before anyone
                // looks at the log.
                wait_until(Duration::from_secs(5), || {
                    self.readers.load(std::sync::atomic::Ordering::SeqCst) == 0
                });
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), nix::sys::signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z'))
        })
        .unwrap_or(false)
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    children_of(parent)
        .into_iter()
        .filter(|&(_, state)| state == 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

/// `pid` and all its descendants.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        out.extend(children_of(out[i]).into_iter().map(|(p, _)| p));
        i += 1;
    }
    out
}

/// (pid, state) of every child of `parent`.
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == parent {
            out.push((pid, state));
        }
    }
    out
}

/// Number of open fds of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `fd -> target` of every open fd of a process.
pub fn fd_targets(pid: i32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_string_lossy().parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A small executable script in `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
    path
}

pub fn port() -> u16 {
    free_port()
}

/// One line a worker printed, as baton passes it on standalone:
/// `NAME[generation.slot pid]: text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLine {
    pub generation: u64,
    pub slot: usize,
    pub pid: i32,
    pub text: String,
}

/// The worker lines of a baton log, in order; baton's own lines are skipped.
pub fn worker_lines(log: &str) -> Vec<WorkerLine> {
    log.lines()
        .filter_map(|line| {
            let (head, text) = line.split_once("]: ")?;
            let (_, inside) = head.split_once('[')?;
            let (gen_slot, pid) = inside.split_once(' ')?;
            let (generation, slot) = gen_slot.split_once('.')?;
            Some(WorkerLine {
                generation: generation.parse().ok()?,
                slot: slot.parse().ok()?,
                pid: pid.parse().ok()?,
                text: text.to_owned(),
            })
        })
        .collect()
}

impl Baton {
    /// Waits until the log satisfies `f`. Returns whether it did.
    pub fn wait_log(&self, timeout: Duration, mut f: impl FnMut(&str) -> bool) -> bool {
        wait_until(timeout, || f(&self.log()))
    }
}

/// The cargo target directory (`target/`), from where cargo put `baton`.
pub fn target_dir() -> PathBuf {
    let bin = super::baton_bin();
    // target/<profile>/baton, or target/<triple>/<profile>/baton
    let profile_dir = bin.parent().expect("baton has a parent dir");
    let up = profile_dir.parent().expect("profile dir has a parent");
    if up.join("CACHEDIR.TAG").exists() || up.file_name().is_some_and(|n| n == "target") {
        up.to_path_buf()
    } else {
        up.parent().map_or_else(|| up.to_path_buf(), Path::to_path_buf)
    }
}

/// Runs `f` while holding an exclusive `flock` on `path` (created if
/// missing), so that parallel tests, in this process or others, take turns.
pub fn with_file_lock<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    use nix::fcntl::{Flock, FlockArg};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the lock's directory");
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open lock file {}: {e}", path.display()));
    let _lock =
        Flock::lock(file, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display()));
    f()
}

/// Runs a setup command, and panics with its output unless it succeeds.
pub fn run_setup(what: &str, command: &mut Command) {
    eprintln!("setup: {what}: {command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `npm ci` in examples/node unless its node_modules already matches
/// package-lock.json, and that directory. A marker in node_modules holds
/// the lock file it was installed from; a file lock keeps parallel tests
/// (tests/it/node.rs and the system tests) from racing.
pub fn provision_node_modules() -> PathBuf {
    provision_npm(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node"),
        "examples-node",
    )
}

/// `target/<name>` (lock `target/<name>.lock`), a venv with `requirements`
/// installed; made once, again when the requirements change or when the
/// venv came with a target/ directory from another tree (its scripts name
/// its own path in their #! line, so they would not run here). `user`
/// names the test file that needs python3, for the error.
pub fn provision_venv(name: &str, requirements: &Path, user: &str) -> PathBuf {
    let version = Command::new("python3").arg("--version").output();
    assert!(
        matches!(&version, Ok(o) if o.status.success()),
        "python3 is required for {user} (`python3 --version`: {version:?}); Debian: apt-get install python3 python3-venv"
    );
    let venv = target_dir().join(name);
    let wanted = std::fs::read_to_string(requirements).unwrap();
    let marker = venv.join(".baton-installed-from-requirements.txt");
    with_file_lock(&target_dir().join(format!("{name}.lock")), || {
        let here = std::fs::read_to_string(venv.join("bin/pip"))
            .is_ok_and(|pip| pip.starts_with(&format!("#!{}/", venv.display())));
        if here && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
            return;
        }
        if venv.exists() {
            std::fs::remove_dir_all(&venv).unwrap();
        }
        run_setup(
            "python3 -m venv",
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        );
        run_setup(
            &format!("pip install -r {}", requirements.display()),
            Command::new(venv.join("bin/pip"))
                .args(["install", "--disable-pip-version-check", "--quiet", "-r"])
                .arg(requirements),
        );
        std::fs::write(&marker, &wanted).unwrap();
    });
    venv
}

/// `npm ci` in `dir` (under the repository) unless its node_modules
/// already matches its package-lock.json; `lock` names the file lock.
pub fn provision_npm(dir: &Path, lock_name: &str) -> PathBuf {
    let lock = std::fs::read_to_string(dir.join("package-lock.json")).unwrap();
    let marker = dir.join("node_modules/.baton-installed-from-package-lock.json");
    with_file_lock(&target_dir().join(format!("{lock_name}.lock")), || {
        if std::fs::read_to_string(&marker).is_ok_and(|m| m == lock) {
            return;
        }
        run_setup(
            &format!("npm ci in {}", dir.display()),
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(dir),
        );
        std::fs::write(&marker, &lock).unwrap();
    });
    dir.to_path_buf()
}
