//! Load clients that count every request, for asserting "zero failed
//! requests" across reloads, crashes and stops. Both always stop by
//! themselves, after 10 minutes or 5 million requests, even if the test
//! never calls [`Load::stop`].
//!
//! - [`Load::start`]: each thread loops: open a new connection, `GET path`,
//!   count the outcome. A new connection per request means every request
//!   goes through the shared listening socket, which is what a reload must
//!   not disturb.
//! - [`Load::keep_alive`]: each thread holds one keep-alive connection and
//!   sends its requests back to back on it, as wrk does. A response with
//!   `Connection: close` followed by a clean close is the server's polite
//!   way out: the thread reconnects, and nothing failed. A reset or an EOF
//!   after a request was sent, a timeout or a status other than 200 is a
//!   failure, which is what wrk counts: the request a draining server loses
//!   when it closes a connection the client was already using.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{GetError, get, parse_response};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DURATION: Duration = Duration::from_secs(10 * 60);
const MAX_REQUESTS: u64 = 5_000_000;
const KEPT_ERRORS: usize = 10;
/// After a failure, so a dead server doesn't turn the loop into a busy spin.
const FAILURE_PAUSE: Duration = Duration::from_millis(5);

/// What the load has seen so far. `failed` is the sum of the categories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Answered 200 with a whole response.
    pub ok: u64,
    pub failed: u64,
    /// Could not connect (refused: nobody listening).
    pub connect_errors: u64,
    /// Connection reset or broken pipe while sending or receiving.
    pub resets: u64,
    /// No whole response within 10 s.
    pub timeouts: u64,
    /// A whole response, but not 200.
    pub bad_status: u64,
    /// Closed before any response, or a short or garbled one.
    pub bad_responses: u64,
    /// The first few failures, with the time since the load started.
    pub first_errors: Vec<String>,
    /// The last few failures, so a failure late in a long run is not lost
    /// behind early ones that were expected.
    pub last_errors: VecDeque<String>,
    /// `G` of every `hello from generation G ...` body.
    pub generations_seen: BTreeSet<String>,
}

impl LoadStats {
    /// The reload tests' verdict: nothing failed, the load was big enough
    /// to mean something, and generation `last` answered.
    pub fn assert_served_through(&self, min_ok: u64, last: u64) {
        assert_eq!(self.failed, 0, "failed requests: {self}\n{:?}", self.first_errors);
        assert!(self.ok > min_ok, "too little load to mean anything: {self}");
        let last = last.to_string();
        assert!(
            self.generations_seen.contains(&last),
            "never saw generation {last}: {self}"
        );
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }

    fn record(&mut self, outcome: Result<(u16, String), GetError>, since_start: Duration) {
        let error = match outcome {
            Ok((200, body)) => {
                if let Some(rest) = body.strip_prefix("hello from generation ") {
                    let generation = rest.split_whitespace().next().unwrap_or_default();
                    if !self.generations_seen.contains(generation) {
                        self.generations_seen.insert(generation.to_owned());
                    }
                }
                self.ok += 1;
                return;
            }
            Ok((status, body)) => {
                self.bad_status += 1;
                format!("status {status}: {}", body.trim_end())
            }
            Err(err) => {
                match err {
                    GetError::Connect(_) => self.connect_errors += 1,
                    GetError::Reset(_) => self.resets += 1,
                    GetError::Timeout => self.timeouts += 1,
                    GetError::BadResponse(_) => self.bad_responses += 1,
                }
                err.to_string()
            }
        };
        self.failed += 1;
        let error = format!("t+{:.3}s {error}", since_start.as_secs_f64());
        if self.first_errors.len() < KEPT_ERRORS {
            self.first_errors.push(error.clone());
        }
        if self.last_errors.len() == KEPT_ERRORS {
            self.last_errors.pop_front();
        }
        self.last_errors.push_back(error);
    }
}

impl fmt::Display for LoadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests: {} ok, {} failed (connect {}, reset {}, timeout {}, bad status {}, \
             bad response {}); generations {:?}",
            self.total(),
            self.ok,
            self.failed,
            self.connect_errors,
            self.resets,
            self.timeouts,
            self.bad_status,
            self.bad_responses,
            self.generations_seen,
        )?;
        if let Some(first) = self.first_errors.first() {
            write!(f, "; first error: {first}")?;
        }
        Ok(())
    }
}

/// Load running in background threads. Dropping it stops it too.
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `concurrency` threads sending `GET path` to `addr`, which must be
    /// a loopback address.
    pub fn start(addr: SocketAddr, path: &str, concurrency: usize) -> Load {
        assert!(addr.ip().is_loopback(), "load only goes to loopback, not {addr}");
        assert!(concurrency > 0, "concurrency must be at least 1");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads = (0..concurrency)
            .map(|i| {
                let (stop, stats, sent) = (stop.clone(), stats.clone(), sent.clone());
                let path = path.to_owned();
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed)
                            && started.elapsed() < MAX_DURATION
                            && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                        {
                            let outcome = get(addr, &path, REQUEST_TIMEOUT);
                            let failed = !matches!(outcome, Ok((200, _)));
                            stats.lock().unwrap().record(outcome, started.elapsed());
                            if failed {
                                std::thread::sleep(FAILURE_PAUSE);
                            }
                        }
                    })
                    .expect("spawning a load thread")
            })
            .collect();
        Load { stop, stats, threads }
    }

    /// Starts `connections` threads, each sending `GET path` back to back
    /// on one keep-alive connection to `addr` (a loopback address), and
    /// reconnecting only after a response that said `Connection: close`
    /// (or after a failure).
    pub fn keep_alive(addr: SocketAddr, path: &str, connections: usize) -> Load {
        assert!(addr.ip().is_loopback(), "load only goes to loopback, not {addr}");
        assert!(connections > 0, "connections must be at least 1");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads = (0..connections)
            .map(|i| {
                let (stop, stats, sent) = (stop.clone(), stats.clone(), sent.clone());
                let path = path.to_owned();
                std::thread::Builder::new()
                    .name(format!("keep-alive-{i}"))
                    .spawn(move || {
                        let mut conn: Option<TcpStream> = None;
                        while !stop.load(Ordering::Relaxed)
                            && started.elapsed() < MAX_DURATION
                            && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                        {
                            let outcome = keep_alive_get(&mut conn, addr, &path, REQUEST_TIMEOUT);
                            let failed = !matches!(outcome, Ok((200, _)));
                            if failed {
                                conn = None;
                            }
                            stats.lock().unwrap().record(outcome, started.elapsed());
                            if failed {
                                std::thread::sleep(FAILURE_PAUSE);
                            }
                        }
                    })
                    .expect("spawning a load thread")
            })
            .collect();
        Load { stop, stats, threads }
    }

    /// The counts so far; the load keeps running.
    pub fn snapshot(&self) -> LoadStats {
        self.stats.lock().unwrap().clone()
    }

    /// Stops the load, waits for the requests in flight, and returns the
    /// final counts.
    pub fn stop(mut self) -> LoadStats {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("a load thread panicked");
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Joining while already panicking could hide the first panic; the
        // threads stop within one request anyway.
        if !std::thread::panicking() {
            self.halt();
        }
    }
}

/// One request on the keep-alive connection `conn` (opened first if there
/// is none). After a response that says `Connection: close`, the server's
/// clean close is awaited and `conn` is emptied: the next request opens a
/// new connection. Any error leaves `conn` to the caller to drop.
pub fn keep_alive_get(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), GetError> {
    let deadline = Instant::now() + timeout;
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => GetError::Timeout,
        _ => GetError::Reset(e),
    };
    if conn.is_none() {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => GetError::Timeout,
            _ => GetError::Connect(e),
        })?;
        stream.set_nodelay(true).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        *conn = Some(stream);
    }
    let Some(stream) = conn.as_mut() else {
        return Err(GetError::BadResponse("no connection".into()));
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io_err)?;

    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut read_more = |stream: &mut TcpStream, raw: &mut Vec<u8>| -> Result<usize, GetError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GetError::Timeout);
            }
            stream.set_read_timeout(Some(left)).map_err(io_err)?;
            match stream.read(&mut chunk) {
                Ok(n) => {
                    raw.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
    };
    // The head.
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if read_more(stream, &mut raw)? == 0 {
            return Err(if raw.is_empty() {
                GetError::Reset(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection after the request was sent, without answering",
                ))
            } else {
                GetError::BadResponse(format!("closed within the headers after {} bytes", raw.len()))
            });
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    let close = header("connection").is_some_and(|v| v.split(',').any(|t| t.trim() == "close"));
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
    if !chunked && length.is_none() {
        return Err(GetError::BadResponse(
            "a keep-alive response needs a Content-Length or chunked body".into(),
        ));
    }
    // The body.
    loop {
        let whole = if chunked {
            raw[head_end..].windows(5).any(|w| w == b"0\r\n\r\n")
        } else {
            raw.len() >= head_end + length.unwrap_or(0)
        };
        if whole {
            break;
        }
        if read_more(stream, &mut raw)? == 0 {
            return Err(GetError::BadResponse(format!(
                "closed within the body after {} bytes",
                raw.len()
            )));
        }
    }
    let answer = parse_response(&raw).map_err(GetError::BadResponse)?;
    if close {
        // The polite end: the server closes after this response.
        let mut rest = Vec::new();
        match read_more(stream, &mut rest) {
            Ok(0) | Err(GetError::Reset(_)) => {}
            Ok(_) => return Err(GetError::BadResponse("bytes after a Connection: close response".into())),
            Err(e) => return Err(e),
        }
        *conn = None;
    }
    Ok(answer)
}

/// `reloads` reloads of `baton`, 150 ms apart, under keep-alive load: 12
/// connections sending back to back, from 300 ms before the first reload
/// to 300 ms after the last.
pub fn keep_alive_over_reloads(baton: &super::baton::Baton, reloads: usize) -> LoadStats {
    let load = Load::keep_alive(baton.addr(), "/", 12);
    std::thread::sleep(Duration::from_millis(300));
    baton.reload_times(reloads, Duration::from_millis(150));
    std::thread::sleep(Duration::from_millis(300));
    load.stop()
}

/// An example's drain (`Connection: close` on each connection's next
/// response, close after 1.5 s idle) against the usual one (idle grace 0:
/// close idle connections at once), each over `reloads` keep-alive reloads
/// ([`keep_alive_over_reloads`]). `start(grace_ms)` starts the app, with
/// its idle grace set when `Some`. The example's drain must fail nothing
/// and serve through the last generation; the usual one is only measured.
/// Both figures are said, under `app`.
pub fn examples_drain_against_the_usual(
    app: &str,
    reloads: usize,
    min_ok: u64,
    start: impl Fn(Option<u64>) -> super::baton::Baton,
) {
    let mut figures = Vec::new();
    for grace_ms in [None, Some(0)] {
        let baton = start(grace_ms);
        let stats = keep_alive_over_reloads(&baton, reloads);
        let drain = match grace_ms {
            None => "the example's drain (grace 1.5 s)".to_owned(),
            Some(ms) => format!("idle grace {ms} ms (the usual drain)"),
        };
        let line = format!("{app}, keep-alive, 12 connections, {reloads} reloads, {drain}: {stats}");
        super::say(&line);
        figures.push(line);
        if grace_ms.is_none() {
            stats.assert_served_through(min_ok, reloads as u64 + 1);
        } else {
            assert!(stats.ok > min_ok, "too little load to mean anything: {stats}");
        }
    }
    super::say(&figures.join("\n"));
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    /// Reads one request's head; false at EOF.
    fn read_request(reader: &mut BufReader<TcpStream>) -> bool {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return false,
                Ok(_) if line == "\r\n" => return true,
                Ok(_) => {}
            }
        }
    }

    fn ok(close: bool) -> String {
        let body = "hello from generation 1\n";
        let connection = if close { "Connection: close\r\n" } else { "" };
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{connection}\r\n{body}",
            body.len()
        )
    }

    /// A server that answers `answered` requests per connection, then
    /// either closes it after reading the next request (`lose`) or says
    /// `Connection: close` on the last answer.
    fn server(answered: usize, lose: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut writer = conn.try_clone().unwrap();
                    let mut reader = BufReader::new(conn);
                    for i in 0..answered {
                        if !read_request(&mut reader) {
                            return;
                        }
                        let last = i + 1 == answered;
                        if writer.write_all(ok(last && !lose).as_bytes()).is_err() {
                            return;
                        }
                    }
                    if lose {
                        // The next request arrives and is dropped with the
                        // connection: what a drain that closes "idle"
                        // connections does under load.
                        read_request(&mut reader);
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn keep_alive_load_counts_a_request_lost_to_a_closed_connection() {
        let addr = server(5, true);
        let load = Load::keep_alive(addr, "/", 2);
        std::thread::sleep(Duration::from_millis(300));
        let stats = load.stop();
        assert!(stats.ok >= 10, "{stats}");
        assert!(
            stats.failed > 0,
            "a request sent on a connection the server closed is lost: {stats}"
        );
        assert_eq!(stats.failed, stats.resets + stats.bad_responses, "{stats}");
        // Exactly one loss per five answers on each connection.
        assert!(stats.ok / stats.failed >= 4 && stats.ok / stats.failed <= 6, "{stats}");
    }

    #[test]
    fn keep_alive_load_reconnects_after_connection_close_without_a_failure() {
        let addr = server(5, false);
        let load = Load::keep_alive(addr, "/", 2);
        std::thread::sleep(Duration::from_millis(300));
        let stats = load.stop();
        assert!(stats.ok >= 10, "{stats}");
        assert_eq!(stats.failed, 0, "{stats}");
    }

    #[test]
    fn keep_alive_load_counts_a_bad_status() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut writer = conn.try_clone().unwrap();
            let mut reader = BufReader::new(conn);
            if read_request(&mut reader) {
                let r = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = writer.write_all(r.as_bytes());
            }
        });
        let mut conn = None;
        let got = keep_alive_get(&mut conn, addr, "/", Duration::from_secs(5));
        assert!(matches!(got, Ok((503, _))), "{got:?}");
    }
}
