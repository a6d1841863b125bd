//! The release history (README "Rollback and history"): the last
//! [`KEEP`] releases that served, newest first, as JSON in the state
//! directory, so that it survives restarts and reboots and `baton history`
//! reads it with baton stopped.
//!
//! A *release* is what a generation pins, minus the policy: argv,
//! environment, resolved directory and the executable's identity. Its id is
//! a hash of those, so the same release started twice has the same id.
//!
//! The file is written whole, to a temporary file that is then renamed over
//! it, so a reader (or a crash) never sees half of it. A file that cannot
//! be read or parsed is reported and ignored: history is a convenience, and
//! never keeps baton from starting.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::spec::{Executable, Launch};

/// How many releases the history keeps.
pub const KEEP: usize = 10;

/// The file in the state directory.
pub const FILE: &str = "history.json";

/// Overrides the base of the state directory (tests use it): the history
/// lives in `$BATON_STATE_DIR/NAME`.
pub const STATE_DIR_ENV: &str = "BATON_STATE_DIR";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// 12 hex digits of a hash of everything below.
    pub id: String,
    pub command: Vec<String>,
    /// The program as found in PATH.
    pub program: PathBuf,
    pub environment: Vec<(String, String)>,
    /// Resolved (no symlinks).
    pub directory: Option<PathBuf>,
    pub executable: Option<Executable>,
}

impl Release {
    pub fn of(launch: &Launch) -> Release {
        let mut release = Release {
            id: String::new(),
            command: launch.argv.clone(),
            program: launch.program.clone(),
            environment: launch.environment.clone(),
            directory: launch.directory.clone(),
            executable: launch.executable.clone(),
        };
        release.id = release.hash();
        release
    }

    /// FNV-1a over the JSON of the identity: stable across Rust versions,
    /// unlike `DefaultHasher`.
    fn hash(&self) -> String {
        let identity = serde_json::to_vec(&(
            &self.command,
            &self.program,
            &self.environment,
            &self.directory,
            &self.executable,
        ))
        .unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in identity {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{:012x}", h >> 16)
    }

    /// Whether this release can still be started as it was: its directory
    /// exists and its executable is the same file. The error says what is
    /// gone or changed.
    pub fn verify(&self) -> Result<(), String> {
        if let Some(dir) = &self.directory {
            if !dir.is_dir() {
                return Err(format!("release {}: its directory {} is gone", self.id, dir.display()));
            }
        }
        let now = crate::os::spawn::executable(&self.program);
        match (&self.executable, now) {
            (_, None) => Err(format!(
                "release {}: its executable {} is gone",
                self.id,
                self.program.display()
            )),
            (Some(then), Some(now)) if *then != now => Err(format!(
                "release {}: its executable {} was replaced since it served (inode, size or mtime differ)",
                self.id,
                self.program.display()
            )),
            _ => Ok(()),
        }
    }
}

/// What changed from release `old` to `new`, one line per kind: the
/// command, the environment keys whose values changed (not the values: they
/// may be secrets), the directory, the executable. Empty if nothing did.
pub fn changes(old: &Release, new: &Release) -> Vec<String> {
    let mut out = Vec::new();
    if old.command != new.command {
        out.push(format!(
            "command: {} → {}",
            old.command.join(" "),
            new.command.join(" ")
        ));
    }
    let value = |r: &Release, k: &str| {
        r.environment
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let keys: std::collections::BTreeSet<&str> = old
        .environment
        .iter()
        .chain(&new.environment)
        .map(|(k, _)| k.as_str())
        .collect();
    let changed: Vec<&str> = keys.into_iter().filter(|k| value(old, k) != value(new, k)).collect();
    if !changed.is_empty() {
        out.push(format!("environment: {} changed", changed.join(", ")));
    }
    if old.directory != new.directory {
        let show = |d: &Option<PathBuf>| d.as_ref().map_or_else(|| "-".to_owned(), |d| d.display().to_string());
        out.push(format!(
            "directory: {} → {}",
            show(&old.directory),
            show(&new.directory)
        ));
    }
    if old.program != new.program {
        out.push(format!(
            "executable: {} → {}",
            old.program.display(),
            new.program.display()
        ));
    } else if old.executable != new.executable {
        out.push(format!(
            "executable: {} was replaced (inode, size or mtime differ)",
            new.program.display()
        ));
    }
    out
}

/// How a release's generation came to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The first generation of a `baton run`.
    Start,
    Reload,
    /// `reload --canary`; once promoted it serves alone.
    Canary,
    Rollback,
}

/// How its reload ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// It served (or serves) as the serving generation.
    Ok,
    /// A canary that still runs.
    Canary,
    CanaryAborted {
        reason: String,
    },
    /// A canary ended by `rollback`.
    RolledBack,
    /// Its promotion failed after it had served as a canary.
    Failed {
        reason: String,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Canary => f.write_str("canary running"),
            Outcome::CanaryAborted { reason } => write!(f, "canary aborted: {reason}"),
            Outcome::RolledBack => f.write_str("canary rolled back"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Which `baton run` (its start, ns since the epoch): generations are
    /// numbered from 1 again by each.
    pub run: u64,
    pub generation: u64,
    pub release: Release,
    pub via: Via,
    /// It was the serving generation (not only a canary) at some time.
    pub served: bool,
    /// RFC 3339, UTC.
    pub started: String,
    pub stopped: Option<String>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Newest first, at most [`KEEP`].
    pub entries: Vec<Entry>,
}

impl History {
    pub fn push(&mut self, entry: Entry) {
        self.entries.insert(0, entry);
        self.entries.truncate(KEEP);
    }

    pub fn entry_mut(&mut self, run: u64, generation: u64) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|e| e.run == run && e.generation == generation)
    }

    /// Where `rollback` goes from the serving release `current` (its id):
    /// the release `to` names (an id, or a unique prefix of one), else the
    /// newest other release that served as the serving generation. After a
    /// rollback that is the release it left, as with `cd -`.
    pub fn target(&self, current: Option<&str>, to: Option<&str>) -> Result<&Entry, String> {
        if let Some(to) = to {
            let hits: Vec<&Entry> = self
                .entries
                .iter()
                .filter(|e| !to.is_empty() && e.release.id.starts_with(to))
                .collect();
            let distinct: std::collections::BTreeSet<&str> = hits.iter().map(|e| e.release.id.as_str()).collect();
            return match (distinct.len(), hits.first()) {
                (1, Some(hit)) => Ok(hit),
                (0, _) | (_, None) => Err(format!("no release {to:?} in the history (`baton history` lists them)")),
                _ => Err(format!("{to:?} names several releases; give more of the id")),
            };
        }
        self.entries
            .iter()
            .filter(|e| e.served)
            .find(|e| Some(e.release.id.as_str()) != current)
            .ok_or_else(|| "no earlier release in the history to roll back to".to_owned())
    }
}

/// The state directory of app `name`: systemd's `$STATE_DIRECTORY`
/// (`StateDirectory=baton/NAME`); else, for root, `/var/lib/baton/NAME`,
/// which is where `StateDirectory=` puts it for a system unit, so that
/// `baton history NAME` typed in a root shell reads what the service wrote;
/// else `$XDG_STATE_HOME/baton/NAME`, else `~/.local/state/baton/NAME`.
/// `BATON_STATE_DIR` overrides the base.
pub fn state_dir(name: &str) -> Option<PathBuf> {
    if let Some(base) = std::env::var_os(STATE_DIR_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(base).join(name));
    }
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY") {
        let dirs = dirs.to_string_lossy().into_owned();
        let all: Vec<&str> = dirs.split(':').filter(|d| !d.is_empty()).collect();
        if let Some(dir) = all
            .iter()
            .find(|d| Path::new(d).file_name().is_some_and(|f| f == name))
            .or(all.first())
        {
            return Some(PathBuf::from(dir));
        }
    }
    if nix::unistd::Uid::current().is_root() {
        return Some(system_dir(name));
    }
    if let Some(base) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(base).join("baton").join(name));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".local/state/baton").join(name))
}

/// Points the symlink `link` at `target` atomically: a new link beside it,
/// renamed over it, so a reader sees the old target or the new one.
pub fn repoint(link: &Path, target: &Path) -> std::io::Result<()> {
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = link.with_file_name(format!(".{name}.baton-{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn system_dir(name: &str) -> PathBuf {
    Path::new("/var/lib/baton").join(name)
}

/// The history file `baton history NAME` reads: the one in [`state_dir`],
/// except that a user other than root with no history of `name` of their
/// own reads the system unit's, if it is there: the service's own user
/// (`User=` in the unit) typing `baton history NAME` in a shell.
pub fn file_to_read(name: &str) -> Option<PathBuf> {
    let own = state_dir(name).map(|d| d.join(FILE));
    if own.as_ref().is_some_and(|f| f.exists()) || std::env::var_os(STATE_DIR_ENV).is_some() {
        return own;
    }
    let system = system_dir(name).join(FILE);
    if system.exists() { Some(system) } else { own }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a baton history file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The history in `path`; a missing file is an empty history.
pub fn load(path: &Path) -> Result<History, HistoryError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
        Err(source) => {
            return Err(HistoryError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut history: History = serde_json::from_slice(&text).map_err(|source| HistoryError::Parse {
        path: path.to_owned(),
        source,
    })?;
    history.entries.truncate(KEEP);
    Ok(history)
}

/// Writes `history` to `path` atomically: a temporary file beside it,
/// synced, then renamed over it. Creates the directory (0700) if needed,
/// and its missing parents as `mkdir -p` would (0755 under the usual
/// umask): a root-only `/var/lib/baton` would lock out a unit's `User=`,
/// whose `StateDirectory=baton/NAME` systemd creates inside it.
pub fn save(path: &Path, history: &History) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // A name of its own per write: the writer task and the last write at
    // exit may overlap.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{FILE}.{}.{n}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(history).map_err(std::io::Error::other)?;
    let written = (|| {
        // 0600: the environment may hold secrets.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `baton history`'s text.
pub fn render(history: &History) -> String {
    use std::fmt::Write as _;
    if history.entries.is_empty() {
        return "no releases recorded yet\n".to_owned();
    }
    let mut out = String::new();
    for e in &history.entries {
        let via = match e.via {
            Via::Start => "start",
            Via::Reload => "reload",
            Via::Canary => "canary",
            Via::Rollback => "rollback",
        };
        let _ = writeln!(
            out,
            "generation {} release {} ({via}): {}",
            e.generation, e.release.id, e.outcome
        );
        let _ = writeln!(
            out,
            "  served {} → {}",
            e.started,
            e.stopped.as_deref().unwrap_or("now")
        );
        let _ = writeln!(out, "  command   {}", e.release.command.join(" "));
        if let Some(dir) = &e.release.directory {
            let _ = writeln!(out, "  directory {}", dir.display());
        }
        match &e.release.executable {
            Some(x) => {
                let _ = writeln!(
                    out,
                    "  executable {} (inode {}, {} bytes, mtime {})",
                    x.path.display(),
                    x.inode,
                    x.size,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(x.mtime_ns.max(0) as u64)
                    )
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  executable {} (unreadable when it started)",
                    e.release.program.display()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn release(tag: &str) -> Release {
        let mut r = Release {
            id: String::new(),
            command: vec!["server".into(), tag.into()],
            program: "/bin/sh".into(),
            environment: vec![("RELEASE".into(), tag.into())],
            directory: Some("/".into()),
            executable: crate::os::spawn::executable(Path::new("/bin/sh")),
        };
        r.id = r.hash();
        r
    }

    fn entry(generation: u64, tag: &str, served: bool) -> Entry {
        Entry {
            run: 1,
            generation,
            release: release(tag),
            via: Via::Reload,
            served,
            started: "2026-11-29T12:00:00Z".into(),
            stopped: None,
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn changes_name_what_differs_and_never_an_environment_value() {
        let (a, mut b) = (release("v1"), release("v1"));
        assert!(changes(&a, &b).is_empty());
        b.command[1] = "--fast".into();
        b.environment.push(("SECRET".into(), "hunter2".into()));
        b.directory = Some("/srv".into());
        if let Some(x) = b.executable.as_mut() {
            x.size += 1;
        }
        let c = changes(&a, &b);
        assert_eq!(
            c,
            vec![
                "command: server v1 → server --fast".to_owned(),
                "environment: SECRET changed".to_owned(),
                "directory: / → /srv".to_owned(),
                "executable: /bin/sh was replaced (inode, size or mtime differ)".to_owned(),
            ]
        );
        assert!(!c.concat().contains("hunter2"));
    }

    #[test]
    fn ids_are_stable_and_differ_per_release() {
        assert_eq!(release("a").id, release("a").id);
        assert_ne!(release("a").id, release("b").id);
        assert_eq!(release("a").id.len(), 12);
    }

    #[test]
    fn the_target_is_the_previous_release_that_served_like_cd_minus() {
        let (v1, v2) = (release("v1").id, release("v2").id);
        let mut h = History::default();
        h.push(entry(1, "v1", true));
        h.push(entry(2, "v3", false)); // an aborted canary
        h.push(entry(3, "v2", true));
        assert_eq!(h.target(Some(&v2), None).unwrap().generation, 1);
        // After a rollback to v1 (generation 4), the previous one is v2 again.
        h.push(entry(4, "v1", true));
        assert_eq!(h.target(Some(&v1), None).unwrap().generation, 3);
        assert_eq!(h.target(Some(&v2), Some(&v1[..6])).unwrap().release.id, v1);
        assert!(
            h.target(Some(&v2), Some("zz"))
                .unwrap_err()
                .contains("no release \"zz\"")
        );
        let mut only = History::default();
        only.push(entry(1, "v1", true));
        assert!(only.target(Some(&v1), None).is_err());
    }

    #[test]
    fn keeps_ten_and_survives_a_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app").join(FILE);
        let mut h = History::default();
        for g in 1..=12 {
            h.push(entry(g, &format!("v{g}"), true));
        }
        assert_eq!(h.entries.len(), KEEP);
        assert_eq!(h.entries[0].generation, 12);
        save(&path, &h).unwrap();
        assert_eq!(load(&path).unwrap(), h);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        save(&path, &h).unwrap();
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        assert_eq!(load(&dir.path().join("none.json")).unwrap(), History::default());
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(load(&path), Err(HistoryError::Parse { .. })));
    }

    #[test]
    fn a_release_whose_directory_or_executable_is_gone_is_refused() {
        assert_eq!(release("a").verify(), Ok(()));
        let mut gone = release("a");
        gone.directory = Some("/nonexistent/releases/v1".into());
        assert!(
            gone.verify()
                .unwrap_err()
                .contains("directory /nonexistent/releases/v1 is gone")
        );
        let mut gone = release("a");
        gone.program = "/nonexistent/bin/server".into();
        assert!(
            gone.verify()
                .unwrap_err()
                .contains("executable /nonexistent/bin/server is gone")
        );
        let mut replaced = release("a");
        if let Some(x) = replaced.executable.as_mut() {
            x.inode += 1;
        }
        assert!(replaced.verify().unwrap_err().contains("was replaced"));
    }
}
