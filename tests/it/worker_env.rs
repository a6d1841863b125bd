//! A worker gets exactly the environment and fds of README's "What a worker
//! gets", LISTEN_PID is its own pid, and nothing of baton's leaks in.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::baton::{Baton, config_text, fd_targets, port};
use crate::common::{example_bin, http_get};

#[test]
fn listen_pid_is_the_workers_own_pid_and_no_fd_leaks() {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let extra = format!(
        "[[listen]]\nname = \"admin\"\naddress = \"{}\"\n\n[environment]\nAPP_MODE = \"test\"\n",
        sock.display()
    );
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, &extra));
    // Reload once so the worker we inspect was started by a busy supervisor
    // (other workers' pipes and notify sockets exist at that moment). With
    // --wait, generation 1 has exited when it returns: a draining worker may
    // still accept in the moment before it handles SIGTERM, so without it
    // the probe below could reach generation 1.
    assert!(baton.client(&["reload", "--wait"]).status.success());

    let (code, body) = http_get(baton.addr(), "/fds", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200);
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("listen_pid_ok=true"), "{body}");
    let worker_fds: BTreeMap<i32, String> = lines
        .filter_map(|l| {
            let (fd, target) = l.split_once(" -> ")?;
            Some((fd.trim().parse().ok()?, target.trim().to_owned()))
        })
        .collect();
    assert_eq!(worker_fds.get(&0).map(String::as_str), Some("/dev/null"), "{body}");
    assert!(worker_fds[&1].starts_with("pipe:"), "{body}");
    assert!(worker_fds[&2].starts_with("pipe:"), "{body}");

    // fds 3 and 4 are the very sockets baton holds, in config order.
    let baton_fds = fd_targets(baton.pid());
    let baton_targets: Vec<&str> = baton_fds.iter().map(|(_, t)| t.as_str()).collect();
    for fd in [3, 4] {
        assert!(worker_fds[&fd].starts_with("socket:"), "{body}");
        assert!(
            baton_targets.contains(&worker_fds[&fd].as_str()),
            "fd {fd} is not baton's socket: {body}"
        );
    }
    // Nothing else the worker has is one of baton's own sockets or pipes.
    // (anon_inode entries such as epoll all share one name, so they cannot be
    // told apart this way; close_range(CLOEXEC) in the child covers them.)
    let leaked: Vec<_> = worker_fds
        .iter()
        .filter(|(fd, t)| **fd > 4 && !t.starts_with("anon_inode:") && baton_targets.contains(&t.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "fds leaked from baton into the worker: {leaked:?}\nworker: {body}"
    );

    let (_, env) = http_get(baton.addr(), "/env", Duration::from_secs(5)).unwrap();
    let env: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env.get("LISTEN_FDS"), Some(&"2"), "{env:?}");
    assert_eq!(env.get("LISTEN_FDNAMES"), Some(&"http:admin"), "{env:?}");
    assert_eq!(env.get("BATON_NAME"), Some(&"app"), "{env:?}");
    assert_eq!(env.get("BATON_GENERATION"), Some(&"2"), "{env:?}");
    assert!(matches!(env.get("BATON_WORKER"), Some(&"0") | Some(&"1")), "{env:?}");
    // NOTIFY_SOCKET is a socket file of baton's runtime directory, which
    // only its user can reach (README "What a worker gets").
    let notify = std::path::Path::new(env.get("NOTIFY_SOCKET").copied().unwrap_or_default());
    assert_eq!(
        notify.parent(),
        Some(baton.dir.path().join("run/app/notify").as_path()),
        "{env:?}"
    );
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let meta = std::fs::symlink_metadata(notify).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), nix::unistd::Uid::current().as_raw());
        let dir = std::fs::metadata(notify.parent().unwrap()).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    }
    assert!(!env.contains_key("WATCHDOG_USEC"), "watchdog is off: {env:?}");
}

#[test]
fn each_worker_leads_its_own_process_group() {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    for pid in baton.worker_pids(1) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        let pgrp: i32 = rest.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(pgrp, pid, "worker {pid} is not a process group leader");
    }
}
