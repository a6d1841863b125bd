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
pub const MAX_LINE: usize = 64 * 1024;
/// Lines kept per worker for `reload` failure reports.
pub const KEEP_LINES: usize = 10;
/// Lines buffered between the pumps and the writer thread. When it is full
/// the pumps wait, the pipes fill, and the workers block on write: slower,
/// but nothing is dropped.
const QUEUE: usize = 8192;

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

    /// syslog priority of a line without a `<N>` prefix: info and warning.
    pub fn default_priority(self) -> u8 {
        match self {
            Stream::Stdout => 6,
            Stream::Stderr => 4,
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

/// One line of worker output.
#[derive(Debug, Clone)]
pub struct Line {
    pub origin: Origin,
    pub stream: Stream,
    /// syslog priority, 0 (emerg) to 7 (debug).
    pub priority: u8,
    pub text: String,
}

/// Splits a leading `<N>` (N = 0..7, sd-daemon(3) style) off a line.
pub fn split_priority(text: &str) -> (Option<u8>, &str) {
    match text.as_bytes() {
        [b'<', d @ b'0'..=b'7', b'>', ..] => (Some(d - b'0'), &text[3..]),
        _ => (None, text),
    }
}

/// Where worker lines end up. Runs on the writer thread, so it may block.
pub trait LogSink: Send + 'static {
    fn write(&mut self, line: &Line);
}

/// Prefixed lines on baton's own stderr (DESIGN 1.4, without journald).
#[derive(Debug, Default)]
pub struct StderrSink;

impl LogSink for StderrSink {
    fn write(&mut self, line: &Line) {
        let o = &line.origin;
        let mut err = std::io::stderr().lock();
        // A closed stderr must not take the supervisor down.
        let _ = writeln!(err, "{}[{}.{} {}]: {}", o.name, o.generation, o.slot, o.pid, line.text);
    }
}

/// One journal entry per line, with baton's fields (DESIGN 1.4).
#[derive(Debug, Default)]
pub struct JournalSink {
    failed: bool,
}

impl LogSink for JournalSink {
    fn write(&mut self, line: &Line) {
        let o = &line.origin;
        let fields = [
            ("SYSLOG_IDENTIFIER", o.name.to_string()),
            ("SYSLOG_PID", o.pid.to_string()),
            ("BATON_GENERATION", o.generation.to_string()),
            ("BATON_WORKER", o.slot.to_string()),
            ("BATON_STREAM", line.stream.as_str().to_owned()),
        ];
        use libsystemd::logging::Priority;
        let priority = match line.priority {
            0 => Priority::Emergency,
            1 => Priority::Alert,
            2 => Priority::Critical,
            3 => Priority::Error,
            4 => Priority::Warning,
            5 => Priority::Notice,
            6 => Priority::Info,
            _ => Priority::Debug,
        };
        match libsystemd::logging::journal_send(priority, &line.text, fields.iter().map(|(k, v)| (*k, v))) {
            Ok(()) => self.failed = false,
            Err(e) => {
                // Never lose the line: fall back to stderr, which systemd
                // also sends to the journal.
                if !self.failed {
                    tracing::warn!("cannot write to the journal ({e}); worker output goes to stderr");
                    self.failed = true;
                }
                StderrSink.write(line);
            }
        }
    }
}

/// The pumps' end of the writer thread.
#[derive(Debug, Clone)]
pub struct Writer(tokio::sync::mpsc::Sender<Line>);

/// Starts the thread that hands lines to `sink`. It ends, after writing
/// everything queued, once every [`Writer`] is dropped.
pub fn spawn_writer(mut sink: Box<dyn LogSink>) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Line>(QUEUE);
    let handle = std::thread::Builder::new().name("baton-log".into()).spawn(move || {
        while let Some(line) = rx.blocking_recv() {
            sink.write(&line);
        }
    })?;
    Ok((Writer(tx), handle))
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
pub async fn pump(fd: OwnedFd, stream: Stream, origin: Origin, writer: Writer, tail: Tail) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = match read_line_capped(&mut reader, &mut buf, MAX_LINE).await {
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
        let raw = String::from_utf8_lossy(&buf);
        let (priority, text) = split_priority(&raw);
        tail.push(stream, text);
        let line = Line {
            origin: origin.clone(),
            stream,
            priority: priority.unwrap_or(stream.default_priority()),
            text: text.to_owned(),
        };
        if writer.0.send(line).await.is_err() {
            break;
        }
    }
}

/// Like `read_until(b'\n')` but stops at `max` bytes, so one huge line
/// cannot grow baton's memory without bound.
pub(crate) async fn read_line_capped<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let room = max - buf.len();
        let window = &available[..available.len().min(room)];
        let (used, done) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), buf.len() + window.len() >= max),
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

    #[derive(Default, Clone)]
    struct Collect(Arc<Mutex<Vec<(u8, String)>>>);
    impl LogSink for Collect {
        fn write(&mut self, line: &Line) {
            self.0.lock().unwrap().push((line.priority, line.text.clone()));
        }
    }

    #[test]
    fn priority_prefixes() {
        assert_eq!(split_priority("<3>disk on fire"), (Some(3), "disk on fire"));
        assert_eq!(split_priority("<7>"), (Some(7), ""));
        assert_eq!(split_priority("<8>not a level"), (None, "<8>not a level"));
        assert_eq!(split_priority("<3"), (None, "<3"));
        assert_eq!(split_priority("plain"), (None, "plain"));
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_long_ones_whole_in_pieces() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let long = "x".repeat(MAX_LINE + 10);
        let feeder = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            write!(f, "one\r\n<2>two\n{long}\nlast-without-newline").unwrap();
        });
        let sink = Collect::default();
        let (writer, thread) = spawn_writer(Box::new(sink.clone())).unwrap();
        let tail = Tail::default();
        let origin = Origin {
            name: "app".into(),
            generation: 1,
            slot: 0,
            pid: 1,
        };
        pump(r, Stream::Stderr, origin, writer, tail.clone()).await;
        feeder.join().unwrap();
        writer_thread_done(thread);
        let got = sink.0.lock().unwrap().clone();
        let lines: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines[0], "one");
        assert_eq!(got[0].0, 4, "stderr defaults to warning");
        assert_eq!(lines[1], "two");
        assert_eq!(got[1].0, 2, "<2> sets the priority");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "x".repeat(10));
        assert_eq!(lines[4], "last-without-newline");
        assert_eq!(tail.lines().last().unwrap(), "stderr: last-without-newline");
    }

    fn writer_thread_done(thread: std::thread::JoinHandle<()>) {
        thread.join().unwrap();
    }
}
