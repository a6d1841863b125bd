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

pub(crate) mod metrics;
pub(crate) mod scrape;
pub(crate) mod status;

use std::os::fd::OwnedFd;
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
    /// The Prometheus metrics text (`baton metrics`).
    Metrics {},
    /// Grow the running canary into the serving generation.
    Promote {},
    /// Abort the running canary, or go back to an earlier release.
    Rollback {
        /// `--to RELEASE`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// `baton upgrade`: re-execute the installed baton binary in place.
    Upgrade {},
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Progress(String),
    Reloaded(ReloadAnswer),
    /// The new image took over (`baton upgrade`).
    Upgraded(UpgradeAnswer),
    Status(serde_json::Value),
    Metrics(String),
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

/// What the new image says once it has taken over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeAnswer {
    pub from: String,
    pub to: String,
    pub pid: u32,
    /// The workers' pids, all carried over.
    pub workers: Vec<i32>,
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
    Metrics {
        reply: oneshot::Sender<String>,
    },
    /// `baton upgrade`: the supervisor answers on the client's stream
    /// itself, and hands it to the new image, which gives the last answer.
    Upgrade {
        client: std::os::unix::net::UnixStream,
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
    #[error(
        "refusing to use {path}: {why}; baton makes this directory itself (mode 0700), so \
         something else put this there: remove it (`rm {path}`, or `rm -r` for a directory) and \
         start baton again"
    )]
    NotPrivateDir { path: PathBuf, why: String },
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

/// Every supervisor running for this user (as root: every app under
/// `/run/baton`): (control socket, app name).
pub fn all_running() -> Vec<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(base_dir())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    (
                        e.path().join("control.sock"),
                        e.file_name().to_string_lossy().into_owned(),
                    )
                })
                .filter(|(p, _)| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
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

/// [`secure_dir`] for a directory baton makes for itself inside a secure
/// one (the workers' `notify/`), where anything but its own 0700 directory
/// means someone else put it there: `dir` itself must not be a symlink
/// (its target would get the sockets, and a fresh start's sweep would
/// delete there), must be a directory owned by `owner`, and must have no
/// group or other permissions.
pub fn private_dir(dir: &Path, owner: u32) -> Result<(), ControlError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let refuse = |why: String| ControlError::NotPrivateDir {
        path: dir.to_owned(),
        why,
    };
    // Before secure_dir, which would create through (or fail on) a link.
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        let kind = meta.file_type();
        if kind.is_symlink() {
            let to = std::fs::read_link(dir).map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
            return Err(refuse(format!("it is a symlink (to {to}), not a directory")));
        }
        if !kind.is_dir() {
            let what = if kind.is_socket() {
                "a socket"
            } else if kind.is_file() {
                "a file"
            } else {
                "not a directory"
            };
            return Err(refuse(format!("it is {what}, not a directory")));
        }
        if meta.uid() != owner {
            return Err(refuse(format!(
                "it belongs to {}, not to you ({}), so its owner could read or replace the workers' notify sockets",
                describe_uid(meta.uid()),
                describe_uid(owner)
            )));
        }
    }
    secure_dir(dir, owner)?;
    let meta = std::fs::symlink_metadata(dir).map_err(|source| ControlError::Inspect {
        path: dir.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "its mode {mode:04o} lets group or others in (baton's is 0700; or run `chmod 700 {}`)",
            dir.display()
        )));
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

/// What a client is told when its request was not read, or not passed to
/// the supervisor, before `baton upgrade` stopped this image's control
/// socket. The request was not carried out; [`request`] retries it.
pub const UPGRADING: &str = "baton is upgrading itself; retry in a moment";

fn upgrading() -> Reply {
    Reply::Error(UPGRADING.to_owned())
}

/// Accepts clients until the task is dropped. Each client runs as a task
/// on `tasks`, so whoever owns the tracker can wait for them at exit; once
/// `done` is cancelled, a client that has not sent its request yet is
/// dropped, and one that has gets its answers to the end.
#[cfg(test)]
pub async fn serve(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    tasks: TaskTracker,
    done: CancellationToken,
) {
    let _ = serve_until(listener, commands, tasks, done, CancellationToken::new()).await;
}

/// [`serve`], which stops when `handover` is cancelled (`baton upgrade`):
/// it accepts no more clients, and each client whose request has not been
/// passed to the supervisor yet (not read, or waiting for room in
/// `commands`) is answered [`UPGRADING`]. It returns once every client has
/// been either answered so or passed on (those are served to the end, as
/// with `done`), with the listening socket: connections waiting in its
/// backlog are the next image's to accept ([`listener_from_fd`]). The fd is
/// non-blocking and close-on-exec (an image that is to inherit it across
/// `execve` must clear that). It fails only if tokio cannot deregister the
/// socket (its runtime shutting down).
pub async fn serve_until(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    tasks: TaskTracker,
    done: CancellationToken,
    handover: CancellationToken,
) -> std::io::Result<OwnedFd> {
    let rejected = SharedRateLimit::new(REJECTED_LOG_INTERVAL);
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    // Each client holds a clone until its request is passed on or it is
    // answered; `unanswered` ends when the last one is dropped.
    let (unpassed, mut unanswered) = mpsc::channel::<()>(1);
    loop {
        let slot = tokio::select! {
            biased;
            _ = handover.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else {
            // Never closed; should it be, no client is accepted any more.
            handover.cancelled().await;
            break;
        };
        let accepted = tokio::select! {
            biased;
            _ = handover.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::select! {
                biased;
                _ = handover.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
            }
        };
        let (commands, rejected, done, handover) = (commands.clone(), rejected.clone(), done.clone(), handover.clone());
        let unpassed = unpassed.clone();
        tasks.spawn(async move {
            let client = Client {
                commands,
                rejected,
                done,
                handover,
                unpassed,
            };
            if let Err(e) = handle(stream, client).await {
                tracing::debug!("control client: {e}");
            }
            drop(slot);
        });
    }
    drop(unpassed);
    let _ = unanswered.recv().await;
    Ok(OwnedFd::from(listener.into_std()?))
}

/// The control socket that [`serve_until`] handed over, registered with
/// this image's tokio (call it inside the runtime).
#[cfg_attr(not(test), allow(dead_code))] // for `baton upgrade` (runtime.rs)
pub fn listener_from_fd(fd: OwnedFd) -> std::io::Result<UnixListener> {
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
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

/// What a client's task needs besides its stream.
struct Client {
    commands: mpsc::Sender<Command>,
    rejected: SharedRateLimit,
    done: CancellationToken,
    handover: CancellationToken,
    /// Dropped once the request is passed to the supervisor (see
    /// [`serve_until`]).
    unpassed: mpsc::Sender<()>,
}

async fn handle(stream: UnixStream, client: Client) -> std::io::Result<()> {
    let Client {
        commands,
        rejected,
        done,
        handover,
        unpassed,
    } = client;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    let read = tokio::select! {
        biased;
        _ = done.cancelled() => return Ok(()),
        _ = handover.cancelled() => return send(&mut write, &upgrading()).await,
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
            if let Err(reply) = pass(&commands, Command::Status { reply: tx }, &handover).await {
                return send(&mut write, &reply).await;
            }
            drop(unpassed);
            match rx.await {
                Ok(status) => send(&mut write, &Reply::Status(status)).await,
                // Unanswered across an upgrade: asking again is harmless.
                Err(_) if handover.is_cancelled() => send(&mut write, &upgrading()).await,
                Err(_) => send(&mut write, &Reply::Error("supervisor is shutting down".into())).await,
            }
        }
        Request::Metrics {} => {
            let (tx, rx) = oneshot::channel();
            if let Err(reply) = pass(&commands, Command::Metrics { reply: tx }, &handover).await {
                return send(&mut write, &reply).await;
            }
            drop(unpassed);
            match rx.await {
                Ok(text) => send(&mut write, &Reply::Metrics(text)).await,
                Err(_) if handover.is_cancelled() => send(&mut write, &upgrading()).await,
                Err(_) => send(&mut write, &Reply::Error("supervisor is shutting down".into())).await,
            }
        }
        Request::Reload { wait, canary, hold_ms } => {
            let change = Change::Reload {
                canary,
                hold: hold_ms.map(Duration::from_millis),
            };
            answer_change(&mut write, &commands, change, wait, &handover, unpassed).await
        }
        Request::Upgrade {} => {
            let read = reader.into_inner().into_inner();
            let client = read.reunite(write).map_err(std::io::Error::other)?.into_std()?;
            if commands.send(Command::Upgrade { client }).await.is_err() {
                return Ok(());
            }
            drop(unpassed);
            Ok(())
        }
        Request::Promote {} => answer_change(&mut write, &commands, Change::Promote, false, &handover, unpassed).await,
        Request::Rollback { to } => {
            answer_change(
                &mut write,
                &commands,
                Change::Rollback { to },
                false,
                &handover,
                unpassed,
            )
            .await
        }
    }
}

/// Passes a request to the supervisor, unless the hand-over comes first:
/// the error is what the client is told.
async fn pass(commands: &mpsc::Sender<Command>, command: Command, handover: &CancellationToken) -> Result<(), Reply> {
    tokio::select! {
        biased;
        _ = handover.cancelled() => Err(upgrading()),
        sent = commands.send(command) => sent.map_err(|_| Reply::Error("supervisor is shutting down".into())),
    }
}

/// Hands a reload-like request to the supervisor and relays its answers.
async fn answer_change(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    commands: &mpsc::Sender<Command>,
    change: Change,
    wait: bool,
    handover: &CancellationToken,
    unpassed: mpsc::Sender<()>,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let command = Command::Reload {
        change,
        wait,
        replies: tx,
    };
    if let Err(reply) = pass(commands, command, handover).await {
        return send(write, &reply).await;
    }
    drop(unpassed);
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

/// How long [`request`] keeps retrying a request that may be retried.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// The pause between two tries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The client side: sends one request and calls `on_reply` for each reply
/// line until the final one, which it returns.
///
/// A request that was certainly not carried out is tried again every
/// 100 ms for up to 10 s (the last outcome is returned after that): one
/// answered [`UPGRADING`], and a full backlog.
/// So is a `status` the supervisor closed without answering (or reset):
/// asking again is harmless. A reload-like request that got no answer is
/// never sent again, as it may have been carried out.
pub async fn request(
    path: &Path,
    what: &str,
    request: &Request,
    mut on_progress: impl FnMut(&str),
) -> Result<Reply, ControlError> {
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        let outcome = request_once(path, what, request, &mut on_progress).await;
        if !may_retry(request, &outcome) || tokio::time::Instant::now() + RETRY_PAUSE > deadline {
            return outcome;
        }
        tracing::debug!("control request: trying again in a moment: {outcome:?}");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Whether `outcome` shows that `request` was not carried out, or that
/// carrying it out again is harmless.
fn may_retry(request: &Request, outcome: &Result<Reply, ControlError>) -> bool {
    use std::io::ErrorKind;
    // Reading requests: asking again is harmless.
    let status = matches!(request, Request::Status {} | Request::Metrics {});
    match outcome {
        Ok(Reply::Error(e)) => e == UPGRADING,
        Ok(_) => false,
        Err(ControlError::NotRunning { source, .. }) => {
            // Not "refused": that is a stale socket with nobody behind it
            // (an upgrade hands the listening socket over; it never closes).
            source.kind() == ErrorKind::WouldBlock
        }
        Err(ControlError::NoAnswer) => status,
        Err(ControlError::Io(e)) => status && matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        Err(_) => false,
    }
}

/// One try of [`request`].
async fn request_once(
    path: &Path,
    what: &str,
    request: &Request,
    on_progress: &mut impl FnMut(&str),
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
    fn a_private_dir_is_a_real_0700_directory_of_ours() {
        use std::os::unix::fs::PermissionsExt;
        let run = tempfile::tempdir().unwrap();
        let me = nix::unistd::Uid::current().as_raw();
        let fresh = run.path().join("fresh");
        private_dir(&fresh, me).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        private_dir(&fresh, me).unwrap();

        let refused = |path: &Path, owner: u32| private_dir(path, owner).unwrap_err().to_string();
        let link = run.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let e = refused(&link, me);
        assert!(e.contains("is a symlink (to ") && e.contains("remove it"), "{e}");
        let file = run.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(refused(&file, me).contains("it is a file, not a directory"));
        let open = run.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(refused(&open, me).contains("its mode 0755 lets group or others in"));
        // Someone else's (checked as if we were another user).
        assert!(refused(&fresh, me + 1).contains("not to you"));
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

    async fn read_reply(stream: UnixStream) -> Reply {
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await.unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    /// At a hand-over: clients whose request was not passed on are told
    /// UPGRADING, one already passed on is served to the end, and a client
    /// waiting in the backlog is served by the next image.
    #[tokio::test]
    async fn a_hand_over_answers_the_waiting_and_leaves_the_backlog_to_the_next_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let (tasks, done, handover) = (TaskTracker::new(), CancellationToken::new(), CancellationToken::new());
        let server = tokio::spawn(serve_until(listener, tx, tasks.clone(), done.clone(), handover.clone()));
        // A reload the supervisor has taken.
        let reload = tokio::spawn({
            let path = path.clone();
            async move {
                let mut progress = Vec::new();
                let reply = request(&path, "test", &Request::Promote {}, |p| progress.push(p.to_owned())).await;
                (reply.unwrap(), progress)
            }
        });
        let Some(Command::Reload { replies, .. }) = rx.recv().await else {
            panic!("no reload")
        };
        // Idle, half a request, and two requests for one place in
        // `commands` (the supervisor reads no more).
        let idle = UnixStream::connect(&path).await.unwrap();
        let mut half = UnixStream::connect(&path).await.unwrap();
        half.write_all(b"{\"cmd\":").await.unwrap();
        let filler = tokio::spawn({
            let path = path.clone();
            async move {
                let mut s = UnixStream::connect(&path).await.unwrap();
                s.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
                read_reply(s).await
            }
        });
        let mut blocked = UnixStream::connect(&path).await.unwrap();
        blocked.write_all(b"{\"cmd\":\"reload\"}\n").await.unwrap();
        while tasks.len() < 5 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        handover.cancel();
        let fd = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve_until returns once the waiting are answered")
            .unwrap()
            .unwrap();
        assert_eq!(read_reply(idle).await, upgrading());
        assert_eq!(read_reply(half).await, upgrading());
        // One of the two queued requests went into `commands` (room for
        // one), the other was told to retry.
        let queued = rx.recv().await.unwrap();
        let other = if let Command::Status { .. } = queued {
            drop(queued);
            read_reply(blocked).await
        } else {
            drop(queued);
            filler.await.unwrap()
        };
        assert_eq!(other, upgrading());
        // The reload passed on before keeps being served.
        replies.send(Reply::Progress("step".into())).unwrap();
        replies
            .send(Reply::Reloaded(ReloadAnswer {
                ok: true,
                generation: Some(2),
                message: "done".into(),
                output: Vec::new(),
                repoint: None,
            }))
            .unwrap();
        drop(replies);
        let (reply, progress) = reload.await.unwrap();
        assert!(
            matches!(reply, Reply::Reloaded(ReloadAnswer { ok: true, .. })),
            "{reply:?}"
        );
        assert_eq!(progress, ["step"]);
        // A client arriving between the two images waits in the backlog.
        let mut late = UnixStream::connect(&path).await.unwrap();
        late.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
        let listener = listener_from_fd(fd).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let next = tokio::spawn(serve(listener, tx, TaskTracker::new(), CancellationToken::new()));
        let Some(Command::Status { reply }) = rx.recv().await else {
            panic!("no status")
        };
        reply.send(serde_json::json!({"image": 2})).unwrap();
        assert_eq!(read_reply(late).await, Reply::Status(serde_json::json!({"image": 2})));
        next.abort();
    }

    /// A fake supervisor: `answer` decides what the nth connection gets
    /// (`None`: closed without an answer).
    fn fake_server(
        path: &Path,
        answer: impl Fn(usize) -> Option<Reply> + Send + 'static,
    ) -> (tokio::task::JoinHandle<()>, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = UnixListener::bind(path).unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                BufReader::new(read).read_line(&mut line).await.unwrap();
                if let Some(reply) = answer(n) {
                    send(&mut write, &reply).await.unwrap();
                }
            }
        });
        (task, count)
    }

    #[tokio::test]
    async fn the_client_retries_while_baton_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let status = serde_json::json!({"ok": true});
        let answer = status.clone();
        let (server, count) = fake_server(&path, move |n| match n {
            0 | 1 => Some(upgrading()),
            2 => None,
            _ => Some(Reply::Status(answer.clone())),
        });
        let reply = request(&path, "test", &Request::Status {}, |_| {}).await.unwrap();
        assert_eq!(reply, Reply::Status(status));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 4);
        server.abort();
    }

    #[tokio::test]
    async fn a_reload_without_an_answer_is_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (server, count) = fake_server(&path, |_| None);
        let reload = Request::Reload {
            wait: false,
            canary: None,
            hold_ms: None,
        };
        let reply = request(&path, "test", &reload, |_| {}).await;
        assert!(matches!(reply, Err(ControlError::NoAnswer)), "{reply:?}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_stale_socket_with_nobody_behind_it_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // A socket file nobody listens on (a baton that crashed).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let started = std::time::Instant::now();
        let outcome = request(&path, "test", &Request::Status {}, |_| {}).await;
        assert!(matches!(outcome, Err(ControlError::NotRunning { .. })), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_end_after_ten_seconds_with_the_last_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (server, count) = fake_server(&path, |_| Some(upgrading()));
        let started = tokio::time::Instant::now();
        let reply = request(&path, "test", &Request::Status {}, |_| {}).await.unwrap();
        assert_eq!(reply, upgrading());
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(9_900) && elapsed <= RETRY_FOR,
            "{elapsed:?}"
        );
        let tries = count.load(std::sync::atomic::Ordering::SeqCst);
        assert!((95..=101).contains(&tries), "{tries}");
        server.abort();
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
