//! Reload records: the one journal entry that ends each reload, canary,
//! promotion, rollback and upgrade (README "Reload records in the
//! journal"). It owns the table of their `MESSAGE_ID`s, one per kind and
//! result, which `packaging/baton.catalog` explains to `journalctl -x`, and
//! writes a record: a structured entry when baton's stderr is the journal,
//! else one plain line of baton's log.
//!
//! An id is forever: a new kind or result gets a new one
//! (`systemd-id128 new`), and the catalog an entry for it (a unit test
//! checks both ways).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::engine::supervisor::{GenId, Record, RecordKind, RecordResult};

/// Every kind and result a record can have, with its `MESSAGE_ID`.
pub const IDS: &[(RecordKind, RecordResult, &str)] = &[
    (RecordKind::Reload, RecordResult::Ok, "07845afa3c8041bcad351de5b79b3ff4"),
    (
        RecordKind::Reload,
        RecordResult::Failed,
        "b7ff280ca9494d42a022c0296706db0a",
    ),
    (
        RecordKind::CanaryStart,
        RecordResult::Ok,
        "7879ff6798d246ce8ca6d47a102a9029",
    ),
    (
        RecordKind::CanaryStart,
        RecordResult::Failed,
        "60534479c64345bc8f9976bc2a208dbd",
    ),
    (
        RecordKind::CanaryAbort,
        RecordResult::Aborted,
        "04cc492ef52847e9a4290c3465aea391",
    ),
    (
        RecordKind::Promote,
        RecordResult::Ok,
        "d614ae3d819e46d894cf5557830c823c",
    ),
    (
        RecordKind::Promote,
        RecordResult::Failed,
        "571b995765c4486cb79515c4ada658c7",
    ),
    (
        RecordKind::Rollback,
        RecordResult::Ok,
        "8b5c5f46e07a4c9ea57477b0faca4a5a",
    ),
    (
        RecordKind::Rollback,
        RecordResult::Failed,
        "2165ad696e174809a6e83bd8aafefb98",
    ),
    (
        RecordKind::Rollback,
        RecordResult::Refused,
        "c84bc303c74242d0820a2e199a00f6b8",
    ),
    (
        RecordKind::Upgrade,
        RecordResult::Ok,
        "8c6023d5ef9f45d7b7c4f25e83d9e734",
    ),
    (
        RecordKind::Upgrade,
        RecordResult::Failed,
        "f5a84d13ec534f6bbfb5e6e9dbd632d5",
    ),
    (
        RecordKind::Upgrade,
        RecordResult::Refused,
        "88ed88821bfb4cf29ffe3d84b816f12d",
    ),
];

/// The `MESSAGE_ID` of a kind and result; `None` for a pair no code path
/// records (a unit test keeps the table and the callers in step).
pub fn message_id(kind: RecordKind, result: RecordResult) -> Option<&'static str> {
    IDS.iter()
        .find(|(k, r, _)| *k == kind && *r == result)
        .map(|(_, _, id)| *id)
}

/// `BATON_EVENT`.
pub fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Reload => "reload",
        RecordKind::CanaryStart => "canary",
        RecordKind::CanaryAbort => "canary-abort",
        RecordKind::Promote => "promote",
        RecordKind::Rollback => "rollback",
        RecordKind::Upgrade => "upgrade",
    }
}

/// `BATON_RESULT`.
pub fn result_name(result: RecordResult) -> &'static str {
    match result {
        RecordResult::Ok => "ok",
        RecordResult::Failed => "failed",
        RecordResult::Refused => "refused",
        RecordResult::Aborted => "aborted",
    }
}

/// Writes the records of one app.
#[derive(Debug, Clone)]
pub struct Recorder {
    app: String,
    /// baton's stderr is the journal: records are structured entries.
    journal: bool,
    /// When the running `baton upgrade` was asked for.
    upgrade_since: Option<Instant>,
}

impl Recorder {
    pub fn new(app: &str, journal: bool) -> Recorder {
        Recorder {
            app: app.to_owned(),
            journal,
            upgrade_since: None,
        }
    }

    /// A `baton upgrade` was asked for: its record counts from now.
    pub fn upgrade_began(&mut self, now: Instant) {
        self.upgrade_since = Some(now);
    }

    /// The upgrade will not happen (`Refused`: this image declined, or
    /// the new binary did in its check; `Failed`: the hand-over failed).
    /// `serving` and `release` are what keeps serving.
    pub fn upgrade_ended(&mut self, result: RecordResult, why: &str, serving: Option<GenId>, release: Option<&str>) {
        let elapsed = self.upgrade_since.take().map_or(Duration::ZERO, |t| t.elapsed());
        let what = match result {
            RecordResult::Failed => "upgrade failed",
            _ => "upgrade refused",
        };
        let record = Record {
            kind: RecordKind::Upgrade,
            result,
            generation: serving,
            elapsed_ms: elapsed.as_millis() as u64,
            reason: why.to_owned(),
            message: format!("{what}: {why}"),
        };
        self.write(&record, release);
    }

    /// Writes `record`; `release` is the id of the release it concerns
    /// (`os::history::Release`), where there is one.
    pub fn write(&self, record: &Record, release: Option<&str>) {
        if self.journal {
            match self.send(record, release) {
                Ok(()) => return,
                // The line below still reaches the journal through stderr.
                Err(e) => tracing::warn!("cannot write a reload record to the journal: {e}"),
            }
        }
        let line = plain_line(record, release);
        match record.result {
            RecordResult::Ok => tracing::info!("{line}"),
            RecordResult::Aborted => tracing::warn!("{line}"),
            RecordResult::Failed | RecordResult::Refused => tracing::error!("{line}"),
        }
    }

    fn send(&self, record: &Record, release: Option<&str>) -> Result<(), libsystemd::errors::SdError> {
        use libsystemd::logging::Priority;
        let priority = match record.result {
            RecordResult::Ok => Priority::Info,
            RecordResult::Aborted => Priority::Warning,
            RecordResult::Failed | RecordResult::Refused => Priority::Error,
        };
        let mut fields = vec![
            ("SYSLOG_IDENTIFIER", "baton".to_owned()),
            ("BATON_APP", self.app.clone()),
            ("BATON_EVENT", kind_name(record.kind).to_owned()),
            ("BATON_RESULT", result_name(record.result).to_owned()),
            (
                "BATON_GENERATION",
                record.generation.map_or_else(String::new, |g| g.to_string()),
            ),
            ("BATON_DURATION_MS", record.elapsed_ms.to_string()),
            ("BATON_REASON", record.reason.clone()),
            ("BATON_RELEASE", release.unwrap_or_default().to_owned()),
        ];
        if let Some(id) = message_id(record.kind, record.result) {
            fields.push(("MESSAGE_ID", id.to_owned()));
        }
        libsystemd::logging::journal_send(priority, &record.message, fields.iter().map(|(k, v)| (*k, v)))
    }
}

/// The record as one line of baton's log (without the journal): the
/// message, then what the fields would say.
pub fn plain_line(record: &Record, release: Option<&str>) -> String {
    let mut line = format!(
        "{} [{} {}",
        record.message,
        kind_name(record.kind),
        result_name(record.result)
    );
    if let Some(g) = record.generation {
        line.push_str(&format!(" · generation {g}"));
    }
    line.push_str(&format!(" · {} ms", record.elapsed_ms));
    if let Some(r) = release {
        line.push_str(&format!(" · release {r}"));
    }
    line.push(']');
    line
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::engine::supervisor::GenId;

    const CATALOG: &str = include_str!("../../packaging/baton.catalog");

    /// The catalog's entries: id → (Subject, the whole entry). Checks the
    /// format journalctl expects on the way.
    fn catalog() -> BTreeMap<String, (String, String)> {
        let mut entries = BTreeMap::new();
        let mut current: Option<(String, String)> = None;
        for line in CATALOG.lines() {
            if let Some(id) = line.strip_prefix("-- ") {
                if let Some((id, text)) = current.take() {
                    entries.insert(id, text);
                }
                let id = id.trim();
                assert!(
                    id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                    "not a lowercase 128-bit id: {id:?}"
                );
                assert!(!entries.contains_key(id), "{id} twice in the catalog");
                current = Some((id.to_owned(), String::new()));
            } else if let Some((_, text)) = current.as_mut() {
                text.push_str(line);
                text.push('\n');
            } else {
                assert!(
                    line.is_empty() || line.starts_with('#'),
                    "text before the first entry: {line:?}"
                );
            }
        }
        if let Some((id, text)) = current {
            entries.insert(id, text);
        }
        entries
            .into_iter()
            .map(|(id, text)| {
                let subject = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: "))
                    .unwrap_or_else(|| panic!("{id} has no Subject:"))
                    .to_owned();
                for header in ["Defined-By: baton", "Support: ", "Documentation: man:baton(1)"] {
                    assert!(text.lines().any(|l| l.starts_with(header)), "{id} lacks {header:?}");
                }
                // Headers, one empty line, then the explanation.
                let body = text.split_once("\n\n").map(|(_, b)| b.trim()).unwrap_or_default();
                assert!(!body.is_empty(), "{id} explains nothing");
                (id, (subject, text))
            })
            .collect()
    }

    #[test]
    fn every_id_has_a_catalog_entry_and_every_entry_an_id() {
        let catalog = catalog();
        let ids: BTreeSet<&str> = IDS.iter().map(|(_, _, id)| *id).collect();
        assert_eq!(ids.len(), IDS.len(), "an id is used twice");
        for (kind, result, id) in IDS {
            assert!(
                catalog.contains_key(*id),
                "{} {} ({id}) has no catalog entry",
                kind_name(*kind),
                result_name(*result)
            );
        }
        for id in catalog.keys() {
            assert!(
                ids.contains(id.as_str()),
                "the catalog explains {id}, which baton never writes"
            );
        }
    }

    #[test]
    fn each_kind_and_result_is_in_the_table_once() {
        let pairs: BTreeSet<(RecordKind, RecordResult)> = IDS.iter().map(|(k, r, _)| (*k, *r)).collect();
        assert_eq!(pairs.len(), IDS.len());
        // What the core and the driver write (see `Record`'s callers).
        use RecordKind::*;
        use RecordResult::*;
        for pair in [
            (Reload, Ok),
            (Reload, Failed),
            (CanaryStart, Ok),
            (CanaryStart, Failed),
            (CanaryAbort, Aborted),
            (Promote, Ok),
            (Promote, Failed),
            (Rollback, Ok),
            (Rollback, Failed),
            (Rollback, Refused),
            (Upgrade, Ok),
            (Upgrade, Failed),
            (Upgrade, Refused),
        ] {
            assert!(message_id(pair.0, pair.1).is_some(), "{pair:?} has no id");
        }
    }

    #[test]
    fn the_catalog_subject_names_the_kind_and_result() {
        let catalog = catalog();
        for (kind, result, id) in IDS {
            let (subject, _) = &catalog[*id];
            let words = subject.to_lowercase();
            let kind_word = match kind {
                RecordKind::Reload => "reload",
                RecordKind::CanaryStart | RecordKind::CanaryAbort => "canary",
                RecordKind::Promote => "promot",
                RecordKind::Rollback => "roll",
                RecordKind::Upgrade => "upgrade",
            };
            let result_word = match result {
                RecordResult::Ok => "",
                RecordResult::Failed => "fail",
                RecordResult::Refused => "refused",
                RecordResult::Aborted => "abort",
            };
            assert!(
                words.contains(kind_word) && words.contains(result_word),
                "{id}: {subject:?} does not say {kind_word} {result_word}"
            );
        }
    }

    #[test]
    fn a_plain_line_says_what_the_fields_would() {
        let record = Record {
            kind: RecordKind::Reload,
            result: RecordResult::Failed,
            generation: Some(GenId::new(3)),
            elapsed_ms: 1200,
            reason: "boom".into(),
            message: "reload failed: boom".into(),
        };
        assert_eq!(
            plain_line(&record, Some("1a2b")),
            "reload failed: boom [reload failed · generation 3 · 1200 ms · release 1a2b]"
        );
        let record = Record {
            generation: None,
            ..record
        };
        assert_eq!(
            plain_line(&record, None),
            "reload failed: boom [reload failed · 1200 ms]"
        );
    }
}
