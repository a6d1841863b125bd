//! The hand-over of `baton upgrade`, as the new binary reads it (in its
//! check mode, and after the exec): whatever bytes it gets, it parses them
//! or says why not, never panics; a hand-over it accepts survives a round
//! trip, and its core state is imported or refused, never half-taken.
#![no_main]

use baton::fuzzing::{HandOver, Supervisor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(handover) = HandOver::from_json(data) else {
        return;
    };
    let json = handover.to_json().expect("an accepted hand-over serializes");
    let again = HandOver::from_json(&json).expect("a serialized hand-over parses");
    assert_eq!(again.to_json().ok(), Some(json));
    let _ = Supervisor::import(handover.core, std::time::Instant::now());
});
