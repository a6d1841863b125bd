//! The sd_notify endpoint baton gives each worker (README "What a worker
//! gets").
//!
//! Every worker gets its own datagram socket as `NOTIFY_SOCKET`, so the
//! socket a message arrives on names the worker. By default it is a file in
//! baton's runtime directory (`notify/W.sock` beside the control socket,
//! the directory 0700 and the socket 0600, both the service user's), as
//! systemd's own is: every sd_notify client can use a path, and some (Ruby's
//! sd_notify gem, so puma) nothing else. `[readiness] notify_socket =
//! "abstract"` gives an abstract name instead. The file goes with its
//! endpoint, and a fresh start sweeps what a crashed baton left
//! ([`sweep`]). A message is accepted
//! only from the worker itself or one of its descendants, which the kernel
//! vouches for with `SCM_CREDENTIALS`. File descriptors that come along
//! (`systemd-notify` sends one with `BARRIER=1` and waits for it to close)
//! are closed at once, which is exactly what a barrier needs.

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use tokio_util::sync::CancellationToken;

use crate::engine::supervisor::Notify;

/// Largest datagram accepted; systemd's own limit is similar.
const MAX_DATAGRAM: usize = 4096;

/// What one datagram said.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub messages: Vec<Notify>,
    pub barrier: bool,
}

/// Parses `KEY=VALUE` lines. Unknown keys are ignored, as systemd does;
/// known keys with bad values are reported.
pub fn parse(datagram: &[u8]) -> Result<Parsed, String> {
    let text = std::str::from_utf8(datagram).map_err(|_| "not UTF-8".to_owned())?;
    if text.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let mut parsed = Parsed::default();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line without '=': {line:?}"));
        };
        let bad = || format!("bad value for {key}: {value:?}");
        match key {
            "READY" if value == "1" => parsed.messages.push(Notify::Ready),
            "STOPPING" if value == "1" => parsed.messages.push(Notify::Stopping),
            "STATUS" => parsed.messages.push(Notify::Status(value.to_owned())),
            "WATCHDOG" if value == "1" => parsed.messages.push(Notify::Watchdog),
            "WATCHDOG" if value == "trigger" => parsed.messages.push(Notify::WatchdogTrigger),
            "BARRIER" if value == "1" => parsed.barrier = true,
            "MAINPID" => {
                let pid: i32 = value.parse().map_err(|_| bad())?;
                if pid <= 0 {
                    return Err(bad());
                }
                parsed.messages.push(Notify::MainPid(nix::unistd::Pid::from_raw(pid)));
            }
            "ERRNO" => parsed.messages.push(Notify::Errno(value.parse().map_err(|_| bad())?)),
            "EXTEND_TIMEOUT_USEC" => {
                let usec: u64 = value.parse().map_err(|_| bad())?;
                parsed.messages.push(Notify::ExtendTimeout(Duration::from_micros(usec)));
            }
            "READY" | "STOPPING" | "WATCHDOG" | "BARRIER" => return Err(bad()),
            _ => {}
        }
    }
    Ok(parsed)
}

/// Whether `pid` is `leader` or one of its descendants. The worker leads its
/// own process group, so group membership counts too (a descendant may have
/// been re-parented to baton after its parent exited).
pub fn belongs_to(pid: i32, leader: i32) -> bool {
    if pid == leader {
        return true;
    }
    let mut current = pid;
    for _ in 0..64 {
        let Some(crate::os::procfs::Stat { ppid, pgrp, .. }) = crate::os::procfs::stat(current) else {
            return false;
        };
        if pgrp == leader || ppid == leader {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        current = ppid;
    }
    false
}

/// One worker's notify socket.
pub struct Endpoint {
    socket: tokio::net::UnixDatagram,
    /// The `NOTIFY_SOCKET` value to give the worker.
    pub address: String,
    /// A path endpoint's socket file, removed with the endpoint.
    file: Option<SocketFile>,
}

/// A socket file that is removed when this is dropped, unless it is kept
/// for the next image of baton ([`Endpoint::into_parts`]).
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Why a path endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "refusing to replace {path}: it is not a socket (baton's runtime directory holds only its own sockets; remove it, or set [readiness] notify_socket = \"abstract\")"
    )]
    Squatted { path: std::path::PathBuf },
    #[error("cannot bind the notify socket {path}")]
    Bind {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The longest socket path the kernel takes (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Makes `dir` hold notify sockets only: the caller has checked that only
/// baton's user (and root) can write in it, so whatever is there was left
/// by an earlier baton that did not get to remove it. Returns how many
/// were removed. Call it only on a fresh start: after `baton upgrade` the
/// sockets there are the handed-over endpoints.
pub fn sweep(dir: &std::path::Path) -> std::io::Result<usize> {
    use std::os::unix::fs::FileTypeExt;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_socket() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// What `Endpoint::recv` got.
pub enum Received {
    Message { pid: i32, parsed: Parsed },
    Rejected { pid: Option<i32>, reason: String },
}

impl Endpoint {
    /// Binds a fresh abstract socket; abstract names vanish with the socket,
    /// so nothing is left behind in the filesystem after a crash.
    pub fn bind(name: &str) -> std::io::Result<Endpoint> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        setsockopt(&socket, sockopt::PassCred, &true)?;
        socket.set_nonblocking(true)?;
        Ok(Endpoint {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            address: format!("@{name}"),
            file: None,
        })
    }

    /// Binds a socket file `file` in `dir`, mode 0600. `dir` must be one
    /// that only baton's user (and root) can write ([`sweep`] says why):
    /// a socket already at that path is stale and replaced; anything else
    /// there is refused.
    pub fn bind_path(dir: &std::path::Path, file: &str) -> Result<Endpoint, BindError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let path = dir.join(file);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => return Err(BindError::Squatted { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BindError::Io(e)),
        }
        let socket = std::os::unix::net::UnixDatagram::bind(&path).map_err(|source| BindError::Bind {
            path: path.clone(),
            source,
        })?;
        // From here on the file goes with the endpoint, or now.
        let file = SocketFile(path.clone());
        // The directory is 0700, so nobody could connect before this.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        setsockopt(&socket, sockopt::PassCred, &true).map_err(std::io::Error::from)?;
        socket.set_nonblocking(true)?;
        Ok(Endpoint {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            address: path.to_string_lossy().into_owned(),
            file: Some(file),
        })
    }

    /// The socket and its `NOTIFY_SOCKET` value, for `baton upgrade`: the
    /// socket comes out of tokio still non-blocking and close-on-exec (an
    /// image that is to inherit it across `execve` must clear that), its
    /// queued datagrams untouched. Fails only if tokio cannot deregister it
    /// (its runtime shutting down).
    #[cfg_attr(not(test), allow(dead_code))] // for `baton upgrade` (runtime.rs)
    ///
    /// A path endpoint's file stays: the next image owns it from here on.
    /// (Should tokio fail to let go of the socket, the file goes with it.)
    pub fn into_parts(self) -> std::io::Result<(OwnedFd, String)> {
        let Endpoint {
            socket,
            address,
            mut file,
        } = self;
        let socket = socket.into_std()?;
        if let Some(f) = file.as_mut() {
            f.0 = std::path::PathBuf::new();
        }
        Ok((OwnedFd::from(socket), address))
    }

    /// An endpoint from [`Endpoint::into_parts`]: sets the socket
    /// non-blocking and registers it with tokio (call it inside the
    /// runtime). `SO_PASSCRED` is the socket's and has survived; it is set
    /// again all the same, so that any bound datagram socket will do.
    #[cfg_attr(not(test), allow(dead_code))] // for `baton upgrade` (runtime.rs)
    ///
    /// An `address` that is not abstract (`@…`) is the endpoint's socket
    /// file, which it removes when it goes, as the one that made it would.
    pub fn from_parts(fd: OwnedFd, address: String) -> std::io::Result<Endpoint> {
        let socket = std::os::unix::net::UnixDatagram::from(fd);
        let file = (!address.starts_with('@')).then(|| SocketFile(address.clone().into()));
        setsockopt(&socket, sockopt::PassCred, &true)?;
        socket.set_nonblocking(true)?;
        Ok(Endpoint {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            address,
            file,
        })
    }

    /// Waits for the next datagram and checks that it comes from `leader`'s
    /// process tree. Passed fds are closed only after that check: closing
    /// them releases a `systemd-notify` waiting on BARRIER=1, which then
    /// exits, and a dead sender can no longer be traced to its worker.
    pub async fn recv(&self, leader: i32) -> std::io::Result<Received> {
        loop {
            self.socket.readable().await?;
            match self
                .socket
                .try_io(tokio::io::Interest::READABLE, || receive(self.socket.as_fd(), leader))
            {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

fn receive(fd: std::os::fd::BorrowedFd<'_>, leader: i32) -> std::io::Result<Received> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Passed fds are held until the sender is authenticated, then closed
    // (see `recv`).
    let crate::os::sys::Datagram {
        len,
        truncated,
        pid,
        fds: passed,
    } = crate::os::sys::recv_with_credentials(fd, &mut buf)?;
    if truncated {
        return Ok(Received::Rejected {
            pid,
            reason: format!("oversize datagram ({len} bytes)"),
        });
    }
    let Some(pid) = pid else {
        return Ok(Received::Rejected {
            pid: None,
            reason: "no sender credentials".into(),
        });
    };
    if !belongs_to(pid, leader) {
        return Ok(Received::Rejected {
            pid: Some(pid),
            reason: "sender is not the worker or one of its descendants".into(),
        });
    }
    drop(passed);
    match parse(&buf[..len]) {
        Ok(parsed) => Ok(Received::Message { pid, parsed }),
        Err(reason) => Ok(Received::Rejected {
            pid: Some(pid),
            reason: format!("garbage: {reason}"),
        }),
    }
}

/// Lets one warning through per interval and counts the rest.
///
/// Each kind of warning that an outsider or a broken environment can repeat
/// at will (rejected notify datagrams, rejected control clients, notify
/// socket errors) has one, so no input can flood the journal.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        RateLimit {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number suppressed since the last one)` if this one may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// " (N similar messages suppressed)" after a message that
/// [`RateLimit::allow`] let through, or nothing when none were.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed > 0 {
        format!(" ({suppressed} similar messages suppressed)")
    } else {
        String::new()
    }
}

/// A [`RateLimit`] shared by tasks: every control client, or every
/// worker's notify endpoint, counts against the same one.
#[derive(Debug, Clone)]
pub struct SharedRateLimit(Arc<Mutex<RateLimit>>);

impl SharedRateLimit {
    pub fn new(interval: Duration) -> Self {
        SharedRateLimit(Arc::new(Mutex::new(RateLimit::new(interval))))
    }

    /// [`RateLimit::allow`].
    pub fn allow(&self, now: Instant) -> Option<u64> {
        // The lock is never held across code that can panic; a poisoned one
        // still holds a usable count.
        self.0.lock().unwrap_or_else(PoisonError::into_inner).allow(now)
    }
}

/// How long a receive error pauses a worker's notify endpoint before it
/// tries again.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Receives datagrams with `recv` and hands them to `deliver` until it
/// returns false. `deliver` may wait (a full event queue): the worker's
/// datagrams then wait in its socket, which bounds what a flood costs. A receive error is retried after [`ERROR_PAUSE`]; it is
/// logged through `errors`, which all workers share, so an error that
/// persists costs one line per interval instead of ten a second per worker.
#[cfg(test)]
pub async fn forward<F, Fut, D, DFut>(worker: impl std::fmt::Display, errors: SharedRateLimit, recv: F, deliver: D)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Received>>,
    D: FnMut(Received) -> DFut,
    DFut: std::future::Future<Output = bool>,
{
    forward_until(worker, errors, recv, deliver, &CancellationToken::new()).await;
}

/// [`forward`], which also returns once `handover` is cancelled (for
/// `baton upgrade`). The hand-over is honoured only while waiting for the
/// next datagram (or pausing after an error): a datagram received is always
/// delivered first, and one not yet received stays queued in the socket for
/// whoever reads it next. So `recv` must be cancel-safe, as
/// [`Endpoint::recv`] is: dropped while it waits, it has received nothing.
pub async fn forward_until<F, Fut, D, DFut>(
    worker: impl std::fmt::Display,
    errors: SharedRateLimit,
    mut recv: F,
    mut deliver: D,
    handover: &CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Received>>,
    D: FnMut(Received) -> DFut,
    DFut: std::future::Future<Output = bool>,
{
    loop {
        let received = tokio::select! {
            biased;
            _ = handover.cancelled() => return,
            received = recv() => received,
        };
        match received {
            Ok(received) => {
                if !deliver(received).await {
                    return;
                }
            }
            Err(e) => {
                // tokio's clock, which tests can pause and advance.
                if let Some(suppressed) = errors.allow(tokio::time::Instant::now().into_std()) {
                    let more = suppressed_note(suppressed);
                    tracing::warn!("notify socket of worker #{worker}: {e}{more}");
                }
                tokio::select! {
                    biased;
                    _ = handover.cancelled() => return,
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_honoured_keys() {
        let p = parse(
            b"READY=1\nSTATUS=serving 4 conns\nWATCHDOG=1\nWATCHDOG=trigger\nMAINPID=42\nERRNO=98\nEXTEND_TIMEOUT_USEC=5000000\nSTOPPING=1\nBARRIER=1\n",
        )
        .unwrap();
        assert_eq!(
            p.messages,
            vec![
                Notify::Ready,
                Notify::Status("serving 4 conns".into()),
                Notify::Watchdog,
                Notify::WatchdogTrigger,
                Notify::MainPid(nix::unistd::Pid::from_raw(42)),
                Notify::Errno(98),
                Notify::ExtendTimeout(Duration::from_secs(5)),
                Notify::Stopping,
            ]
        );
        assert!(p.barrier);
    }

    #[test]
    fn ignores_unknown_keys_like_systemd() {
        let p = parse(b"FDSTORE=1\nX_CUSTOM=yes\nREADY=1").unwrap();
        assert_eq!(p.messages, vec![Notify::Ready]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"\xff\xfe").is_err());
        assert!(parse(b"hello world").is_err());
        assert!(parse(b"MAINPID=abc").is_err());
        assert!(parse(b"MAINPID=-3").is_err());
        assert!(parse(b"READY=2").is_err());
        assert!(parse(b"READY=1\0").is_err());
        assert_eq!(parse(b"").unwrap(), Parsed::default());
    }

    #[test]
    fn own_pid_belongs_to_itself_and_init_does_not() {
        let me = std::process::id() as i32;
        assert!(belongs_to(me, me));
        assert!(!belongs_to(1, me));
    }

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.allow(t), Some(0));
        assert_eq!(r.allow(t), None);
        assert_eq!(r.allow(t), None);
        assert_eq!(r.allow(t + Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn suppressed_note_names_the_count_only_when_there_is_one() {
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(7), " (7 similar messages suppressed)");
    }

    /// Datagrams sent before, during and after a hand-over (into_parts,
    /// from_parts, forward again) are each delivered once, in order.
    #[tokio::test]
    async fn a_handed_over_endpoint_loses_and_doubles_nothing() {
        let name = format!("baton-test/{}/{:?}", std::process::id(), std::time::SystemTime::now());
        let endpoint = Endpoint::bind(&name).unwrap();
        let me = std::process::id() as i32;
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let send = |n: usize| {
            sender.send_to_addr(format!("STATUS={n}").as_bytes(), &addr).unwrap();
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let run = |endpoint: Endpoint, handover: CancellationToken| {
            let tx = tx.clone();
            tokio::spawn(async move {
                forward_until(
                    0,
                    SharedRateLimit::new(Duration::from_secs(10)),
                    || endpoint.recv(me),
                    |received| {
                        let tx = tx.clone();
                        async move {
                            if let Received::Message { parsed, .. } = received {
                                for m in parsed.messages {
                                    tx.send(m).unwrap();
                                }
                            }
                            true
                        }
                    },
                    &handover,
                )
                .await;
                endpoint
            })
        };
        let mut delivered = Vec::new();
        let mut endpoint = Some(endpoint);
        let mut sent = 0;
        for round in 0..4 {
            let handover = CancellationToken::new();
            let task = run(endpoint.take().unwrap(), handover.clone());
            // Sent while it runs.
            for _ in 0..3 {
                send(sent);
                sent += 1;
            }
            while delivered.len() < sent {
                let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
                delivered.push(got.unwrap());
            }
            handover.cancel();
            let (fd, address) = task.await.unwrap().into_parts().unwrap();
            assert_eq!(address, format!("@{name}"));
            // Sent while nobody reads: they wait in the socket.
            for _ in 0..=round {
                send(sent);
                sent += 1;
            }
            endpoint = Some(Endpoint::from_parts(fd, address).unwrap());
        }
        let handover = CancellationToken::new();
        let task = run(endpoint.take().unwrap(), handover.clone());
        while delivered.len() < sent {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
            delivered.push(got.unwrap());
        }
        handover.cancel();
        drop(task.await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(rx.try_recv().is_err(), "nothing twice");
        let expected: Vec<Notify> = (0..sent).map(|n| Notify::Status(n.to_string())).collect();
        assert_eq!(delivered, expected);
    }

    /// A path endpoint: 0600 and ours, credentials checked as for an
    /// abstract one, its file gone with it, kept across a hand-over and
    /// removed by whoever holds it last.
    #[tokio::test]
    async fn a_path_endpoint_is_private_checks_credentials_and_cleans_up() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::bind_path(dir.path(), "7.sock").unwrap();
        let path = dir.path().join("7.sock");
        assert_eq!(endpoint.address, path.to_str().unwrap());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), nix::unistd::Uid::current().as_raw());

        let me = std::process::id() as i32;
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1", &path).unwrap();
        match endpoint.recv(me).await.unwrap() {
            Received::Message { pid, parsed } => {
                assert_eq!(pid, me);
                assert_eq!(parsed.messages, [Notify::Ready]);
            }
            Received::Rejected { reason, .. } => panic!("{reason}"),
        }
        // The same datagram, judged for a worker this process does not
        // descend from (pid 2, kthreadd).
        sender.send_to(b"READY=1", &path).unwrap();
        match endpoint.recv(2).await.unwrap() {
            Received::Rejected { reason, .. } => assert!(reason.contains("not the worker"), "{reason}"),
            Received::Message { .. } => panic!("a stranger's datagram was accepted"),
        }

        // Across a hand-over the file stays; the new holder removes it.
        let (fd, address) = endpoint.into_parts().unwrap();
        assert!(path.exists());
        let endpoint = Endpoint::from_parts(fd, address).unwrap();
        sender.send_to(b"STATUS=after", &path).unwrap();
        assert!(matches!(endpoint.recv(me).await.unwrap(), Received::Message { .. }));
        drop(endpoint);
        assert!(!path.exists(), "removed with the endpoint");

        // A stale socket is replaced; anything else is refused.
        let stale = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        drop(stale);
        let again = Endpoint::bind_path(dir.path(), "7.sock").unwrap();
        sender.send_to(b"READY=1", &path).unwrap();
        assert!(matches!(again.recv(me).await.unwrap(), Received::Message { .. }));
        drop(again);
        std::fs::write(&path, "not a socket").unwrap();
        let err = Endpoint::bind_path(dir.path(), "7.sock").err().unwrap();
        assert!(matches!(err, BindError::Squatted { .. }), "{err}");
        assert!(err.to_string().contains("refusing to replace"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket", "left alone");

        // The sweep at a fresh start takes sockets only.
        let left = std::os::unix::net::UnixDatagram::bind(dir.path().join("8.sock")).unwrap();
        drop(left);
        assert_eq!(sweep(dir.path()).unwrap(), 1);
        assert!(!dir.path().join("8.sock").exists());
        assert!(path.exists());
    }

    /// Captures what `tracing` logs, to count lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A receive error that never goes away: one minute of it from 8
    /// workers logs a handful of lines, not 4,800, and says how many it
    /// left out.
    #[tokio::test(start_paused = true)]
    async fn a_persistent_receive_error_is_logged_a_few_times_a_minute() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let errors = SharedRateLimit::new(Duration::from_secs(10));
        let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let (errors, attempts) = (errors.clone(), attempts.clone());
            tasks.push(forward(
                worker,
                errors,
                move || {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::future::ready(Err(std::io::Error::from_raw_os_error(libc::ENOBUFS)))
                },
                |_| std::future::ready(true),
            ));
        }
        let all = futures_join(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(60), all).await;
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert!(attempts >= 4000, "only {attempts} receive attempts in a minute");
        assert!(
            (6..=7).contains(&lines.len()),
            "{} lines for {attempts} errors:\n{text}",
            lines.len()
        );
        assert!(lines[1].contains("similar messages suppressed"), "{text}");
    }

    /// Polls every future to completion on the current task.
    async fn futures_join<F: std::future::Future<Output = ()>>(tasks: Vec<F>) {
        let mut tasks: Vec<_> = tasks.into_iter().map(Box::pin).collect();
        std::future::poll_fn(move |cx| {
            tasks.retain_mut(|t| t.as_mut().poll(cx).is_pending());
            if tasks.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}
