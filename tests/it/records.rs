//! Reload records without the journal (README "Reload records in the
//! journal"): each reload, canary, promotion and rollback ends in exactly
//! one plain line of baton's log that says what the journal fields would.

use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::{example_bin, text};

fn release(port: u16, n: u32, extra: &str) -> String {
    let hello = example_bin("hello").display().to_string();
    config_text(
        port,
        &[&hello],
        2,
        &format!("[stop]\ntimeout = \"10s\"\n\n[environment]\nAPP_RELEASE = \"v{n}\"\n{extra}"),
    )
}

/// The record lines of the log: those that end like `[KIND RESULT · ...]`.
fn records(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let (_, tail) = l.rsplit_once(" [")?;
            let tail = tail.strip_suffix(']')?;
            tail.contains(" ms").then(|| tail.to_owned())
        })
        .collect()
}

/// `tail` says KIND RESULT, the generation, a duration and (if `release`)
/// a release id.
fn says(tail: &str, kind_result: &str, generation: Option<u64>, release: bool) -> bool {
    let parts: Vec<&str> = tail.split(" · ").collect();
    let mut i = 0;
    let mut next = || {
        let p = parts.get(i).copied();
        i += 1;
        p
    };
    if next() != Some(kind_result) {
        return false;
    }
    if let Some(g) = generation {
        if next() != Some(format!("generation {g}").as_str()) {
            return false;
        }
    }
    let duration_ok = next().is_some_and(|d| d.strip_suffix(" ms").is_some_and(|n| n.parse::<u64>().is_ok()));
    let release_ok = match next() {
        Some(r) => release && r.strip_prefix("release ").is_some_and(|id| !id.is_empty()),
        None => !release,
    };
    duration_ok && release_ok
}

#[test]
fn without_the_journal_each_event_is_one_plain_line() {
    let port = port();
    let baton = Baton::start(port, &release(port, 1, ""));
    let client = |args: &[&str], ok: bool| {
        let out = baton.client(args);
        assert_eq!(
            out.status.success(),
            ok,
            "{args:?}: {}\nbaton log:\n{}",
            text(&out),
            baton.log()
        );
    };
    // 2: a good reload.
    baton.write_config(&release(port, 2, ""));
    client(&["reload"], true);
    // 3: a failed one.
    baton.write_config(&release(port, 3, "HELLO_FAIL_START = \"FATAL: records test\"\n"));
    client(&["reload"], false);
    // 4: a canary, promoted.
    baton.write_config(&release(port, 4, ""));
    client(&["reload", "--canary", "1"], true);
    client(&["promote"], true);
    // 5: a canary, rolled back.
    baton.write_config(&release(port, 5, ""));
    client(&["reload", "--canary", "1"], true);
    client(&["rollback"], true);
    // A rollback to a release that never served: refused.
    client(&["rollback", "--to", "0000000000"], false);

    let want: [(&str, Option<u64>, bool); 7] = [
        ("reload ok", Some(2), true),
        ("reload failed", Some(3), true),
        ("canary ok", Some(4), true),
        ("promote ok", Some(4), true),
        ("canary ok", Some(5), true),
        ("rollback ok", Some(4), true),
        ("rollback refused", None, false),
    ];
    let mut got = Vec::new();
    assert!(
        crate::common::wait_until(Duration::from_secs(5), || {
            got = records(&baton.log());
            got.len() >= want.len()
        }),
        "records: {got:#?}\nbaton log:\n{}",
        baton.log()
    );
    assert_eq!(got.len(), want.len(), "one record per event: {got:#?}");
    for (tail, (kind_result, generation, release)) in got.iter().zip(want) {
        assert!(
            says(tail, kind_result, generation, release),
            "{tail:?} is not {kind_result} of generation {generation:?}: {got:#?}"
        );
    }
    // The record replaces the lines that said the same: no double-logging.
    let log = baton.log();
    assert_eq!(log.matches("reload finished: generation 2 serving").count(), 1, "{log}");
    assert_eq!(log.matches("reload failed: ").count(), 1, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("reload failed: ") && l.contains("exited with status 3")),
        "{log}"
    );
}
