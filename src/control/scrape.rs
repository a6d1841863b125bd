//! Where the metrics text goes besides `baton metrics`: `GET /metrics` on
//! `[metrics] listen`, and `DIR/NAME.prom` for `[metrics] textfile`. Both
//! read the latest text the driver published on a `watch` channel, so a
//! scrape never waits on the event loop.
//!
//! The HTTP side is a minimal HTTP/1.1 responder on tokio rather than
//! hyper: it answers one fixed path with one body and closes the
//! connection, and a server framework would be most of baton's
//! dependencies for that (hyper is a dev-dependency only, for test apps).
//! Its limits: a request head of at most [`MAX_HEAD`] bytes, read within
//! [`READ_TIMEOUT`], [`MAX_CONNECTIONS`] at once (a new connection evicts
//! the oldest one still without a complete request head, see [`serve`]);
//! anything else gets a 4xx and a rate-limited warning.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::os::notify::{SharedRateLimit, suppressed_note};

/// Longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8192;
/// A client must send its request head within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; one more evicts the oldest that has sent no
/// complete request head yet, or, when there is none, waits for a slot.
pub const MAX_CONNECTIONS: usize = 16;
/// The textfile is rewritten at least this often, so node_exporter's
/// `node_textfile_mtime_seconds` shows baton is alive.
pub const TEXTFILE_EVERY: Duration = Duration::from_secs(15);

/// Binds `[metrics] listen`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The connections still reading their request head, oldest first, each
/// with the token that closes it. A connection leaves it once its head is
/// in (or its read ended), so what stays is what may be evicted.
#[derive(Clone, Default)]
struct Waiting(Arc<std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken)>>>);

impl Waiting {
    fn push(&self, id: u64, evict: CancellationToken) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push_back((id, evict));
    }

    fn remove(&self, id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
    }

    /// Closes the oldest connection that has not sent its head; false when
    /// every connection has (each is then answering, bounded by
    /// [`READ_TIMEOUT`] for the write).
    fn evict_oldest(&self) -> bool {
        let oldest = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        oldest.map(|(_, evict)| evict.cancel()).is_some()
    }
}

/// Serves `GET /metrics` with the latest text until `done`.
///
/// Slow clients cannot lock a scraper out: when all [`MAX_CONNECTIONS`]
/// slots are taken, a new connection evicts the oldest one that has not
/// yet sent a complete request head. A scraper sends its head as soon as it
/// connects, so it is past the read within a moment and is never the
/// oldest waiting: clients that connect and send nothing, or trickle, only
/// ever evict each other. Chosen over a shorter head timeout (still a
/// lock-out, only a shorter one, and a slow link's real scraper would fail
/// it) and over a per-peer limit (a flood from many addresses, or from the
/// scraper's own host, gets around it). When every slot is answering a
/// complete request, the new connection waits for one, as before.
pub async fn serve(
    listener: TcpListener,
    text: watch::Receiver<Arc<str>>,
    tasks: TaskTracker,
    done: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Waiting::default();
    let junk = SharedRateLimit::new(Duration::from_secs(60));
    let evicted = SharedRateLimit::new(Duration::from_secs(60));
    let mut next_id: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = done.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if let Some(n) = junk.allow(std::time::Instant::now()) {
                        tracing::warn!("metrics listener: accept failed: {e}{}", suppressed_note(n));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if waiting.evict_oldest() {
                    if let Some(n) = evicted.allow(std::time::Instant::now()) {
                        tracing::warn!(
                            "metrics listener: all {MAX_CONNECTIONS} connections busy; closed the oldest one \
                             that had sent no complete request yet, to let {peer} in{}",
                            suppressed_note(n)
                        );
                    }
                }
                tokio::select! {
                    _ = done.cancelled() => return,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                }
            }
        };
        next_id += 1;
        let (id, evict) = (next_id, CancellationToken::new());
        waiting.push(id, evict.clone());
        let (text, junk, done, waiting) = (text.clone(), junk.clone(), done.clone(), waiting.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = done.cancelled() => {}
                _ = answer(stream, peer, &text, &junk, &evict, || waiting.remove(id)) => {}
            }
            waiting.remove(id);
            drop(permit);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    /// `GET /metrics` (also with a query string), or `HEAD`.
    Metrics {
        head: bool,
    },
    NotFound,
    /// Another method.
    Method,
    /// Not HTTP/1.x.
    Bad(&'static str),
}

/// Parses the request line of a complete head.
pub fn parse_head(head: &[u8]) -> Asked {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Asked::Bad("empty request");
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Asked::Bad("request line is not UTF-8");
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Bad("malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Bad("not HTTP/1.x");
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Asked::Metrics { head: false },
        ("HEAD", "/metrics") => Asked::Metrics { head: true },
        ("GET" | "HEAD", _) => Asked::NotFound,
        _ => Asked::Method,
    }
}

/// Reads one request head and answers it; the connection then closes.
/// While the head is being read, `evict` closes the connection unanswered;
/// `head_read` is called once the read is over.
async fn answer(
    mut stream: TcpStream,
    peer: SocketAddr,
    text: &watch::Receiver<Arc<str>>,
    junk: &SharedRateLimit,
    evict: &CancellationToken,
    head_read: impl FnOnce(),
) {
    let mut head = Vec::with_capacity(512);
    let reading = tokio::time::timeout(READ_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        #[allow(unreachable_code)]
        Ok::<bool, std::io::Error>(false)
    });
    let read = tokio::select! {
        _ = evict.cancelled() => return,
        read = reading => read,
    };
    head_read();
    let asked = match read {
        Ok(Ok(true)) => parse_head(&head),
        Ok(Ok(false)) if head.len() > MAX_HEAD => Asked::Bad("request head too long"),
        Ok(Ok(false)) => Asked::Bad("connection closed before the request ended"),
        Ok(Err(_)) => return,
        Err(_) => Asked::Bad("no request within 5s"),
    };
    let (status, body, head_only): (&str, Arc<str>, bool) = match &asked {
        Asked::Metrics { head } => ("200 OK", text.borrow().clone(), *head),
        Asked::NotFound => ("404 Not Found", "not found; baton serves /metrics\n".into(), false),
        Asked::Method => ("405 Method Not Allowed", "only GET /metrics\n".into(), false),
        Asked::Bad(_) => ("400 Bad Request", "bad request\n".into(), false),
    };
    if let Asked::Bad(why) = asked {
        if let Some(n) = junk.allow(std::time::Instant::now()) {
            tracing::warn!("metrics listener: {peer}: {why}{}", suppressed_note(n));
        }
    }
    let content_type = if status.starts_with("200") {
        super::metrics::CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(reply.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, write).await;
}

/// `DIR/NAME.prom`.
pub fn textfile_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.prom"))
}

/// Writes `text` to `path` atomically: a temp file beside it, then
/// rename(2), so node_exporter never reads half a file (it ignores names
/// not ending in `.prom`, like the temp file). Blocking.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        // Readable by node_exporter's user whatever baton's umask.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Keeps `path` up to date: on every new text, and at least every
/// [`TEXTFILE_EVERY`] (the same text again when none came in that time). Writes run on the blocking pool; failures are
/// logged, rate-limited. At exit the file stays with the last text: its
/// mtime (node_exporter's `node_textfile_mtime_seconds`) tells how old it
/// is.
pub async fn keep_textfile(
    path: PathBuf,
    mut text: watch::Receiver<Arc<str>>,
    tasks: TaskTracker,
    done: CancellationToken,
) {
    let errors = SharedRateLimit::new(Duration::from_secs(60));
    // Due TEXTFILE_EVERY after the last write, new text or not: the
    // driver's periodic measurement publishes new text a little more
    // often, so while it runs the file is written once a period, not once
    // for the text and again for the clock.
    let again = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(again);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            changed = text.changed() => if changed.is_err() { return },
            _ = &mut again => {}
        }
        again.as_mut().reset(tokio::time::Instant::now() + TEXTFILE_EVERY);
        let body = text.borrow_and_update().clone();
        if body.is_empty() {
            continue;
        }
        let p = path.clone();
        let written = tasks.spawn_blocking(move || write_textfile(&p, &body)).await;
        let error = match written {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        if let Some(n) = errors.allow(std::time::Instant::now()) {
            tracing::warn!(
                "cannot write the metrics textfile {}: {error}{}",
                path.display(),
                suppressed_note(n)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics { head: false }
        );
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Asked::Metrics { head: false }
        );
        assert_eq!(
            parse_head(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Asked::Metrics { head: true }
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), Asked::Method);
        assert!(matches!(parse_head(b"GET /metrics\r\n\r\n"), Asked::Bad(_)));
        assert!(matches!(parse_head(b"\x16\x03\x01garbage"), Asked::Bad(_)));
        assert!(matches!(parse_head(b"GET /metrics SPDY/3\r\n\r\n"), Asked::Bad(_)));
    }

    #[test]
    fn the_textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = textfile_path(dir.path(), "web");
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("web.prom")],
            "no temp file is left"
        );
    }

    #[tokio::test]
    async fn serves_metrics_and_404s_the_rest() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel::<Arc<str>>("baton_generation 1\n".into());
        let (tasks, done) = (TaskTracker::new(), CancellationToken::new());
        tasks.spawn(serve(listener, rx, tasks.clone(), done.clone()));
        let get = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nbaton_generation 1\n"), "{ok}");
        tx.send_replace("baton_generation 2\n".into());
        assert!(
            get("GET /metrics HTTP/1.1\r\n\r\n")
                .await
                .ends_with("baton_generation 2\n")
        );
        assert!(get("GET /other HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
        assert!(get("junk\r\n\r\n").await.starts_with("HTTP/1.1 400 "));
        let long = "GET /metrics HTTP/1.1\r\nX: ".to_owned() + &"a".repeat(MAX_HEAD + 10);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(long.as_bytes()).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        done.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
