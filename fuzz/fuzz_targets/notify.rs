//! The sd_notify datagram parser: any bytes a worker (or anything that can
//! reach its socket) sends. It must never panic, and what it accepts must
//! hold what the datagram said.
#![no_main]

use baton::fuzzing::Notify;
use baton::fuzzing::parse_notify as parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse(data) else { return };
    // Accepted means valid UTF-8 without NUL, and each message came from a
    // line of it.
    let text = std::str::from_utf8(data).expect("accepted a datagram that is not UTF-8");
    assert!(!text.contains('\0'), "accepted a NUL byte");
    let lines = text.split('\n').filter(|l| !l.is_empty()).count();
    assert!(
        parsed.messages.len() <= lines,
        "{} messages from {lines} lines",
        parsed.messages.len()
    );
    for message in &parsed.messages {
        match message {
            Notify::MainPid(pid) => assert!(pid.as_raw() > 0, "MAINPID={pid} accepted"),
            Notify::Status(s) => assert!(text.contains(s.as_str())),
            _ => {}
        }
    }
});
