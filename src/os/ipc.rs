//! Node's IPC channel (readiness mode "node-ipc"), the way
//! `child_process.fork` sets it up: a unix stream socketpair, the child's
//! end at `NODE_CHANNEL_FD`, and with `NODE_CHANNEL_SERIALIZATION_MODE=json`
//! one JSON value per line in each direction.
//!
//! `process.send('ready')` arrives as the line `"ready"`, which marks the
//! worker ready (PM2's `wait_ready`). baton writes `[stop] message` the same
//! way (PM2's `shutdown_with_message`). Everything else the app sends is
//! read and dropped: junk, floods and huge messages must never crash or
//! block the supervisor.

#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest message read whole; longer lines are read and dropped in pieces.
const MAX_MESSAGE: usize = 1024 * 1024;

/// baton's end of a worker's channel, and the end the worker gets.
pub struct Channel {
    pub parent: UnixStream,
    pub child: OwnedFd,
}

/// A fresh socketpair; both ends are close-on-exec (the spawner places the
/// child's end at its fd number, which clears the flag there only).
pub fn channel() -> std::io::Result<Channel> {
    let (parent, child) = UnixStream::pair()?;
    parent.set_nonblocking(true)?;
    Ok(Channel {
        parent,
        child: child.into(),
    })
}

/// One message, as Node's json serialization frames it.
pub fn encode(message: &str) -> Vec<u8> {
    let mut line = serde_json::Value::from(message).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Whether one line from the app is `process.send('ready')`.
pub fn is_ready(line: &[u8]) -> bool {
    // Only a short line can be the string "ready" (JSON may escape it, as
    // "\u0072eady"); skipping the parse for everything else keeps a flood
    // of big messages cheap.
    line.len() <= 64
        && matches!(serde_json::from_slice::<serde_json::Value>(line), Ok(serde_json::Value::String(s)) if s == "ready")
}

/// One complete line from the app, as [`Framer`] classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `process.send('ready')`.
    Ready,
    /// Anything else, including a line longer than the limit.
    Other,
}

/// Splits the app's byte stream into newline-terminated messages, keeping
/// at most `max` bytes of a line: a longer line is dropped in pieces as it
/// arrives, so a huge message costs no memory.
#[derive(Debug)]
pub struct Framer {
    max: usize,
    line: Vec<u8>,
    oversize: bool,
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            max,
            line: Vec::new(),
            oversize: false,
        }
    }

    /// Feeds the next bytes read, in any chunking, and calls `on_frame` for
    /// each line they complete.
    pub fn push(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Frame)) {
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let complete = piece.ends_with(b"\n");
            if !self.oversize {
                if self.line.len() + piece.len() > self.max {
                    self.oversize = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            if complete {
                if !self.oversize && is_ready(self.line.trim_ascii()) {
                    on_frame(Frame::Ready);
                } else {
                    on_frame(Frame::Other);
                }
                self.line.clear();
                self.oversize = false;
            }
        }
    }

    /// A framer that goes on from [`Framer::into_parts`]: `line` is the
    /// unfinished line held, `oversize` whether that line is already being
    /// dropped. A `line` over `max` is dropped (oversize) here too.
    pub fn from_parts(max: usize, line: Vec<u8>, oversize: bool) -> Framer {
        let mut framer = Framer { max, line, oversize };
        if framer.oversize || framer.line.len() > max {
            framer.oversize = true;
            framer.line.clear();
        }
        framer
    }

    /// The unfinished line held and whether it is oversize.
    pub fn into_parts(self) -> (Vec<u8>, bool) {
        (self.line, self.oversize)
    }

    /// Bytes of the unfinished line held so far (never more than `max`).
    pub fn pending(&self) -> usize {
        self.line.len()
    }
}

/// A worker's channel as [`serve_from`] hands it over (`baton upgrade`):
/// resumed with it, a new `serve_from` goes on exactly where this one
/// stopped.
#[derive(Debug)]
pub struct IpcRest {
    /// baton's end, still non-blocking and close-on-exec (an image that is
    /// to inherit it across `execve` must clear that).
    pub stream: UnixStream,
    /// The app's unfinished line ([`Framer::into_parts`]).
    pub partial: Vec<u8>,
    /// Whether that line is over the limit and being dropped.
    pub oversize: bool,
    /// Messages for the app not written yet, in order. A message whose
    /// write had started was finished first; none is here in part.
    pub unsent: Vec<Vec<u8>>,
}

impl IpcRest {
    /// A channel nothing has gone through yet.
    pub fn new(stream: UnixStream) -> IpcRest {
        IpcRest {
            stream,
            partial: Vec::new(),
            oversize: false,
            unsent: Vec::new(),
        }
    }
}

/// Serves one worker's channel until it closes: calls `ready` for each
/// `'ready'`, writes whatever arrives on `outgoing`. Returns the number of
/// other messages it dropped.
#[cfg(test)]
pub async fn serve(parent: UnixStream, outgoing: mpsc::UnboundedReceiver<Vec<u8>>, ready: impl FnMut()) -> u64 {
    serve_from(IpcRest::new(parent), outgoing, ready, CancellationToken::new())
        .await
        .1
}

/// How a reader of the channel stopped.
enum ReadEnd {
    Closed,
    HandedOver,
}

/// [`serve`], starting from `rest` (its `unsent` messages are written
/// before anything from `outgoing`), and stopping when `handover` is
/// cancelled: then it returns the channel's state in `Some`, once the
/// reader is between two reads and the writer between two messages (a
/// message being written is finished first, which waits as long as the app
/// does not read). `outgoing` is closed then and what it still held goes
/// into `unsent`: a later send to it fails, so nothing is lost unseen.
/// `None` when the channel closed. Both with the number of messages
/// dropped (this call's only).
pub async fn serve_from(
    rest: IpcRest,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    mut ready: impl FnMut(),
    handover: CancellationToken,
) -> (Option<IpcRest>, u64) {
    let IpcRest {
        stream,
        partial,
        oversize,
        unsent,
    } = rest;
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream))
    {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!("cannot serve a worker's IPC channel: {e}");
            return (None, 0);
        }
    };
    let mut unsent: VecDeque<Vec<u8>> = unsent.into();
    let mut framer = Framer::from_parts(MAX_MESSAGE, partial, oversize);
    let mut dropped = 0u64;
    let end = {
        // Writes run beside the reads in this same task (no task of their
        // own to own): an app that never reads its channel stalls only the
        // writer.
        let writer = async {
            let mut broken = false;
            loop {
                if handover.is_cancelled() {
                    return;
                }
                let message = match unsent.pop_front() {
                    Some(message) => message,
                    None => tokio::select! {
                        biased;
                        _ = handover.cancelled() => return,
                        message = outgoing.recv() => match message {
                            Some(message) => message,
                            None => {
                                handover.cancelled().await;
                                return;
                            }
                        },
                    },
                };
                // After a failed write the app is gone or deaf: what is
                // sent to it from then on is dropped.
                if !broken && write_all(&stream, &message).await.is_err() {
                    broken = true;
                }
            }
        };
        // Not a BufReader: tokio takes a short read as "drained" and waits
        // for the next edge, but a unix socket read also stops after a
        // message that carried fds (SCM_RIGHTS), with data still queued: the
        // channel would stall. Read until WouldBlock instead.
        let reader = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let readable = tokio::select! {
                    biased;
                    _ = handover.cancelled() => return ReadEnd::HandedOver,
                    readable = stream.readable() => readable,
                };
                if readable.is_err() {
                    return ReadEnd::Closed;
                }
                loop {
                    // Between two reads the framer holds all that was read.
                    if handover.is_cancelled() {
                        return ReadEnd::HandedOver;
                    }
                    let n = match stream.try_read(&mut buf) {
                        Ok(0) => return ReadEnd::Closed,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return ReadEnd::Closed,
                    };
                    framer.push(&buf[..n], |frame| match frame {
                        Frame::Ready => ready(),
                        Frame::Other => dropped += 1,
                    });
                    // A sender that never pauses must not hog this thread.
                    tokio::task::consume_budget().await;
                }
            }
        };
        tokio::pin!(reader, writer);
        let mut writer_stopped = false;
        let end = loop {
            tokio::select! {
                end = &mut reader => break end,
                () = &mut writer, if !writer_stopped => writer_stopped = true,
            }
        };
        if matches!(end, ReadEnd::HandedOver) && !writer_stopped {
            // The message being written, if any, is finished first.
            writer.await;
        }
        end
    };
    match end {
        ReadEnd::Closed => (None, dropped),
        ReadEnd::HandedOver => {
            outgoing.close();
            while let Ok(message) = outgoing.try_recv() {
                unsent.push_back(message);
            }
            let (partial, oversize) = framer.into_parts();
            match stream.into_std() {
                Ok(stream) => (
                    Some(IpcRest {
                        stream,
                        partial,
                        oversize,
                        unsent: unsent.into(),
                    }),
                    dropped,
                ),
                Err(e) => {
                    tracing::warn!("cannot hand over a worker's IPC channel: {e}");
                    (None, dropped)
                }
            }
        }
    }
}

/// Writes one whole message (`write_all` through a shared reference, so the
/// reader can use the stream meanwhile).
async fn write_all(stream: &tokio::net::UnixStream, mut message: &[u8]) -> std::io::Result<()> {
    while !message.is_empty() {
        stream.writable().await?;
        match stream.try_write(message) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => message = &message[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{BufRead, Write};

    #[test]
    fn frames_like_node() {
        assert_eq!(encode("shutdown"), b"\"shutdown\"\n");
        assert_eq!(encode("a \"quoted\"\nline"), b"\"a \\\"quoted\\\"\\nline\"\n");
        assert!(is_ready(b"\"ready\""));
        assert!(!is_ready(b"{\"type\":\"ready\"}"));
        assert!(!is_ready(b"\"ready"));
        assert!(!is_ready(b"\xff\xfe"));
        assert!(!is_ready(b""));
        assert!(is_ready(b"\"\\u0072eady\""));
    }

    #[test]
    fn framer_cuts_lines_whatever_the_reads_and_drops_long_ones() {
        let stream = b"\"ready\"\n{\"a\":\"long message\"}\n\"\\u0072eady\"\npartial";
        for chunk in 1..stream.len() {
            let mut framer = Framer::new(10);
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                framer.push(piece, |f| frames.push(f));
                assert!(framer.pending() <= 10);
            }
            // The escaped "ready" is 14 bytes with its newline: over the limit.
            assert_eq!(frames, [Frame::Ready, Frame::Other, Frame::Other], "reads of {chunk}");
            assert_eq!(framer.pending(), "partial".len());
        }
    }

    #[test]
    fn a_framer_goes_on_from_its_parts() {
        let mut framer = Framer::new(10);
        let mut frames = Vec::new();
        framer.push(b"\"rea", |f| frames.push(f));
        let (line, oversize) = framer.into_parts();
        assert_eq!((line.as_slice(), oversize), (&b"\"rea"[..], false));
        let mut framer = Framer::from_parts(10, line, oversize);
        framer.push(b"dy\"\n", |f| frames.push(f));
        assert_eq!(frames, [Frame::Ready]);
        // An oversize line stays dropped to its end.
        let mut framer = Framer::new(10);
        framer.push(&[b'x'; 11], |f| frames.push(f));
        let (line, oversize) = framer.into_parts();
        assert!(oversize && line.is_empty());
        let mut framer = Framer::from_parts(10, line, oversize);
        framer.push(b"\"ready\"\n\"ready\"\n", |f| frames.push(f));
        assert_eq!(frames, [Frame::Ready, Frame::Other, Frame::Ready]);
        // A line too long for the new limit is dropped too.
        let framer = Framer::from_parts(2, b"abc".to_vec(), false);
        assert_eq!(framer.into_parts(), (Vec::new(), true));
    }

    type Counter = std::sync::Arc<std::sync::atomic::AtomicUsize>;

    fn count(counter: &Counter) -> impl FnMut() + use<> {
        let counter = counter.clone();
        move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn ready_split_across_a_hand_over_is_seen_once() {
        let Channel { parent, child } = channel().unwrap();
        let mut app = UnixStream::from(child);
        let seen = Counter::default();
        let (_tx, rx) = mpsc::unbounded_channel();
        let handover = CancellationToken::new();
        let server = tokio::spawn(serve_from(IpcRest::new(parent), rx, count(&seen), handover.clone()));
        app.write_all(b"\"ready\"\n[1]\n\"rea").unwrap();
        until("the first ready", || {
            seen.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        handover.cancel();
        let (rest, dropped) = server.await.unwrap();
        let rest = rest.expect("handed over");
        assert_eq!(dropped, 1);
        assert_eq!(rest.partial, b"\"rea");
        assert!(!rest.oversize);
        assert!(rest.unsent.is_empty());
        app.write_all(b"dy\"\n").unwrap();
        let (_tx, rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve_from(rest, rx, count(&seen), CancellationToken::new()));
        until("the second ready", || {
            seen.load(std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await;
        drop(app);
        let (rest, dropped) = server.await.unwrap();
        assert!(rest.is_none(), "closed");
        assert_eq!(dropped, 0);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn messages_not_written_at_a_hand_over_are_written_after_it_in_order() {
        let Channel { parent, child } = channel().unwrap();
        let app = UnixStream::from(child);
        let (tx, rx) = mpsc::unbounded_channel();
        let handover = CancellationToken::new();
        let server = tokio::spawn(serve_from(IpcRest::new(parent), rx, || {}, handover.clone()));
        // The server has not run yet (one thread): both wait in `outgoing`.
        tx.send(encode("one")).unwrap();
        tx.send(encode("two")).unwrap();
        handover.cancel();
        let (rest, _) = server.await.unwrap();
        let rest = rest.unwrap();
        assert_eq!(rest.unsent, [encode("one"), encode("two")]);
        assert!(
            tx.send(encode("late")).is_err(),
            "outgoing is closed: a late send fails"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve_from(rest, rx, || {}, CancellationToken::new()));
        tx.send(encode("three")).unwrap();
        let lines = tokio::task::spawn_blocking(move || {
            let mut reader = std::io::BufReader::new(app);
            let mut lines = Vec::new();
            for _ in 0..3 {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                lines.push(line);
            }
            lines
        })
        .await
        .unwrap();
        assert_eq!(lines, ["\"one\"\n", "\"two\"\n", "\"three\"\n"]);
        assert!(server.await.unwrap().0.is_none());
    }

    /// A message whose write has started is finished before the hand-over,
    /// however long the app takes to read it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_being_written_is_finished_before_the_hand_over() {
        let Channel { parent, child } = channel().unwrap();
        let app = UnixStream::from(child);
        let (tx, rx) = mpsc::unbounded_channel();
        let handover = CancellationToken::new();
        let server = tokio::spawn(serve_from(IpcRest::new(parent), rx, || {}, handover.clone()));
        let big = encode(&"x".repeat(4 * 1024 * 1024));
        tx.send(big.clone()).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        handover.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "the hand-over waits for the message");
        let len = big.len();
        let reader = std::thread::spawn(move || {
            let mut app = app;
            let mut got = vec![0u8; len];
            std::io::Read::read_exact(&mut app, &mut got).unwrap();
            (app, got)
        });
        let (rest, _) = server.await.unwrap();
        let rest = rest.unwrap();
        assert!(rest.unsent.is_empty());
        let (app, got) = reader.join().unwrap();
        assert!(got == big, "the whole message, once");
        let (tx, rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve_from(rest, rx, || {}, CancellationToken::new()));
        tx.send(encode("after")).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&app).read_line(&mut line).unwrap();
        assert_eq!(line, "\"after\"\n");
        drop(app);
        assert!(server.await.unwrap().0.is_none());
    }

    #[tokio::test]
    async fn junk_floods_and_huge_lines_are_dropped_and_ready_gets_through() {
        let Channel { parent, child } = channel().unwrap();
        let mut app = UnixStream::from(child);
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let server = tokio::spawn(serve(parent, rx, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let writer = std::thread::spawn(move || {
            let mut reply = std::io::BufReader::new(app.try_clone().unwrap());
            app.write_all(b"\x00\x01garbage\n{\"cmd\":\"NODE_HANDLE\"}\n42\n[1,[2,[3]]]\n")
                .unwrap();
            app.write_all(&vec![b'x'; 3 * MAX_MESSAGE]).unwrap();
            app.write_all(b"\n").unwrap();
            for _ in 0..10_000 {
                app.write_all(b"{\"flood\":true}\n").unwrap();
            }
            app.write_all(b"\"ready\"\n").unwrap();
            // baton writes back on the same channel.
            let mut line = String::new();
            reply.read_line(&mut line).unwrap();
            drop(app);
            line
        });
        tx.send(encode("shutdown")).unwrap();
        let dropped = server.await.unwrap();
        assert_eq!(writer.join().unwrap(), "\"shutdown\"\n");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(dropped >= 10_004, "{dropped}");
    }
}
