//! The control socket under attack: another local user squatting on the
//! `/tmp/baton-UID` fallback directory, and a flood of garbage clients.
//!
//! The squatting tests switch users with `setpriv`, so they need root; under
//! `CI=true` and everywhere else a run without root fails rather than
//! passing without having tested anything.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::{baton_bin, example_bin};

/// The squatter: `nobody`.
const SQUATTER: u32 = 65534;

/// A fake supervisor, run as `nobody`, that answers every request with a
/// successful reload to generation 99.
const FAKE_SERVER: &str = r#"
import os, socket, sys
path = sys.argv[1]
os.umask(0)
os.makedirs(os.path.dirname(path), mode=0o777, exist_ok=True)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.recv(4096)
        c.sendall(b'{"reloaded":{"ok":true,"generation":99,"message":"generation 99"}}\n')
    except OSError:
        pass
    c.close()
"#;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests switch to other users with setpriv and need root"
    );
}

/// Kills and reaps the child, also when the test fails.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the victim's fallback directory before and after a test.
struct Fallback(PathBuf);

impl Fallback {
    fn new(victim: u32) -> Fallback {
        let dir = PathBuf::from(format!("/tmp/baton-{victim}"));
        let _ = std::fs::remove_dir_all(&dir);
        Fallback(dir)
    }
}

impl Drop for Fallback {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// baton and the hello example, copied where any user can run them.
struct Binaries {
    _dir: tempfile::TempDir,
    baton: PathBuf,
    hello: PathBuf,
}

fn binaries() -> Binaries {
    let dir = tempfile::tempdir().unwrap();
    let baton = dir.path().join("baton");
    let hello = dir.path().join("hello");
    std::fs::copy(baton_bin(), &baton).unwrap();
    std::fs::copy(example_bin("hello"), &hello).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Binaries {
        _dir: dir,
        baton,
        hello,
    }
}

/// `setpriv` to `uid` (its own group, no supplementary groups), with neither
/// XDG_RUNTIME_DIR nor BATON_RUNTIME_DIR: the `/tmp/baton-UID` fallback.
fn as_user(uid: u32, program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "--",
    ])
    .arg(program)
    .env_remove("XDG_RUNTIME_DIR")
    .env_remove("BATON_RUNTIME_DIR")
    .stdin(Stdio::null());
    c
}

/// Runs with a deadline, so that a baton that wrongly starts serving fails
/// the test instead of hanging it.
/// `baton run --name NAME --listen 127.0.0.1:PORT -- hello` as `victim`.
fn run_as(victim: u32, bins: &Binaries, name: &str, port: u16) -> Command {
    let mut run = as_user(victim, &bins.baton);
    run.args(["run", "--name", name, "--listen", &format!("127.0.0.1:{port}"), "--"])
        .arg(&bins.hello);
    run
}

fn output_within(mut command: Command, timeout: Duration) -> (Option<i32>, String, String) {
    let mut child = Reap(command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.0.kill();
    let mut out = String::new();
    let mut err = String::new();
    child.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.and_then(|s| s.code()), out, err)
}

fn start_squatter(socket: &Path) -> Reap {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
        "/usr/bin/python3",
        "-c",
    ])
    .arg(FAKE_SERVER)
    .arg(socket)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut server = Reap(c.spawn().expect("python3 is needed for the squatter"));
    let mut line = String::new();
    BufReader::new(server.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening", "the squatter did not start");
    server
}

#[test]
fn a_squatter_in_tmp_is_refused_by_run_and_not_believed_by_reload() {
    require_root();
    let victim = 4242;
    let fallback = Fallback::new(victim);
    let bins = binaries();
    let socket = fallback.0.join("squat/control.sock");
    let _squatter = start_squatter(&socket);
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&fallback.0).unwrap().uid()
    };
    assert_eq!(owner, SQUATTER, "the squatter's directory");

    // The victim's reload must not believe the squatter's "ok".
    let mut reload = as_user(victim, &bins.baton);
    reload.args(["reload", "squat"]);
    let (code, out, err) = output_within(reload, Duration::from_secs(20));
    assert_eq!(
        code,
        Some(2),
        "baton reload against a squatter: exit {code:?}\nstdout: {out}\nstderr: {err}"
    );
    assert!(!out.contains("reload ok"), "the squatter was believed: {out}");
    assert!(
        err.contains("refusing to believe") && err.contains("uid 65534 (nobody)"),
        "the refusal does not say why: {err}"
    );

    // The victim's run refuses the directory, naming its owner.
    let run = run_as(victim, &bins, "squat", port());
    let (code, out, err) = output_within(run, Duration::from_secs(20));
    assert_eq!(
        code,
        Some(1),
        "baton run in a squatted directory: exit {code:?}\n{out}{err}"
    );
    assert!(
        err.contains(&format!("refusing to use {}", fallback.0.display())) && err.contains("uid 65534 (nobody)"),
        "the refusal does not name the directory and its owner: {err}"
    );
}

#[test]
fn run_refuses_a_squatted_directory_even_with_nobody_listening() {
    require_root();
    let victim = 4243;
    let fallback = Fallback::new(victim);
    let bins = binaries();
    // The squatter only prepares the directory, to replace the victim's
    // socket later.
    let made = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", "sh", "-c"])
        .arg(format!("umask 0; mkdir -m 0777 {}", fallback.0.display()))
        .status()
        .unwrap();
    assert!(made.success());
    let run = run_as(victim, &bins, "app", port());
    let (code, out, err) = output_within(run, Duration::from_secs(20));
    assert_eq!(
        code,
        Some(1),
        "baton run in a directory that nobody owns: exit {code:?} (None: it started serving)\n{out}{err}"
    );
    assert!(
        err.contains("refusing to use") && err.contains("uid 65534 (nobody)"),
        "{err}"
    );
    assert!(
        !fallback.0.join("app/control.sock").exists(),
        "a socket was created in the squatter's directory"
    );
}

#[test]
fn run_refuses_its_own_directory_when_others_can_write_it() {
    require_root();
    let victim = 4244;
    let fallback = Fallback::new(victim);
    let bins = binaries();
    std::fs::create_dir(&fallback.0).unwrap();
    nix::unistd::chown(
        &fallback.0,
        Some(nix::unistd::Uid::from_raw(victim)),
        Some(nix::unistd::Gid::from_raw(victim)),
    )
    .unwrap();
    std::fs::set_permissions(&fallback.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = run_as(victim, &bins, "app", port());
    let (code, out, err) = output_within(run, Duration::from_secs(20));
    assert_eq!(code, Some(1), "exit {code:?}\n{out}{err}");
    assert!(
        err.contains("mode 0777") && err.contains("chmod go-w"),
        "the refusal does not name the mode and the fix: {err}"
    );
}

#[test]
fn the_fallback_directory_is_made_private_and_the_socket_owner_only() {
    require_root();
    let victim = 4245;
    let fallback = Fallback::new(victim);
    let bins = binaries();
    let port = port();
    let mut run = run_as(victim, &bins, "app", port);
    run.stdout(Stdio::null()).stderr(Stdio::null());
    let _run = Reap(run.spawn().unwrap());
    let socket = fallback.0.join("app/control.sock");
    assert!(
        crate::common::wait_until(Duration::from_secs(20), || socket.exists()),
        "no control socket at {}",
        socket.display()
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&fallback.0), 0o700, "{}", fallback.0.display());
    assert_eq!(mode(&fallback.0.join("app")), 0o700);
    assert_eq!(mode(&socket), 0o600);
    let mut status = as_user(victim, &bins.baton);
    status.args(["status", "app", "--json"]);
    let (code, out, err) = output_within(status, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}{err}");
}

/// 2,000 clients that send garbage: baton answers each and logs a line or
/// two about them, not 2,000.
#[test]
fn a_flood_of_garbage_clients_logs_a_bounded_number_of_lines() {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let baton = Baton::start(port, &config_text(port, &[&hello], 1, ""));
    let path = baton.dir.path().join("run/app/control.sock");
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut answered = 0;
                for _ in 0..100 {
                    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
                    s.write_all(b"\x00garbage\n").unwrap();
                    let mut answer = String::new();
                    BufReader::new(&s).read_line(&mut answer).unwrap();
                    if answer.contains("bad request") {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let answered: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(answered, 2000, "every garbage client gets its error");
    assert_eq!(baton.status()["supervisor"]["serving"], 1);
    let log = baton.log();
    let lines = log.lines().filter(|l| l.contains("rejected a client")).count();
    // One line per 10 s: the flood takes well under 20 s even on a loaded machine.
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines about 2000 rejected clients:\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
}
