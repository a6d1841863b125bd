//! baton under a real socket activator: `systemd-socket-activate` passes
//! LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES exactly as systemd does. baton must
//! use those fds (not bind), pass them on with their names, and find the
//! control socket as root and as an unprivileged user with no flags.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::baton::alive;
use crate::common::{baton_bin, example_bin, free_port, http_get, wait_until};

/// Kills the process if a test fails before it stopped it.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn sockets_passed_by_an_activator_are_used_and_named() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    let hello = example_bin("hello");
    let activator = Command::new("systemd-socket-activate")
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--fdname",
            "web",
            "-E",
            "BATON_RUNTIME_DIR",
            "-E",
            "BATON_STATE_DIR",
        ])
        .arg(baton_bin())
        .args(["run", "--name", "activated", "--workers", "2", "--"])
        .arg(&hello)
        .env("BATON_RUNTIME_DIR", &runtime)
        .env("BATON_STATE_DIR", dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd) is needed");
    let mut activator = Reap(activator);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The first connection starts baton, which answers it once a worker is up.
    assert!(
        wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(addr).is_ok()),
        "activator never listened"
    );
    let (code, env) = http_get(addr, "/env", Duration::from_secs(20)).unwrap();
    assert_eq!(code, 200);
    assert!(env.contains("LISTEN_FDNAMES=web\n"), "{env}");
    assert!(env.contains("LISTEN_FDS=1\n"), "{env}");

    let status = Command::new(baton_bin())
        .args(["status", "activated", "--json"])
        .env("BATON_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["socket_activated"], true, "{status:#}");
    assert_eq!(status["sockets"][0]["name"], "web", "{status:#}");

    let reload = Command::new(baton_bin())
        .args(["reload", "activated"])
        .env("BATON_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let pid = activator.0.id() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    let code = activator.0.wait().unwrap();
    assert_eq!(code.code(), Some(0));
    assert!(!alive(pid));
}

#[test]
fn a_normal_user_finds_its_own_supervisor_without_flags() {
    if !nix::unistd::Uid::effective().is_root() {
        crate::common::skip("needs root to switch to the nobody user");
        return;
    }
    let port = free_port();
    // Everything the unprivileged user runs must be readable by it.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("baton");
    let app = dir.path().join("hello");
    std::fs::copy(baton_bin(), &bin).unwrap();
    std::fs::copy(example_bin("hello"), &app).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&bin)
            .args(args);
        // No XDG_RUNTIME_DIR: the /tmp/baton-UID fallback is what is tested.
        c.env_remove("XDG_RUNTIME_DIR").env_remove("BATON_RUNTIME_DIR");
        c
    };
    let listen = format!("127.0.0.1:{port}");
    let name = format!("nobodyapp{port}");
    let mut run = Reap(
        as_nobody(&["run", "--name", &name, "--listen", &listen, "--", app.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(wait_until(Duration::from_secs(20), || http_get(
        addr,
        "/",
        Duration::from_secs(2)
    )
    .is_ok()));
    let reload = as_nobody(&["reload", &name]).output().unwrap();
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let status = as_nobody(&["status", &name, "--json"]).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["supervisor"]["serving"], 2);
    let sock = format!("/tmp/baton-65534/{name}/control.sock");
    assert!(
        std::path::Path::new(&sock).exists(),
        "expected the control socket at {sock}"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.0.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    assert_eq!(run.0.wait().unwrap().code(), Some(0));
    assert!(!std::path::Path::new(&sock).exists(), "control socket left behind");
}
