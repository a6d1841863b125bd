//! Node IPC framing: the byte stream a worker writes on NODE_CHANNEL_FD.
//! The first byte picks the line limit (small, so that the oversize path
//! runs) and the second how the rest is cut into reads. How the stream is
//! chunked must not change which lines are seen, and the framer never
//! holds more than the limit.
#![no_main]

use baton::fuzzing::{Frame, Framer};
use libfuzzer_sys::fuzz_target;

fn frames(max: usize, stream: &[u8], chunk: usize) -> Vec<Frame> {
    let mut framer = Framer::new(max);
    let mut out = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        framer.push(piece, |f| out.push(f));
        assert!(framer.pending() <= max, "holds {} bytes, limit {max}", framer.pending());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [limit, chunk, stream @ ..] = data else { return };
    let max = usize::from(*limit) + 1;
    let whole = frames(max, stream, stream.len());
    let chunked = frames(max, stream, usize::from(*chunk % 16) + 1);
    assert_eq!(whole, chunked, "chunking changed the frames");
    let lines = stream.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(whole.len(), lines, "one frame per complete line");
    // The real limit is far above any input here: a line that says ready is
    // seen as ready.
    let big = frames(1 << 20, stream, 7);
    for (line, frame) in stream.split(|&b| b == b'\n').zip(&big) {
        assert_eq!(*frame == Frame::Ready, baton::fuzzing::is_ready(line.trim_ascii()));
    }
});
