//! Worker stdout/stderr: read from pipes, cut into lines, handed to a
//! [`LogSink`], and the last few kept for failure reports.
//!
//! Two sinks: one journal entry per line with baton's fields under systemd,
//! or baton's stderr prefixed `NAME[gen.worker pid]` standalone (README
//! "Under systemd").

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
    /// Called whenever no more lines are queued: a sink that batches hands on
    /// what it holds now, so batching never delays a line.
    fn flush(&mut self) {}
}

/// A [`StderrSink`] writes once it holds this much, even if more is queued.
const STDERR_BATCH: usize = 64 * 1024;

/// Prefixed lines on baton's own stderr (standalone, without journald).
///
/// Lines are formatted into a buffer and written with one `write(2)` per
/// batch (see docs/bench/output.md): stderr is unbuffered, so formatting
/// straight into it cost one system call per fragment, about ten per line.
#[derive(Debug, Default)]
pub struct StderrSink {
    buf: Vec<u8>,
}

impl LogSink for StderrSink {
    fn write(&mut self, line: &Line) {
        if self.push(line) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        // Under the lock baton's own log lines cannot land inside the batch.
        self.flush_to(&mut std::io::stderr().lock());
    }
}

impl StderrSink {
    /// Adds a line to the batch; says whether the batch is full.
    fn push(&mut self, line: &Line) -> bool {
        let o = &line.origin;
        // Writing into a Vec cannot fail.
        let _ = writeln!(
            self.buf,
            "{}[{}.{} {}]: {}",
            o.name, o.generation, o.slot, o.pid, line.text
        );
        self.buf.len() >= STDERR_BATCH
    }

    fn flush_to(&mut self, out: &mut impl Write) {
        if self.buf.is_empty() {
            return;
        }
        // A closed stderr must not take the supervisor down.
        let _ = out.write_all(&self.buf);
        self.buf.clear();
    }
}

/// One journal entry per line, with baton's fields (README "Under systemd").
#[derive(Debug, Default)]
pub struct JournalSink {
    failed: bool,
    fallback: StderrSink,
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
                self.fallback.write(line);
            }
        }
    }

    fn flush(&mut self) {
        self.fallback.flush();
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
            // Lines queued meanwhile join the same batch.
            while let Ok(line) = rx.try_recv() {
                sink.write(&line);
            }
            sink.flush();
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

    /// Counts the calls that would each be one write(2) on stderr.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);
    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(pid: i32, text: &str) -> Line {
        Line {
            origin: Origin {
                name: "app".into(),
                generation: 2,
                slot: 1,
                pid,
            },
            stream: Stream::Stdout,
            priority: 6,
            text: text.to_owned(),
        }
    }

    #[test]
    fn stderr_sink_writes_a_batch_in_one_call() {
        let mut sink = StderrSink::default();
        for i in 0..100 {
            assert!(!sink.push(&line(7, &format!("line {i}"))));
        }
        let mut out = Writes::default();
        sink.flush_to(&mut out);
        assert_eq!(out.0.len(), 1, "one write for the whole batch, not one per fragment");
        let text = String::from_utf8(out.0.concat()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[0], "app[2.1 7]: line 0");
        assert_eq!(lines[99], "app[2.1 7]: line 99");
        sink.flush_to(&mut out);
        assert_eq!(out.0.len(), 1, "nothing left to write");
    }

    #[test]
    fn stderr_sink_batches_are_bounded() {
        let mut sink = StderrSink::default();
        let long = "x".repeat(1000);
        let each = "app[2.1 7]: \n".len() + long.len();
        let pushed = (1..100).find(|_| sink.push(&line(7, &long))).unwrap();
        assert_eq!(
            pushed,
            STDERR_BATCH.div_ceil(each),
            "full once it holds STDERR_BATCH bytes"
        );
    }

    /// Records each line and each flush; its first write waits until the test
    /// has queued more lines.
    struct Batches {
        log: Arc<Mutex<Vec<String>>>,
        first: Option<std::sync::mpsc::Receiver<()>>,
    }
    impl LogSink for Batches {
        fn write(&mut self, line: &Line) {
            if let Some(go) = self.first.take() {
                go.recv().unwrap();
            }
            self.log.lock().unwrap().push(line.text.clone());
        }
        fn flush(&mut self) {
            self.log.lock().unwrap().push("flush".into());
        }
    }

    #[test]
    fn writer_hands_on_queued_lines_as_one_batch() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let sink = Batches {
            log: log.clone(),
            first: Some(go_rx),
        };
        let (writer, thread) = spawn_writer(Box::new(sink)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            for i in 0..5 {
                writer.0.send(line(7, &format!("{i}"))).await.unwrap();
            }
        });
        // Lines 1..4 are queued while the sink is busy with line 0.
        go_tx.send(()).unwrap();
        drop(writer);
        writer_thread_done(thread);
        assert_eq!(*log.lock().unwrap(), ["0", "1", "2", "3", "4", "flush"]);
    }

    fn writer_thread_done(thread: std::thread::JoinHandle<()>) {
        thread.join().unwrap();
    }
}
