//! baton's Node preload (README "Node apps without code changes"): the
//! JavaScript that `[node] inherit_listen` loads into each worker with
//! `--require`, embedded in the binary and written to the runtime directory,
//! and the worker variables that carry it (`NODE_OPTIONS`,
//! `BATON_LISTEN_ADDRESSES`).
//!
//! The file's name holds a hash of its text, so a `baton upgrade` that
//! brings another preload writes another file: one a running worker (or a
//! worker of an old generation that restarts) may still read is never
//! rewritten.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The preload's text; packaging installs the same file as
/// /usr/lib/baton/node-preload.js.
pub const PRELOAD: &str = include_str!("node/preload.js");

/// The file name in the runtime directory: `node-preload-HASH.js`.
pub fn file_name() -> String {
    format!("node-preload-{:016x}.js", fnv1a(PRELOAD.as_bytes()))
}

/// FNV-1a, 64 bits: a name that changes with the text, not a security
/// measure (the directory is baton's own).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the Node preload to {path}")]
pub struct PreloadError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Writes the preload into `dir` (baton's runtime directory), unless the
/// file is there with the same text: to a temporary file, read-only
/// (0444), then renamed over, so a reader never sees half a file.
pub fn write_preload(dir: &Path) -> Result<PathBuf, PreloadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(file_name());
    if std::fs::read(&path).is_ok_and(|b| b == PRELOAD.as_bytes()) {
        return Ok(path);
    }
    let err = |source| PreloadError {
        path: path.clone(),
        source,
    };
    let tmp = dir.join(format!(".{}.{}.tmp", file_name(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(PRELOAD.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(path)
}

/// The workers' `NODE_OPTIONS`: the user's own (from `[environment]` or
/// inherited) with `--require "PRELOAD"` appended. Node splits
/// NODE_OPTIONS at spaces outside double quotes, and inside them a
/// backslash escapes the next character.
pub fn node_options(own: Option<&str>, preload: &Path) -> String {
    let mut quoted = String::from("\"");
    for c in preload.to_string_lossy().chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    match own.map(str::trim_end).filter(|o| !o.trim().is_empty()) {
        Some(own) => format!("{own} --require {quoted}"),
        None => format!("--require {quoted}"),
    }
}

/// `BATON_LISTEN_ADDRESSES`: the sockets' addresses in fd order (fd 3
/// first), as a JSON array of strings: "127.0.0.1:8080", "[::1]:8080",
/// "/run/app.sock", "@abstract".
pub fn listen_addresses<'a>(addresses: impl Iterator<Item = &'a str>) -> String {
    serde_json::to_string(&addresses.collect::<Vec<_>>()).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_options_are_appended_and_quoted() {
        let p = Path::new("/run/baton/app/node-preload-1.js");
        assert_eq!(node_options(None, p), r#"--require "/run/baton/app/node-preload-1.js""#);
        assert_eq!(
            node_options(Some("  "), p),
            r#"--require "/run/baton/app/node-preload-1.js""#
        );
        assert_eq!(
            node_options(Some("--max-old-space-size=300 "), p),
            r#"--max-old-space-size=300 --require "/run/baton/app/node-preload-1.js""#
        );
        assert_eq!(
            node_options(None, Path::new(r#"/tmp/a b/"q"\x.js"#)),
            r#"--require "/tmp/a b/\"q\"\\x.js""#
        );
    }

    #[test]
    fn addresses_are_a_json_array_in_fd_order() {
        let list = listen_addresses(["127.0.0.1:80", "[::1]:80", "/run/a:b.sock"].into_iter());
        assert_eq!(list, r#"["127.0.0.1:80","[::1]:80","/run/a:b.sock"]"#);
    }

    #[test]
    fn the_preload_is_written_once_read_only_and_named_by_its_text() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = write_preload(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), PRELOAD);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o444);
        assert!(path.file_name().unwrap().to_str().unwrap().starts_with("node-preload-"));
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(write_preload(dir.path()).unwrap(), path);
        let again = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(ino, again, "the same text is not written again");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
