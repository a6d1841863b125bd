//! Support shared by the integration tests: where the binaries are, free
//! ports, a one-shot HTTP client that says how a request failed, (in
//! [`load`]) a load client that counts every failed request, and (in
//! [`baton`]) a running supervisor under test.
//!
//! Compiled once, into the `it` test binary, which must use all of it: an
//! unused helper is a warning (an error under clippy's `-D warnings`). The
//! binaries that cannot share the `it` process (see `tests/it/main.rs`)
//! include it by path and use only part of it.

pub mod baton;
pub mod load;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `baton` binary cargo built for this test run.
pub fn baton_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// An example program, such as `hello`. `cargo test` builds the examples into
/// `target/<profile>/examples/`, next to the directory that holds `baton`.
pub fn example_bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_baton"))
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example {name} not found at {}: run plain `cargo test` or `cargo test --all-targets`, \
         which build the examples; `cargo test --test X` does not, so run `cargo build --examples` first",
        path.display()
    );
    path
}

/// A client command's outcome, for assertion messages: exit code, stdout
/// and stderr.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Picked at random below the kernel's ephemeral range, so that the client
/// side of the load in parallel tests can't take it before the server under
/// test binds it.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > 11_000)
        .unwrap_or(32_768);
    for attempt in 0u32..1000 {
        let random = RandomState::new().hash_one((std::process::id(), attempt, Instant::now()));
        let port = 10_000 + (random % u64::from(low - 10_000)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // Everything tried was taken: let the kernel choose.
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `GET path` on a new connection with `Connection: close`. Returns the
/// status and body, or an error that starts with what went wrong:
/// `connect: ...`, `reset: ...`, `timeout` or `bad response: ...`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    get(addr, path, timeout).map_err(|e| e.to_string())
}

/// Polls `f` every 20 ms until it returns true or `timeout` has passed.
/// Returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How one request failed.
#[derive(Debug)]
pub enum GetError {
    /// The connection could not be opened (refused, unreachable).
    Connect(io::Error),
    /// The connection was reset or broken while sending or receiving.
    Reset(io::Error),
    /// No complete response within the timeout.
    Timeout,
    /// The server answered, but not with a whole HTTP response.
    BadResponse(String),
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::Connect(e) => write!(f, "connect: {e}"),
            GetError::Reset(e) => write!(f, "reset: {e}"),
            GetError::Timeout => f.write_str("timeout"),
            GetError::BadResponse(why) => write!(f, "bad response: {why}"),
        }
    }
}

/// [`http_get`] with a typed error.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), GetError> {
    assert!(
        addr.ip().is_loopback(),
        "tests only send requests to loopback, not {addr}"
    );
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => GetError::Timeout,
        _ => GetError::Connect(e),
    })?;
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => GetError::Timeout,
        _ => GetError::Reset(e),
    };

    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io_err)?;

    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(GetError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    parse_response(&response).map_err(GetError::BadResponse)
}

/// Parses a whole `Connection: close` response: Content-Length,
/// chunked or close-delimited bodies.
pub fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    if raw.is_empty() {
        return Err("connection closed without a response".to_owned());
    }
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!("no end of headers in {} bytes: {:?}", raw.len(), excerpt(raw)));
    };
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| format!("headers are not UTF-8: {:?}", excerpt(raw)))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| format!("bad status line {status_line:?}"))?,
        _ => return Err(format!("bad status line {status_line:?}")),
    };

    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }

    let rest = &raw[head_end + 4..];
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = content_length {
        if rest.len() < len {
            return Err(format!("short body: {} of {len} bytes, status {status}", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| "body is not UTF-8".to_owned())?;
    Ok((status, body))
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("short chunked body: no chunk size line")?;
        let size_line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_line:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("short chunked body".to_owned());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn excerpt(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned()
}

/// An HTTP answer and when it arrived.
pub type TimedAnswer = (Result<(u16, String), String>, std::time::Instant);

/// `GET /slow?ms=N` on another thread, for a request in flight across a
/// reload or a stop.
pub fn slow_request_in_background(addr: SocketAddr, ms: u64) -> std::thread::JoinHandle<TimedAnswer> {
    std::thread::spawn(move || {
        let answer = http_get(
            addr,
            &format!("/slow?ms={ms}"),
            Duration::from_millis(ms) + Duration::from_secs(30),
        );
        (answer, std::time::Instant::now())
    })
}

/// Writes straight to the process's stderr, past the test harness's output
/// capture, so that CI logs always show it.
pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// Whether this is a CI run (`CI=true`, as CI services set it), where a
/// test must never pass without having run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A precondition of the test is missing. On a developer machine (say, not
/// root) the test says SKIPPED loudly and the caller returns; under
/// `CI=true` this panics with the reason, so a CI run can't pass a test
/// that did not run.
pub fn skip(reason: &str) {
    if in_ci() {
        panic!("CI=true, and this test cannot run here: {reason}");
    }
    let bar = "!".repeat(78);
    say(&format!(
        "\n{bar}\nSKIPPED: {reason}\n(under CI=true this is a failure)\n{bar}\n"
    ));
}
