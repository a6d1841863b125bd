//! Exit codes and the one-line error reporter, shared by every command
//! (`commands`) and the importers (`pm2`), so that neither depends on the
//! other.

#![forbid(unsafe_code)]

pub const EX_OK: i32 = 0;
pub const EX_FAILED: i32 = 1;
pub const EX_USAGE: i32 = 2;
pub const EX_CONFIG: i32 = 78;

/// An error and its causes on one line, ripgrep style: the one reporter for
/// every command, so each cause is printed exactly once (the error enums'
/// messages never repeat their `#[source]`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
