//! The control socket's request parser: whatever a local client writes.
//! The server reads at most `MAX_REQUEST + 1` bytes up to a newline, then
//! parses that; any request it accepts must survive a round trip. The
//! client's reply parser is fuzzed on the same bytes.
#![no_main]

use baton::fuzzing::{MAX_REQUEST, Reply, Request, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // What `read_until(b'\n')` on a `take(MAX_REQUEST + 1)` reader yields.
    let limited = &data[..data.len().min(MAX_REQUEST + 1)];
    let line = match limited.iter().position(|&b| b == b'\n') {
        Some(end) => &limited[..=end],
        None => limited,
    };
    if let Ok(request) = parse_request(line) {
        let again = serde_json::to_vec(&request).expect("a request serializes");
        assert_eq!(serde_json::from_slice::<Request>(&again).ok(), Some(request));
    }
    if let Ok(text) = std::str::from_utf8(line) {
        let _ = serde_json::from_str::<Reply>(text.trim_end());
    }
});
