//! Worker stdout/stderr: read from pipes, cut into lines, handed to a
//! [`LogSink`], and the last few kept for failure reports.
//!
//! The sink is the seam for journald: for now lines go to baton's stderr
//! prefixed `NAME[gen.worker pid]`, as DESIGN 1.4 specifies for standalone.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};

/// Longest line passed on in one piece; longer ones are split, never lost.
pub const MAX_LINE: usize = 16 * 1024;
/// Lines kept per worker for `reload` failure reports.
pub const KEEP_LINES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Who wrote a line.
#[derive(Debug, Clone)]
pub struct Origin {
    pub name: Arc<str>,
    pub generation: u64,
    pub slot: usize,
    pub pid: i32,
}

/// Where worker lines go.
pub trait LogSink: Send + Sync + 'static {
    fn line(&self, origin: &Origin, stream: Stream, line: &str);
}

/// Prefixed lines on baton's own stderr.
#[derive(Debug, Default)]
pub struct StderrSink;

impl LogSink for StderrSink {
    fn line(&self, o: &Origin, _stream: Stream, line: &str) {
        let mut err = std::io::stderr().lock();
        // A closed stderr must not take the supervisor down.
        let _ = writeln!(err, "{}[{}.{} {}]: {}", o.name, o.generation, o.slot, o.pid, line);
    }
}

/// The last lines a worker wrote, both streams interleaved.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, stream: Stream, line: &str) {
        let Ok(mut lines) = self.0.lock() else { return };
        if lines.len() == KEEP_LINES {
            lines.pop_front();
        }
        let mut shown: String = line.chars().take(400).collect();
        if shown.len() < line.len() {
            shown.push('…');
        }
        lines.push_back(format!("{}: {shown}", stream.as_str()));
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Reads one pipe until EOF. Returns when every writer has closed it.
pub async fn pump(fd: OwnedFd, stream: Stream, origin: Origin, sink: Arc<dyn LogSink>, tail: Tail) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = match read_line_capped(&mut reader, &mut buf).await {
            Ok(n) => n,
            Err(_) => break,
        };
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf);
        sink.line(&origin, stream, &line);
        tail.push(stream, &line);
    }
}

/// Like `read_until(b'\n')` but stops at [`MAX_LINE`] bytes, so one huge
/// line cannot grow baton's memory without bound.
async fn read_line_capped<R: AsyncBufReadExt + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let room = MAX_LINE - buf.len();
        let window = &available[..available.len().min(room)];
        let (used, done) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), buf.len() + window.len() >= MAX_LINE),
        };
        buf.extend_from_slice(&window[..used]);
        reader.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, String)>>);
    impl LogSink for Collect {
        fn line(&self, _o: &Origin, stream: Stream, line: &str) {
            self.0.lock().unwrap().push((stream.as_str().into(), line.into()));
        }
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_long_ones_whole_in_pieces() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let long = "x".repeat(MAX_LINE + 10);
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            write!(f, "one\r\ntwo\n{long}\nlast-without-newline").unwrap();
        });
        let sink = Arc::new(Collect::default());
        let tail = Tail::default();
        let origin = Origin {
            name: "app".into(),
            generation: 1,
            slot: 0,
            pid: 1,
        };
        pump(r, Stream::Stderr, origin, sink.clone(), tail.clone()).await;
        writer.join().unwrap();
        let got = sink.0.lock().unwrap().clone();
        let lines: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "x".repeat(10));
        assert_eq!(lines[4], "last-without-newline");
        assert_eq!(tail.lines().last().unwrap(), "stderr: last-without-newline");
    }
}
