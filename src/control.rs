//! The control socket: how `baton reload` and `baton status` talk to a
//! running `baton run`.
//!
//! The protocol is one JSON request line from the client, then JSON reply
//! lines from the server: any number of `progress` lines and one final line.
//! The socket lives at a path both sides compute from the app's name, so no
//! flag is needed (see [`control_path`]).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Longest request line accepted; anything longer is garbage.
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Reload {
        #[serde(default)]
        wait: bool,
    },
    /// A struct variant, so that unknown fields are rejected here too.
    Status {},
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
}

/// A request as the supervisor's main task receives it.
#[derive(Debug)]
pub enum Command {
    Reload {
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

/// Binds the control socket, replacing a stale one but never stealing one
/// that a live supervisor still answers on.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| ControlError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning { path: path.to_owned() });
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_owned(),
        source,
    })?;
    // Only the owner (and root) may reload.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(listener)
}

/// Accepts clients until the task is dropped.
pub async fn serve(listener: UnixListener, commands: mpsc::UnboundedSender<Command>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let commands = commands.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, commands).await {
                tracing::debug!("control client: {e}");
            }
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

async fn handle(stream: UnixStream, commands: mpsc::UnboundedSender<Command>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line)).await;
    let request = match read {
        Err(_) => Err("no request within 10s".to_owned()),
        Ok(Err(e)) => Err(format!("unreadable request: {e}")),
        Ok(Ok(_)) => parse_request(&line),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("control socket: rejected a client: {e}");
            return send(&mut write, &Reply::Error(e)).await;
        }
    };
    match request {
        Request::Status {} => {
            let (tx, rx) = oneshot::channel();
            if commands.send(Command::Status { reply: tx }).is_err() {
                return send(&mut write, &Reply::Error("supervisor is shutting down".into())).await;
            }
            match rx.await {
                Ok(status) => send(&mut write, &Reply::Status(status)).await,
                Err(_) => send(&mut write, &Reply::Error("supervisor is shutting down".into())).await,
            }
        }
        Request::Reload { wait } => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            if commands.send(Command::Reload { wait, replies: tx }).is_err() {
                return send(&mut write, &Reply::Error("supervisor is shutting down".into())).await;
            }
            while let Some(reply) = rx.recv().await {
                // A client that went away does not stop the reload.
                send(&mut write, &reply).await?;
            }
            Ok(())
        }
    }
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
            serde_json::to_string(&Request::Reload { wait: true }).unwrap(),
            r#"{"cmd":"reload","wait":true}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"reload"}"#).unwrap(),
            Request::Reload { wait: false }
        );
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

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve(listener, tx));
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
