//! The control socket: how `baton reload` and `baton status` talk to a
//! running `baton run`.
//!
//! The protocol is one JSON request line from the client, then JSON reply
//! lines from the server: any number of `progress` lines and one final line.
//! The socket lives at a path both sides compute from the app's name, so no
//! flag is needed (see [`control_path`]).
//!
//! Neither side trusts the path alone. Without `XDG_RUNTIME_DIR` a normal
//! user's sockets live under `/tmp`, where anyone could create the directory
//! first and listen in it. So the server uses only a directory that it owns
//! and that nobody else can write ([`secure_dir`]), and the client believes
//! only a server that runs as itself or as root, as the kernel reports it
//! with `SO_PEERCRED` ([`check_server`]).

#![forbid(unsafe_code)]

pub(crate) mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::os::notify::SharedRateLimit;

/// Longest request line accepted; anything longer is garbage.
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Reload {
        #[serde(default)]
        wait: bool,
        /// `--canary N`: start only N workers beside the serving generation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary: Option<usize>,
        /// `--hold D` of a canary, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold_ms: Option<u64>,
    },
    /// A struct variant, so that unknown fields are rejected here too.
    Status {},
    /// Grow the running canary into the serving generation.
    Promote {},
    /// Abort the running canary, or go back to an earlier release.
    Rollback {
        /// `--to RELEASE`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Progress(String),
    Reloaded(ReloadAnswer),
    Status(serde_json::Value),
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub ok: bool,
    pub generation: Option<u64>,
    pub message: String,
    /// The failing worker's last lines of output.
    #[serde(default)]
    pub output: Vec<String>,
    /// A rollback whose `directory` symlink baton could not re-point (its
    /// user may not write the deploy layout): the client tries with its
    /// own rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repoint: Option<Repoint>,
}

/// `link` should point at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repoint {
    pub link: PathBuf,
    pub target: PathBuf,
}

/// What a reload-like request asks to change; each is answered like a
/// reload (progress lines, then [`Reply::Reloaded`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A reload, or with `canary` a canary of that many workers.
    Reload {
        canary: Option<usize>,
        hold: Option<Duration>,
    },
    Promote,
    Rollback {
        to: Option<String>,
    },
}

/// A request as the supervisor's main task receives it.
#[derive(Debug)]
pub enum Command {
    Reload {
        change: Change,
        wait: bool,
        replies: mpsc::UnboundedSender<Reply>,
    },
    Status {
        reply: oneshot::Sender<serde_json::Value>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to use {path}: it belongs to {owner}, not to you ({me}), so its owner could \
         intercept baton's control socket; remove it (as root), or point XDG_RUNTIME_DIR or \
         BATON_RUNTIME_DIR at a directory of your own"
    )]
    ForeignDir { path: PathBuf, owner: String, me: String },
    #[error(
        "refusing to use {path}: its mode {mode:04o} lets others write in it, so they could \
         replace baton's control socket; run `chmod go-w {path}` or use another directory"
    )]
    OpenDir { path: PathBuf, mode: u32 },
    #[error("cannot check {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to believe {path}: the supervisor answering there runs as {peer}, not as you \
         ({me}) or root; someone may be squatting on that path (remove {dir} as root, or set \
         XDG_RUNTIME_DIR)"
    )]
    Impostor {
        path: PathBuf,
        dir: PathBuf,
        peer: String,
        me: String,
    },
    #[error("another baton is already running for this app (it answers on {path})")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no baton is running for {what} (nothing answers on {path}); is it started?")]
    NotRunning {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no baton found: {0}")]
    Discovery(String),
    #[error("the supervisor closed the connection without an answer")]
    NoAnswer,
    #[error("talking to the supervisor failed")]
    Io(#[from] std::io::Error),
    #[error("the supervisor sent something unreadable: {0}")]
    Protocol(String),
}

/// Where control sockets live when systemd did not give a RuntimeDirectory:
/// `/run/baton` for root, `$XDG_RUNTIME_DIR/baton` (or `/tmp/baton-UID`)
/// for everyone else. `BATON_RUNTIME_DIR` overrides it.
pub fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BATON_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    let uid = nix::unistd::Uid::current();
    if uid.is_root() {
        return PathBuf::from("/run/baton");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("baton"),
        _ => PathBuf::from(format!("/tmp/baton-{uid}")),
    }
}

/// The control socket of app `name`. Under systemd, `RuntimeDirectory=
/// baton/NAME` puts it in `/run/baton/NAME`, which is also what a root
/// client computes, so both sides agree without flags.
pub fn control_path(name: &str) -> PathBuf {
    if let Some(dirs) = std::env::var_os("RUNTIME_DIRECTORY") {
        let dirs = dirs.to_string_lossy().into_owned();
        if let Some(dir) = dirs
            .split(':')
            .find(|d| Path::new(d).file_name().is_some_and(|f| f == name))
        {
            return Path::new(dir).join("control.sock");
        }
    }
    base_dir().join(name).join("control.sock")
}

/// The control socket a client of app `name` talks to: [`control_path`],
/// except that a user other than root whose own runtime directory has no
/// socket for `name` reaches the system unit's `/run/baton/NAME`, if it is
/// there. That is the service's own user (`User=` in the unit) typing
/// `baton promote NAME` in a shell; the peer check still applies.
pub fn client_path(name: &str) -> PathBuf {
    let own = control_path(name);
    if nix::unistd::Uid::current().is_root() || own.exists() || std::env::var_os("BATON_RUNTIME_DIR").is_some() {
        return own;
    }
    let system = Path::new("/run/baton").join(name).join("control.sock");
    if system.exists() { system } else { own }
}

/// With no name given: the one supervisor running for this user.
pub fn discover() -> Result<PathBuf, ControlError> {
    let base = base_dir();
    let mut found: Vec<PathBuf> = std::fs::read_dir(&base)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("control.sock"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        0 => Err(ControlError::Discovery(format!(
            "no control socket under {}; name the app (baton reload NAME) or pass --control PATH",
            base.display()
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(ControlError::Discovery(format!(
            "several apps are running ({}); name one",
            found
                .iter()
                .filter_map(|p| p.parent()?.file_name()?.to_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `uid 65534 (nobody)`, for messages.
fn describe_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// Creates `dir` (missing parts 0700) and checks that nobody but `owner`
/// (and root) can put anything there: `dir` itself must belong to `owner`,
/// each directory above it to `owner` or root, and none may be writable by
/// group or others, except a sticky one above (such as `/tmp`), where others
/// can add entries but not replace ours. Both the path as given and the one
/// its symlinks lead to are checked. A mode such as systemd's 0755 for
/// `RuntimeDirectory=` is fine: reading the directory grants nothing, and
/// the socket itself is 0600.
pub fn secure_dir(dir: &Path, owner: u32) -> Result<(), ControlError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ControlError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    let real = dir.canonicalize().map_err(|source| ControlError::Inspect {
        path: dir.to_owned(),
        source,
    })?;
    check_chain(dir, owner)?;
    if real != dir {
        check_chain(&real, owner)?;
    }
    Ok(())
}

fn check_chain(dir: &Path, owner: u32) -> Result<(), ControlError> {
    use std::os::unix::fs::MetadataExt;
    let absolute = std::path::absolute(dir).map_err(|source| ControlError::Inspect {
        path: dir.to_owned(),
        source,
    })?;
    for (depth, path) in absolute.ancestors().enumerate() {
        // lstat: a symlink on the way belongs to whoever made it, and its
        // owner could point it elsewhere later.
        let meta = std::fs::symlink_metadata(path).map_err(|source| ControlError::Inspect {
            path: path.to_owned(),
            source,
        })?;
        let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
        let owner_ok = uid == owner || (depth > 0 && uid == 0);
        if !owner_ok {
            return Err(ControlError::ForeignDir {
                path: path.to_owned(),
                owner: describe_uid(uid),
                me: describe_uid(owner),
            });
        }
        let sticky = mode & 0o1000 != 0 && depth > 0;
        if meta.is_dir() && mode & 0o022 != 0 && !sticky {
            return Err(ControlError::OpenDir {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

/// The directory a socket path lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        Some(_) => Path::new("."),
        None => Path::new("/"),
    }
}

/// Binds the control socket, replacing a stale one but never stealing one
/// that a live supervisor still answers on.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use nix::sys::stat::{Mode, umask};
    secure_dir(parent_dir(path), nix::unistd::Uid::current().as_raw())?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning { path: path.to_owned() });
        }
        let _ = std::fs::remove_file(path);
    }
    // Only the owner (and root) may connect, from the moment the socket
    // exists: a chmod after bind would leave a window in which anyone could
    // connect and queue a request. The umask is process-wide; this runs at
    // start, before any worker or task that creates files exists.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    umask(previous);
    listener.map_err(|source| ControlError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Whether the supervisor at the other end of `stream` may be believed: it
/// runs as this user or as root. Root also believes a service user's
/// supervisor (`User=` in the unit) when the socket's directory belongs to
/// that user and nobody else could have put it there ([`secure_dir`]'s
/// rules), as with systemd's `RuntimeDirectory=` under `/run/baton`.
pub fn check_server(path: &Path, stream: &UnixStream) -> Result<(), ControlError> {
    let peer = stream.peer_cred()?.uid();
    let me = nix::unistd::Uid::current().as_raw();
    if peer == me || peer == 0 {
        return Ok(());
    }
    let dir = parent_dir(path).to_owned();
    if me == 0 && check_chain(&dir, peer).is_ok() {
        return Ok(());
    }
    Err(ControlError::Impostor {
        path: path.to_owned(),
        dir,
        peer: describe_uid(peer),
        me: describe_uid(me),
    })
}

/// How often a rejected control client may be logged; the others are
/// counted and the count goes with the next line.
const REJECTED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How many clients are served at once. Further ones wait in the
/// listen backlog until one finishes, so a flood of connections costs a
/// bounded amount of memory and never starves the event loop.
pub const MAX_CLIENTS: usize = 1024;

/// Accepts clients until the task is dropped. Each client runs as a task
/// on `tasks`, so whoever owns the tracker can wait for them at exit; once
/// `done` is cancelled, a client that has not sent its request yet is
/// dropped, and one that has gets its answers to the end.
pub async fn serve(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    tasks: TaskTracker,
    done: CancellationToken,
) {
    let rejected = SharedRateLimit::new(REJECTED_LOG_INTERVAL);
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (commands, rejected, done) = (commands.clone(), rejected.clone(), done.clone());
        tasks.spawn(async move {
            if let Err(e) = handle(stream, commands, rejected, done).await {
                tracing::debug!("control client: {e}");
            }
            drop(slot);
        });
    }
}

/// Parses one request line as the server reads it (at most
/// `MAX_REQUEST + 1` bytes, the newline included). The error is what the
/// client is told.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err("request too long".to_owned());
    }
    serde_json::from_slice::<Request>(line.trim_ascii()).map_err(|e| format!("bad request: {e}"))
}

async fn handle(
    stream: UnixStream,
    commands: mpsc::Sender<Command>,
    rejected: SharedRateLimit,
    done: CancellationToken,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    let read = tokio::select! {
        _ = done.cancelled() => return Ok(()),
        read = tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line)) => read,
    };
    let request = match read {
        Err(_) => Err("no request within 10s".to_owned()),
        Ok(Err(e)) => Err(format!("unreadable request: {e}")),
        Ok(Ok(_)) => parse_request(&line),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            if let Some(suppressed) = rejected.allow(std::time::Instant::now()) {
                let more = crate::os::notify::suppressed_note(suppressed);
                tracing::warn!("control socket: rejected a client: {e}{more}");
            }
            return send(&mut write, &Reply::Error(e)).await;
        }
    };
    match request {
        Request::Status {} => {
            let (tx, rx) = oneshot::channel();
            if commands.send(Command::Status { reply: tx }).await.is_err() {
                return send(&mut write, &Reply::Error("supervisor is shutting down".into())).await;
            }
            match rx.await {
                Ok(status) => send(&mut write, &Reply::Status(status)).await,
                Err(_) => send(&mut write, &Reply::Error("supervisor is shutting down".into())).await,
            }
        }
        Request::Reload { wait, canary, hold_ms } => {
            let change = Change::Reload {
                canary,
                hold: hold_ms.map(Duration::from_millis),
            };
            answer_change(&mut write, &commands, change, wait).await
        }
        Request::Promote {} => answer_change(&mut write, &commands, Change::Promote, false).await,
        Request::Rollback { to } => answer_change(&mut write, &commands, Change::Rollback { to }, false).await,
    }
}

/// Hands a reload-like request to the supervisor and relays its answers.
async fn answer_change(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    commands: &mpsc::Sender<Command>,
    change: Change,
    wait: bool,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let command = Command::Reload {
        change,
        wait,
        replies: tx,
    };
    if commands.send(command).await.is_err() {
        return send(write, &Reply::Error("supervisor is shutting down".into())).await;
    }
    while let Some(reply) = rx.recv().await {
        // A client that went away does not stop the reload.
        send(write, &reply).await?;
    }
    Ok(())
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// The client side: sends one request and calls `on_reply` for each reply
/// line until the final one, which it returns.
pub async fn request(
    path: &Path,
    what: &str,
    request: &Request,
    mut on_progress: impl FnMut(&str),
) -> Result<Reply, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::NotRunning {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    check_server(path, &stream)?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply: Reply = serde_json::from_str(&line).map_err(|e| ControlError::Protocol(format!("{e}: {line}")))?;
        match reply {
            Reply::Progress(text) => on_progress(&text),
            other => return Ok(other),
        }
    }
    Err(ControlError::NoAnswer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Reload {
                wait: true,
                canary: None,
                hold_ms: None
            })
            .unwrap(),
            r#"{"cmd":"reload","wait":true}"#
        );
        // An old client's request still parses.
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"reload"}"#).unwrap(),
            Request::Reload {
                wait: false,
                canary: None,
                hold_ms: None
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"reload","canary":1,"hold_ms":1000}"#).unwrap(),
            Request::Reload {
                wait: false,
                canary: Some(1),
                hold_ms: Some(1000)
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"promote"}"#).unwrap(),
            Request::Promote {}
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"rollback","to":"3"}"#).unwrap(),
            Request::Rollback { to: Some("3".into()) }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"promote","now":true}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rollback","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
    }

    #[test]
    fn request_lines_are_bounded_and_trimmed() {
        assert_eq!(parse_request(b"  {\"cmd\":\"status\"}\r\n"), Ok(Request::Status {}));
        let long = format!("{{\"cmd\":\"status\"}}{}\n", " ".repeat(MAX_REQUEST));
        assert_eq!(parse_request(long.as_bytes()), Err("request too long".to_owned()));
        assert!(parse_request(b"\xff\n").unwrap_err().starts_with("bad request: "));
    }

    #[tokio::test(start_paused = true)]
    async fn clients_are_owned_by_the_tracker_and_idle_ones_end_with_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path).unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let (tasks, done) = (TaskTracker::new(), CancellationToken::new());
        let server = tokio::spawn(serve(listener, tx, tasks.clone(), done.clone()));
        // Clients that connect and never send a request.
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        while tasks.len() < idle.len() {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        done.cancel();
        tasks.close();
        tasks.wait().await;
        // The clock is paused and only moves when every task sleeps: had
        // the clients waited out their 10 s read timeout, it would show.
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        server.abort();
        drop(idle);
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let server = tokio::spawn(serve(listener, tx, TaskTracker::new(), CancellationToken::new()));
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                if let Command::Status { reply } = cmd {
                    let _ = reply.send(serde_json::json!({"ok": true}));
                }
            }
        });
        let mut raw = UnixStream::connect(&path).await.unwrap();
        raw.write_all(b"\x00\xffnot json\n").await.unwrap();
        let mut answer = String::new();
        BufReader::new(raw).read_line(&mut answer).await.unwrap();
        assert!(answer.contains("bad request"), "{answer}");
        let reply = request(&path, "test", &Request::Status {}, |_| {}).await.unwrap();
        assert_eq!(reply, Reply::Status(serde_json::json!({"ok": true})));
        assert!(matches!(bind(&path), Err(ControlError::AlreadyRunning { .. })));
        server.abort();
    }
}
