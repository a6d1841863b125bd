//! What baton tells systemd about itself (README "Under systemd"): READY=1, RELOADING=1
//! with MONOTONIC_USEC, STATUS=, STOPPING=1, EXTEND_TIMEOUT_USEC= and the
//! watchdog's WATCHDOG=1.
//!
//! The sending is hand-written (a datagram to the address in NOTIFY_SOCKET)
//! rather than libsystemd's `daemon::notify`, because that function reads
//! NOTIFY_SOCKET from the environment on every call, and baton consumes its
//! environment in `main` before any thread starts (editing the environment
//! once threads exist is unsound).

#![forbid(unsafe_code)]

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::engine::supervisor::Phase;

/// A connection to systemd's notify socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// `None` when baton does not run under a service manager.
    pub fn new(notify_socket: Option<&str>) -> Option<Notifier> {
        let path = notify_socket?;
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            }
            None => SocketAddr::from_pathname(path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        // A full notify queue must never wedge the supervisor.
        socket.set_nonblocking(true).ok()?;
        Some(Notifier { socket, addr })
    }

    /// Sends one message (several `KEY=VALUE` lines). Failures are logged,
    /// never fatal: supervising the app matters more than telling systemd.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            tracing::warn!("cannot notify systemd ({}): {e}", message.lines().next().unwrap_or(""));
        }
    }

    /// The message for a phase change, with the current status line.
    pub fn phase(&self, phase: Phase, status: &str) {
        self.send(&phase_message(phase, status, monotonic_usec()));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Asks systemd to wait `by` longer than its start/reload/stop timeout.
    pub fn extend_timeout(&self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }
}

/// READY=1 after the first start and after every reload (successful or
/// not), RELOADING=1 with MONOTONIC_USEC when one begins (required by
/// Type=notify-reload), STOPPING=1 at shutdown.
pub fn phase_message(phase: Phase, status: &str, monotonic_usec: u64) -> String {
    let status = one_line(status);
    match phase {
        Phase::Starting => format!("STATUS={status}"),
        Phase::Ready => format!("READY=1\nSTATUS={status}"),
        Phase::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS={status}"),
        Phase::Stopping => format!("STOPPING=1\nSTATUS={status}"),
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// CLOCK_MONOTONIC in microseconds, as systemd expects in MONOTONIC_USEC.
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn phase_messages() {
        assert_eq!(
            phase_message(Phase::Ready, "gen 1: 2/2 ready", 5),
            "READY=1\nSTATUS=gen 1: 2/2 ready"
        );
        assert_eq!(
            phase_message(Phase::Reloading, "reloading", 123),
            "RELOADING=1\nMONOTONIC_USEC=123\nSTATUS=reloading"
        );
        assert_eq!(phase_message(Phase::Stopping, "a\nb", 1), "STOPPING=1\nSTATUS=a b");
    }

    /// Sends to a socket this test binds itself, and checks the order of
    /// RELOADING=1 (with MONOTONIC_USEC) and READY=1, which
    /// Type=notify-reload depends on.
    #[test]
    fn notifies_a_real_socket_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str()).unwrap();
        let before = monotonic_usec();
        n.phase(Phase::Reloading, "reloading");
        n.phase(Phase::Ready, "gen 2: 1/1 ready");
        let mut buf = [0u8; 512];
        let len = rx.recv(&mut buf).unwrap();
        let first = std::str::from_utf8(&buf[..len]).unwrap().to_owned();
        let len = rx.recv(&mut buf).unwrap();
        let second = std::str::from_utf8(&buf[..len]).unwrap().to_owned();
        assert!(first.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{first}");
        let usec: u64 = first.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
            .parse()
            .unwrap();
        assert!(usec >= before && usec <= monotonic_usec());
        assert!(second.starts_with("READY=1\n"), "{second}");
    }

    #[test]
    fn abstract_addresses_work() {
        let name = format!("baton-test-notify-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        Notifier::new(Some(&format!("@{name}"))).unwrap().watchdog();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
