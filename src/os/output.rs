//! Worker stdout/stderr: read from pipes, cut into lines, handed to a
//! [`LogSink`], the last ones kept for failure reports (with the line that
//! looks like the error picked out of them), and, in readiness mode "log",
//! matched against the worker's pattern.
//!
//! Two sinks: one journal entry per line with baton's fields under systemd,
//! or baton's stderr prefixed `NAME[gen.worker pid]` standalone (README
//! "Under systemd").

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Longest line passed on in one piece; longer ones are split, never lost.
pub const MAX_LINE: usize = 64 * 1024;
/// Lines kept per worker for failure reports: enough to hold an error
/// followed by a long stack trace (puma's SyntaxError came with 30 frames).
pub const KEEP_LINES: usize = 200;
/// ... and at most this many bytes of them.
pub const KEEP_BYTES: usize = 64 * 1024;
/// The last lines a failure report shows.
pub const SHOW_LINES: usize = 10;
/// Each kept line is cut after this many characters.
const KEEP_CHARS: usize = 400;
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

/// What goes through the writer thread's queue.
#[derive(Debug)]
enum Item {
    Line(Line),
    /// Answered once every line queued before it has been written and the
    /// sink flushed ([`Writer::flush`]).
    #[cfg_attr(not(test), allow(dead_code))] // for `baton upgrade` (runtime.rs)
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The pumps' end of the writer thread.
#[derive(Debug, Clone)]
pub struct Writer(tokio::sync::mpsc::Sender<Item>);

impl Writer {
    /// Queues one line; waits while the queue is full. False once the
    /// writer thread has gone.
    pub async fn send(&self, line: Line) -> bool {
        self.0.send(Item::Line(line)).await.is_ok()
    }

    /// Resolves once every line queued before this call has been handed to
    /// the sink and the sink has flushed what it batches. Resolves at once
    /// if the writer thread has gone (nothing more will be written).
    #[cfg_attr(not(test), allow(dead_code))] // for `baton upgrade` (runtime.rs)
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.0.send(Item::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the thread that hands lines to `sink`. It ends, after writing
/// everything queued, once every [`Writer`] is dropped.
pub fn spawn_writer(mut sink: Box<dyn LogSink>) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(QUEUE);
    let handle = std::thread::Builder::new().name("baton-log".into()).spawn(move || {
        while let Some(item) = rx.blocking_recv() {
            let mut markers = Vec::new();
            // Lines written since the sink last flushed.
            let mut unflushed = false;
            let mut take = |item: Item, sink: &mut Box<dyn LogSink>| match item {
                Item::Line(line) => {
                    sink.write(&line);
                    unflushed = true;
                }
                Item::Flush(done) => {
                    // Everything before it is written; what the sink holds
                    // goes out before the answer.
                    if unflushed {
                        sink.flush();
                        unflushed = false;
                    }
                    markers.push(done);
                }
            };
            take(item, &mut sink);
            // Lines queued meanwhile join the same batch.
            while let Ok(item) = rx.try_recv() {
                take(item, &mut sink);
            }
            if unflushed {
                sink.flush();
            }
            for done in markers {
                let _ = done.send(());
            }
        }
    })?;
    Ok((Writer(tx), handle))
}

/// The last lines a worker wrote, both streams interleaved, each as
/// "stream: text": at most [`KEEP_LINES`] lines and [`KEEP_BYTES`] bytes.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<Kept>>);

#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Kept {
    fn push(&mut self, line: String) {
        self.bytes = self.bytes.saturating_add(line.len());
        self.lines.push_back(line);
        while self.lines.len() > KEEP_LINES || (self.bytes > KEEP_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes = self.bytes.saturating_sub(old.len());
            }
        }
    }
}

impl Tail {
    fn push(&self, stream: Stream, line: &str) {
        let Ok(mut kept) = self.0.lock() else { return };
        let mut shown: String = line.chars().take(KEEP_CHARS).collect();
        if shown.len() < line.len() {
            shown.push('…');
        }
        kept.push(format!("{}: {shown}", stream.as_str()));
    }

    /// A tail that already holds `lines` (handed over by `baton upgrade`).
    pub fn from_lines(lines: Vec<String>) -> Tail {
        let mut kept = Kept::default();
        for line in lines {
            kept.push(line);
        }
        Tail(Arc::new(Mutex::new(kept)))
    }

    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|k| k.lines.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Readiness mode "log": the worker's pattern, and whom to tell when one
/// of its lines matches. Each worker's pumps get their own, so only that
/// worker's lines can make it ready; it tells once, and is gone with the
/// pumps.
#[derive(Debug, Clone)]
pub struct ReadyWatch(Arc<Watching>);

#[derive(Debug)]
struct Watching {
    pattern: crate::config::LogPattern,
    tell: tokio::sync::mpsc::Sender<()>,
    told: std::sync::atomic::AtomicBool,
}

impl ReadyWatch {
    /// A watch for `pattern`; the receiver gets one `()` at the first
    /// matching line, and ends once every pump holding the watch has.
    pub fn new(pattern: crate::config::LogPattern) -> (ReadyWatch, tokio::sync::mpsc::Receiver<()>) {
        let (tell, rx) = tokio::sync::mpsc::channel(1);
        let watching = Watching {
            pattern,
            tell,
            told: std::sync::atomic::AtomicBool::new(false),
        };
        (ReadyWatch(Arc::new(watching)), rx)
    }

    /// Checks one line (already cut at [`MAX_LINE`]).
    fn check(&self, line: &str) {
        use std::sync::atomic::Ordering;
        let w = &self.0;
        if !w.told.load(Ordering::Relaxed) && w.pattern.is_match(line) && !w.told.swap(true, Ordering::Relaxed) {
            let _ = w.tell.try_send(());
        }
    }
}

/// The line of `lines` (a [`Tail`]'s) that most likely says what went
/// wrong: a listen that baton's Node preload refused (its own words name
/// the sockets baton holds; Node's `Error: bind EADDRNOTAVAIL null:3000`
/// after it says less), else the exception after a Python traceback's last
/// frame, else the first line that names an error. Simple heuristics;
/// `None` when nothing looks like one.
pub fn error_line(lines: &[String]) -> Option<&str> {
    fn text(l: &str) -> &str {
        l.split_once(": ").map_or(l, |(_, t)| t)
    }
    if let Some(refused) = preload_refusal(lines) {
        return Some(refused);
    }
    // Python: "Traceback (most recent call last):", indented frames, then
    // the exception on the first line that is not indented.
    if let Some(start) = lines
        .iter()
        .rposition(|l| text(l).starts_with("Traceback (most recent call last)"))
    {
        if let Some(l) = lines[start + 1..]
            .iter()
            .map(|l| text(l))
            .find(|t| !t.is_empty() && !t.starts_with([' ', '\t']))
        {
            return Some(l);
        }
    }
    lines.iter().map(|l| text(l)).find(|t| looks_like_an_error(t))
}

fn looks_like_an_error(line: &str) -> bool {
    // Stack frames name errors too ("at Error (…)", "from …/errors.rb"):
    // they are not the error.
    let trimmed = line.trim_start();
    if trimmed.starts_with("at ") || trimmed.starts_with("from ") || trimmed.starts_with("File \"") {
        return false;
    }
    const MARKS: &[&str] = &[
        "Error:",
        "error:",
        "ERROR",
        "Exception",
        "Error (",
        "Error)",
        "panicked at",
        "EADDRINUSE",
        "Address already in use",
        "FATAL",
        "Fatal error",
        "SyntaxError",
    ];
    MARKS.iter().any(|m| line.contains(m))
}

/// The line of `lines` in which baton's Node preload refused a listen
/// (`baton: listen(3000) matches none of the sockets baton holds: …`), from
/// `baton:` on. Its mapping lines (`baton: listen(3000) → inherited fd 3 …`)
/// are no refusal.
pub fn preload_refusal(lines: &[String]) -> Option<&str> {
    lines
        .iter()
        .filter_map(|l| l.find("baton: listen(").map(|i| &l[i..]))
        .find(|t| !t.contains(") → inherited "))
}

/// What a failure report says about a worker's kept output (`lines`, a
/// [`Tail`]'s) besides the fault itself: the line that looks like the
/// error, and a hint when the app tried to bind a port that baton holds
/// (`held_ports`), which it cannot: baton's socket is already bound there.
/// `preload`: the worker's generation loads baton's Node preload
/// (`[node] inherit_listen = true`), so the hint does not advise setting it.
pub fn failure_notes(lines: &[String], held_ports: &[u16], preload: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(error) = error_line(lines) {
        notes.push(format!("the error: {error}"));
    }
    if let Some(port) = address_in_use(lines) {
        let held = match port {
            Some(p) => held_ports.contains(&p),
            None => !held_ports.is_empty(),
        };
        if held {
            let what = port.map_or_else(|| "its port".to_owned(), |p| format!("port {p}"));
            notes.push(match preload {
                false => format!(
                    "hint: the app binds {what} itself, and baton already holds it: use the inherited socket \
                     (fd 3, LISTEN_FDS), or set [node] inherit_listen = true for a Node app"
                ),
                true => format!(
                    "hint: the app binds {what} itself, and baton already holds it; baton's Node preload is on \
                     but maps only net listen() calls in Node processes: bind through one of those, or use the \
                     inherited socket (fd 3, LISTEN_FDS)"
                ),
            });
        }
    }
    notes
}

/// The last [`SHOW_LINES`] of `lines`.
pub fn last_lines(lines: &[String]) -> &[String] {
    &lines[lines.len().saturating_sub(SHOW_LINES)..]
}

/// Whether `lines` say that a bind failed because the address was in use,
/// and the port they name (if any: "EADDRINUSE: address already in use
/// :::3000", "[Errno 98] Address already in use" names none).
pub fn address_in_use(lines: &[String]) -> Option<Option<u16>> {
    let line = lines.iter().find(|l| {
        l.contains("EADDRINUSE") || l.contains("Address already in use") || l.contains("address already in use")
    })?;
    // The port: digits after a ':' (Node "… :::3000", Go "listen tcp
    // :8080: bind: …") or after "port " (Ruby "… port 9292"); the last one.
    let mut found = None;
    let starts = line
        .match_indices(':')
        .map(|(i, m)| i + m.len())
        .chain(line.match_indices("port ").map(|(i, m)| i + m.len()));
    for start in starts {
        let digits: String = line[start..].chars().take_while(char::is_ascii_digit).collect();
        if let Ok(p) = digits.parse::<u16>() {
            if p > 0 {
                found = Some(p);
            }
        }
    }
    Some(found)
}

/// What [`pump_from`] gives back when it is asked to stop: the pipe's read
/// end and the bytes read from it but not yet passed on, in order (usually
/// the start of an unfinished line; complete lines too if the hand-over came
/// while several were buffered). A pump resumed with it goes on exactly where
/// this one stopped: no line is lost, none is written twice.
#[derive(Debug)]
pub struct PipeRest {
    /// The read end, in blocking mode (tokio's `Receiver::from_owned_fd`
    /// makes it non-blocking again), close-on-exec as it was created: an
    /// image that is to inherit it across `execve` must clear that.
    pub fd: OwnedFd,
    pub partial: Vec<u8>,
}

impl PipeRest {
    /// A pipe nothing has been read from yet.
    pub fn new(fd: OwnedFd) -> PipeRest {
        PipeRest {
            fd,
            partial: Vec::new(),
        }
    }
}

/// Reads one pipe until EOF. Returns when every writer has closed it.
#[cfg(test)]
pub async fn pump(fd: OwnedFd, stream: Stream, origin: Origin, writer: Writer, tail: Tail) {
    let _ = pump_from(
        PipeRest::new(fd),
        stream,
        origin,
        writer,
        tail,
        None,
        CancellationToken::new(),
    )
    .await;
}

/// Size of each read from the pipe.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one pipe and passes its lines on, `rest.partial` first as if it
/// had just been read from the pipe. Returns `None` at EOF (or when the
/// writer thread has gone), and `Some` with the pipe and what was read but
/// not passed on once `handover` is cancelled. The hand-over is honoured
/// only between lines: a line being sent to the writer is always sent.
///
/// Should the pipe fail to come back out of tokio (its runtime shutting
/// down), what was read is passed on as lines and `None` returned.
///
/// With `ready`, each line is also matched against the worker's pattern
/// (readiness mode "log").
pub async fn pump_from(
    rest: PipeRest,
    stream: Stream,
    origin: Origin,
    writer: Writer,
    tail: Tail,
    ready: Option<ReadyWatch>,
    handover: CancellationToken,
) -> Option<PipeRest> {
    let PipeRest { fd, partial } = rest;
    let mut pump = Lines {
        buf: partial,
        start: 0,
        stream,
        origin,
        writer,
        tail,
        ready,
    };
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::warn!(
                "cannot read the {} pipe of worker {}: {e}",
                stream.as_str(),
                pump.origin.pid
            );
            pump.finish().await;
            return None;
        }
    };
    loop {
        // Everything complete that is held goes out, one line at a time.
        while let Some(end) = next_line(&pump.buf[pump.start..]) {
            if handover.is_cancelled() {
                return pump.hand_over(pipe).await;
            }
            if !pump.emit(end).await {
                return None;
            }
        }
        if handover.is_cancelled() {
            return pump.hand_over(pipe).await;
        }
        pump.buf.drain(..pump.start);
        pump.start = 0;
        pump.buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            biased;
            _ = handover.cancelled() => None,
            read = read_some(&pipe, &mut pump.buf) => Some(read),
        };
        match read {
            None => return pump.hand_over(pipe).await,
            Some(Ok(0)) | Some(Err(_)) => {
                pump.finish().await;
                return None;
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Appends what the pipe holds to `buf` (within its spare capacity); 0 at
/// EOF. Cancel-safe: bytes are read only by the synchronous `try_read_buf`.
async fn read_some(pipe: &tokio::net::unix::pipe::Receiver, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        pipe.readable().await?;
        match pipe.try_read_buf(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            result => return result,
        }
    }
}

/// Length of the next line in `data`, its newline included: at most
/// [`MAX_LINE`] bytes (a longer line is cut there), `None` if `data` holds
/// no complete line yet.
fn next_line(data: &[u8]) -> Option<usize> {
    let window = &data[..data.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => Some(i + 1),
        None if data.len() >= MAX_LINE => Some(MAX_LINE),
        None => None,
    }
}

/// A pump's bytes read and not yet passed on (`buf[start..]`), and where its
/// lines go.
struct Lines {
    buf: Vec<u8>,
    start: usize,
    stream: Stream,
    origin: Origin,
    writer: Writer,
    tail: Tail,
    ready: Option<ReadyWatch>,
}

impl Lines {
    /// Passes on the next `len` bytes as one line. False once the writer
    /// thread has gone.
    async fn emit(&mut self, len: usize) -> bool {
        let mut piece = &self.buf[self.start..self.start + len];
        self.start += len;
        if piece.last() == Some(&b'\n') {
            piece = &piece[..piece.len() - 1];
        }
        if piece.last() == Some(&b'\r') {
            piece = &piece[..piece.len() - 1];
        }
        let raw = String::from_utf8_lossy(piece);
        let (priority, text) = split_priority(&raw);
        self.tail.push(self.stream, text);
        if let Some(ready) = &self.ready {
            ready.check(text);
        }
        let line = Line {
            origin: self.origin.clone(),
            stream: self.stream,
            priority: priority.unwrap_or(self.stream.default_priority()),
            text: text.to_owned(),
        };
        self.writer.send(line).await
    }

    /// At EOF: what is left, complete lines and an unfinished last one.
    async fn finish(&mut self) {
        while self.start < self.buf.len() {
            let len = next_line(&self.buf[self.start..]).unwrap_or(self.buf.len() - self.start);
            if !self.emit(len).await {
                return;
            }
        }
    }

    async fn hand_over(mut self, pipe: tokio::net::unix::pipe::Receiver) -> Option<PipeRest> {
        match pipe.into_blocking_fd() {
            Ok(fd) => Some(PipeRest {
                fd,
                partial: self.buf.split_off(self.start),
            }),
            Err(e) => {
                tracing::warn!(
                    "cannot hand over the {} pipe of worker {}: {e}",
                    self.stream.as_str(),
                    self.origin.pid
                );
                self.finish().await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

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

    fn origin() -> Origin {
        Origin {
            name: "app".into(),
            generation: 1,
            slot: 0,
            pid: 1,
        }
    }

    fn texts(sink: &Collect) -> Vec<String> {
        sink.0.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
    }

    #[tokio::test]
    async fn a_handed_over_pipe_resumes_with_its_unfinished_line() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        let sink = Collect::default();
        let (writer, thread) = spawn_writer(Box::new(sink.clone())).unwrap();
        w.write_all(b"a\nb\npar").unwrap();
        let handover = CancellationToken::new();
        let pump = tokio::spawn(pump_from(
            PipeRest::new(r),
            Stream::Stdout,
            origin(),
            writer.clone(),
            Tail::default(),
            None,
            handover.clone(),
        ));
        for _ in 0..500 {
            if texts(&sink).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(texts(&sink), ["a", "b"]);
        handover.cancel();
        let rest = pump.await.unwrap().expect("handed over, not at EOF");
        assert_eq!(rest.partial, b"par");
        // The fd comes back in blocking mode.
        let flags = nix::fcntl::fcntl(&rest.fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        w.write_all(b"tial\nc\n").unwrap();
        drop(w);
        let end = pump_from(
            rest,
            Stream::Stdout,
            origin(),
            writer.clone(),
            Tail::default(),
            None,
            CancellationToken::new(),
        )
        .await;
        assert!(end.is_none(), "EOF");
        writer.flush().await;
        assert_eq!(texts(&sink), ["a", "b", "partial", "c"]);
        drop(writer);
        writer_thread_done(thread);
    }

    /// Hand-overs while the pump holds many lines read but not passed on:
    /// every line comes out once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_hand_overs_lose_and_double_nothing() {
        const LINES: usize = 100_000;
        let (r, w) = nix::unistd::pipe().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            let mut chunk = String::new();
            for i in 0..LINES {
                chunk.push_str(&format!("line {i}\n"));
                if chunk.len() > 100_000 {
                    f.write_all(chunk.as_bytes()).unwrap();
                    chunk.clear();
                }
            }
            // The last line has no newline and arrives last.
            chunk.pop();
            f.write_all(chunk.as_bytes()).unwrap();
        });
        let sink = Collect::default();
        let (writer, thread) = spawn_writer(Box::new(sink.clone())).unwrap();
        let mut rest = PipeRest::new(r);
        let (mut handovers, mut with_lines) = (0, 0);
        loop {
            let handover = CancellationToken::new();
            let pump = tokio::spawn(pump_from(
                rest,
                Stream::Stdout,
                origin(),
                writer.clone(),
                Tail::default(),
                None,
                handover.clone(),
            ));
            tokio::time::sleep(Duration::from_millis(2)).await;
            handover.cancel();
            match pump.await.unwrap() {
                Some(r) => {
                    handovers += 1;
                    if r.partial.contains(&b'\n') {
                        with_lines += 1;
                    }
                    rest = r;
                }
                None => break,
            }
        }
        feeder.join().unwrap();
        writer.flush().await;
        let got = texts(&sink);
        assert_eq!(got.len(), LINES, "after {handovers} hand-overs");
        for (i, text) in got.iter().enumerate() {
            assert_eq!(text, &format!("line {i}"));
        }
        assert!(handovers > 0);
        assert!(
            with_lines > 0,
            "no hand-over caught buffered lines ({handovers} hand-overs)"
        );
        drop(writer);
        writer_thread_done(thread);
    }

    /// Lines queued before `flush` are written and the sink flushed when it
    /// resolves.
    #[tokio::test]
    async fn flush_waits_for_what_was_queued_before_it() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let sink = Batches {
            log: log.clone(),
            first: Some(go_rx),
        };
        let (writer, thread) = spawn_writer(Box::new(sink)).unwrap();
        for i in 0..3 {
            assert!(writer.send(line(7, &format!("{i}"))).await);
        }
        let flushed = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.flush().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!flushed.is_finished(), "the sink is still busy with line 0");
        go_tx.send(()).unwrap();
        flushed.await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["0", "1", "2", "flush"]);
        drop(writer);
        writer_thread_done(thread);
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
                assert!(writer.send(line(7, &format!("{i}"))).await);
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

    fn kept(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| format!("stderr: {l}")).collect()
    }

    #[test]
    fn a_syntax_error_before_thirty_frames_is_the_error() {
        // puma's output for a SyntaxError in config.ru, frames and all.
        let mut lines = vec![
            "Puma starting in single mode...".to_owned(),
            "/srv/app/config.ru:3: syntax error, unexpected end-of-input (SyntaxError)".to_owned(),
        ];
        for i in 0..30 {
            lines.push(format!("\tfrom /usr/lib/ruby/3.1.0/rack/builder.rb:{i}:in `eval'"));
        }
        let tail = Tail::default();
        for l in &lines {
            tail.push(Stream::Stderr, l);
        }
        let kept = tail.lines();
        assert_eq!(kept.len(), 32, "all of it is kept");
        assert!(last_lines(&kept).iter().all(|l| l.contains("from /usr/lib/ruby")));
        assert_eq!(
            failure_notes(&kept, &[8080], false),
            ["the error: /srv/app/config.ru:3: syntax error, unexpected end-of-input (SyntaxError)"]
        );
    }

    #[test]
    fn the_error_after_a_python_traceback_is_its_last_line() {
        let lines = kept(&[
            "[2026-01-01 10:00:00 +0000] [7] [INFO] Booting worker with pid: 7",
            "Traceback (most recent call last):",
            "  File \"/srv/app/wsgi.py\", line 1, in <module>",
            "    import flaskk",
            "ModuleNotFoundError: No module named 'flaskk'",
            "[2026-01-01 10:00:00 +0000] [7] [INFO] Worker exiting (pid: 7)",
        ]);
        assert_eq!(
            error_line(&lines),
            Some("ModuleNotFoundError: No module named 'flaskk'")
        );
    }

    #[test]
    fn error_heuristics() {
        assert_eq!(
            error_line(&kept(&[
                "starting",
                "thread 'main' panicked at src/main.rs:3:5:",
                "boom"
            ])),
            Some("thread 'main' panicked at src/main.rs:3:5:")
        );
        assert_eq!(
            error_line(&kept(&[
                "node:events:497",
                "Error: Cannot find module 'expresss'",
                "    at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)",
            ])),
            Some("Error: Cannot find module 'expresss'")
        );
        assert_eq!(
            error_line(&kept(&[
                "    at Error (native)",
                "FATAL: database \"app\" does not exist"
            ])),
            Some("FATAL: database \"app\" does not exist")
        );
        assert_eq!(error_line(&kept(&["listening", "shutting down"])), None);
        assert_eq!(error_line(&[]), None);
    }

    #[test]
    fn the_preloads_refusal_is_the_error_and_with_the_preload_on_no_hint_advises_it() {
        // A PM2-style cluster app under the preload: the preload's line,
        // then what Node's cluster module makes of the error.
        let lines = kept(&[
            "baton: listen(3000) matches none of the sockets baton holds: fd 3 (http, 127.0.0.1:8080); listen on one of their ports or paths (baton never binds another)",
            "node:events:497",
            "Error: bind EADDRNOTAVAIL null:3000",
            "    at listenOnPrimaryHandle (node:net:1970:18)",
        ]);
        assert_eq!(
            error_line(&lines),
            Some(
                "baton: listen(3000) matches none of the sockets baton holds: fd 3 (http, 127.0.0.1:8080); listen on one of their ports or paths (baton never binds another)"
            )
        );
        // Its mapping line is no error.
        let mapped = kept(&[
            "baton: listen(3000) → inherited fd 3 (http, 127.0.0.1:8080)",
            "Error: Cannot find module 'expresss'",
        ]);
        assert_eq!(error_line(&mapped), Some("Error: Cannot find module 'expresss'"));
        assert_eq!(preload_refusal(&mapped), None);

        let in_use = kept(&["Error: listen EADDRINUSE: address already in use :::3000"]);
        let off = failure_notes(&in_use, &[3000], false);
        assert!(off[1].contains("set [node] inherit_listen = true"), "{off:?}");
        let on = failure_notes(&in_use, &[3000], true);
        assert!(on[1].starts_with("hint: the app binds port 3000 itself"), "{on:?}");
        assert!(!on.iter().any(|n| n.contains("inherit_listen = true")), "{on:?}");
    }

    #[test]
    fn address_in_use_names_its_port_and_hints_only_for_a_port_baton_holds() {
        let node = kept(&["Error: listen EADDRINUSE: address already in use :::3000"]);
        assert_eq!(address_in_use(&node), Some(Some(3000)));
        let go = kept(&["listen tcp :8080: bind: address already in use"]);
        assert_eq!(address_in_use(&go), Some(Some(8080)));
        let ruby = kept(&["Address already in use - bind(2) for \"0.0.0.0\" port 9292 (Errno::EADDRINUSE)"]);
        assert_eq!(address_in_use(&ruby), Some(Some(9292)));
        let python = kept(&["OSError: [Errno 98] Address already in use"]);
        assert_eq!(address_in_use(&python), Some(None));
        assert_eq!(address_in_use(&kept(&["fine"])), None);

        let hint =
            |lines: &[String], held: &[u16]| failure_notes(lines, held, false).iter().any(|n| n.starts_with("hint:"));
        assert!(hint(&node, &[3000]));
        assert!(failure_notes(&node, &[3000], false)[1].contains("port 3000 itself, and baton already holds it"));
        assert!(!hint(&node, &[8080]), "another port: not baton's doing");
        assert!(hint(&python, &[8080]), "no port named: baton holds one");
        assert!(!hint(&python, &[]));
    }

    #[test]
    fn the_tail_is_bounded_in_lines_and_bytes() {
        let tail = Tail::default();
        for i in 0..1000 {
            tail.push(Stream::Stdout, &format!("line {i}"));
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), KEEP_LINES);
        assert_eq!(lines.last().unwrap(), "stdout: line 999");
        let long = "y".repeat(10_000);
        for _ in 0..1000 {
            tail.push(Stream::Stdout, &long);
        }
        let bytes: usize = tail.lines().iter().map(String::len).sum();
        assert!(bytes <= KEEP_BYTES, "{bytes}");
        assert!(tail.lines().len() > 100);
        assert_eq!(Tail::from_lines(vec!["x".to_owned(); 500]).lines().len(), KEEP_LINES);
    }

    #[tokio::test]
    async fn a_ready_watch_tells_once_and_only_for_its_own_pump() {
        let pattern: crate::config::LogPattern = "Uvicorn running on".parse().unwrap();
        let (mine, mut told) = ReadyWatch::new(pattern.clone());
        let (theirs, mut other_told) = ReadyWatch::new(pattern);
        let sink = Collect::default();
        let (writer, thread) = spawn_writer(Box::new(sink.clone())).unwrap();
        let feed = |text: &'static str, watch: ReadyWatch| {
            let (r, w) = nix::unistd::pipe().unwrap();
            std::fs::File::from(w).write_all(text.as_bytes()).unwrap();
            pump_from(
                PipeRest::new(r),
                Stream::Stderr,
                origin(),
                writer.clone(),
                Tail::default(),
                Some(watch),
                CancellationToken::new(),
            )
        };
        feed(
            "INFO: Started server process\nINFO: Waiting for application startup.\n",
            theirs,
        )
        .await;
        assert_eq!(
            other_told.recv().await,
            None,
            "no match: the watch ends with its pump, untold"
        );
        let mine2 = mine.clone();
        feed(
            "INFO: Uvicorn running on socket\nINFO: Uvicorn running on socket\n",
            mine,
        )
        .await;
        assert_eq!(told.try_recv(), Ok(()));
        drop(mine2);
        assert_eq!(told.recv().await, None, "told once");
        drop(writer);
        writer_thread_done(thread);
    }
}
