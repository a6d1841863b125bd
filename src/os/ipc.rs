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

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

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

    /// Bytes of the unfinished line held so far (never more than `max`).
    pub fn pending(&self) -> usize {
        self.line.len()
    }
}

/// Serves one worker's channel until it closes: calls `ready` for each
/// `'ready'`, writes whatever arrives on `outgoing`. Returns the number of
/// other messages it dropped.
pub async fn serve(parent: UnixStream, mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>, mut ready: impl FnMut()) -> u64 {
    let Ok(stream) = tokio::net::UnixStream::from_std(parent) else {
        return 0;
    };
    let (read, mut write) = stream.into_split();
    // Writes run beside the reads in this same task (no task of their own
    // to own): an app that never reads its channel stalls only the writer.
    let writer = async move {
        while let Some(message) = outgoing.recv().await {
            if write.write_all(&message).await.is_err() {
                break;
            }
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    // Not a BufReader: tokio takes a short read as "drained" and waits for
    // the next edge, but a unix socket read also stops after a message that
    // carried fds (SCM_RIGHTS), with data still queued: the channel would
    // stall. Read until WouldBlock instead.
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut framer = Framer::new(MAX_MESSAGE);
        let mut dropped = 0u64;
        'outer: loop {
            if read.readable().await.is_err() {
                break;
            }
            loop {
                let n = match read.try_read(&mut buf) {
                    Ok(0) => break 'outer,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break 'outer,
                };
                framer.push(&buf[..n], |frame| match frame {
                    Frame::Ready => ready(),
                    Frame::Other => dropped += 1,
                });
                // A sender that never pauses must not hog this thread.
                tokio::task::consume_budget().await;
            }
        }
        dropped
    };
    tokio::select! {
        dropped = reader => dropped,
        never = writer => match never {},
    }
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
