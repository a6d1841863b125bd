//! Bad input gets a clear error and loses nothing: garbage and strangers on a
//! worker's notify socket, garbage on the control socket, and signals in the
//! middle of a reload.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::load::Load;
use crate::common::{example_bin, http_get, wait_until};

fn hello() -> String {
    example_bin("hello").display().to_string()
}

#[test]
fn strangers_and_garbage_on_a_notify_socket_are_ignored() {
    strangers_and_garbage_on(None);
}

#[test]
fn strangers_and_garbage_on_an_abstract_notify_socket_are_ignored() {
    strangers_and_garbage_on(Some("abstract"));
}

/// A stranger (this test process, outside the worker's tree) sends READY=1
/// to a worker's socket: a path by default, or abstract.
fn strangers_and_garbage_on(kind: Option<&str>) {
    let port = port();
    let hello = hello();
    let mut extra = "[readiness]\ntimeout = \"2s\"\n".to_owned();
    if let Some(kind) = kind {
        extra.push_str(&format!("notify_socket = \"{kind}\"\n"));
    }
    let baton = Baton::start(port, &config_text(port, &[&hello], 1, &extra));
    // A slow-to-ready release: a stranger tries to declare it ready early.
    baton.write_config(&config_text(
        port,
        &[&hello],
        1,
        &format!("{extra}\n[environment]\nHELLO_NO_READY = \"1\"\n"),
    ));
    let reload = baton.reload_in_background();
    // Find generation 2's notify socket from its environment.
    let mut socket = None;
    assert!(wait_until(Duration::from_secs(5), || {
        if let Ok((200, env)) = http_get(baton.addr(), "/env", Duration::from_secs(1)) {
            if env.contains("BATON_GENERATION=2\n") {
                socket = env
                    .lines()
                    .find_map(|l| l.strip_prefix("NOTIFY_SOCKET="))
                    .map(str::to_owned);
            }
        }
        socket.is_some()
    }));
    let socket = socket.unwrap();
    let addr = match socket.strip_prefix('@') {
        Some(name) => {
            assert_eq!(kind, Some("abstract"));
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        }
        None => {
            assert_eq!(kind, None, "a path by default: {socket}");
            std::os::unix::net::SocketAddr::from_pathname(&socket).unwrap()
        }
    };
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sock.send_to_addr(b"READY=1\n", &addr).unwrap();
    sock.send_to_addr(b"\xff\xfe garbage", &addr).unwrap();
    sock.send_to_addr(&vec![b'A'; 100_000], &addr).unwrap_or_default();
    let out = reload.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The stranger's READY=1 did not count: the release still timed out.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("readiness timeout"), "{stderr}");
    assert!(baton.log().contains("sender is not the worker"), "{}", baton.log());
    assert_eq!(baton.status()["supervisor"]["serving"], 1);
    if kind.is_none() {
        // The failed worker's socket went with it.
        assert!(
            wait_until(Duration::from_secs(5), || !std::path::Path::new(&socket).exists()),
            "{socket} is left behind"
        );
    }
}

#[test]
fn garbage_on_the_control_socket_gets_an_error_and_changes_nothing() {
    let port = port();
    let hello = hello();
    let baton = Baton::start(port, &config_text(port, &[&hello], 1, ""));
    let path = baton.dir.path().join("run/app/control.sock");
    for junk in [
        &b"\x00\x01\x02\n"[..],
        b"{\"cmd\":\"reboot\"}\n",
        &[b'x'; 10_000],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _ = s.write_all(junk);
        let mut answer = String::new();
        let _ = BufReader::new(&s).read_line(&mut answer);
        assert!(answer.contains("\"error\""), "{answer:?}");
    }
    // A client that connects and says nothing does not block others.
    let _silent = std::os::unix::net::UnixStream::connect(&path).unwrap();
    assert_eq!(baton.status()["supervisor"]["serving"], 1);
    assert!(baton.reload().status.success());
}

#[test]
fn reloads_requested_during_a_reload_are_coalesced_into_one() {
    let port = port();
    let hello = hello();
    let slow = "[environment]\nHELLO_READY_DELAY_MS = \"1500\"\n";
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, slow));
    let load = Load::start(baton.addr(), "/", 4);
    let first = baton.reload_in_background();
    std::thread::sleep(Duration::from_millis(400));
    let followers: Vec<_> = (0..3).map(|_| baton.reload_in_background()).collect();
    let first = first.join().unwrap();
    assert!(first.status.success());
    assert!(String::from_utf8_lossy(&first.stdout).contains("generation 2 is serving"));
    for f in followers {
        let out = f.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        // All three waited for, and got the answer of, the one follow-up.
        assert!(stdout.contains("yours runs right after it"), "{stdout}");
        assert!(stdout.contains("generation 3 is serving"), "{stdout}");
    }
    let stats = load.stop();
    assert_eq!(stats.failed, 0, "{stats}");
    assert_eq!(
        baton.status()["supervisor"]["serving"],
        3,
        "exactly one follow-up reload"
    );
}

#[test]
fn sigterm_in_the_middle_of_a_reload_answers_the_client_and_stops_cleanly() {
    let port = port();
    let hello = hello();
    let mut baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    baton.write_config(&config_text(
        port,
        &[&hello],
        2,
        "[environment]\nHELLO_READY_DELAY_MS = \"3000\"\n",
    ));
    let reload = baton.reload_in_background();
    assert!(wait_until(
        Duration::from_secs(5),
        || baton.status()["supervisor"]["reload_in_progress"] == true
    ));
    baton.signal(nix::sys::signal::SIGTERM);
    let out = reload.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("baton is stopping"), "{stderr}");
    let status = baton.wait_exit(Duration::from_secs(20)).expect("baton did not exit");
    assert_eq!(status.code(), Some(0), "{}", baton.log());
}
