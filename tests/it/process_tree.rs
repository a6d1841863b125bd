//! Which mechanism holds each worker's process tree (README, "`baton
//! status`"): standalone, with no cgroup delegated to it, baton uses a
//! process group per worker and says so, in `status --json`, in the text
//! `status` and in its log. Cgroup mode needs systemd (`Delegate=yes`) and is
//! covered by the system tests.

use crate::common::baton::{Baton, config_text, port};
use crate::common::example_bin;

#[test]
fn standalone_baton_uses_process_groups_and_says_so() {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));

    let status = baton.status();
    assert_eq!(status["process_tree"], "process-group", "status: {status}");
    assert_eq!(status["memory_source"], "process-group-rss", "status: {status}");
    let why = status["process_tree_detail"].as_str().unwrap_or_default();
    assert!(
        why.contains("not delegated") || why.contains("cgroup"),
        "process_tree_detail does not say why there is no cgroup: {why:?}"
    );
    let generations = status["supervisor"]["generations"].as_array().unwrap();
    for w in generations.iter().flat_map(|g| g["workers"].as_array().unwrap()) {
        assert!(
            w["cgroup"].is_null(),
            "a worker has a cgroup in process-group mode: {w}"
        );
        assert!(w["rss_bytes"].as_u64().is_some_and(|b| b > 0), "no memory figure: {w}");
    }

    let text = baton.client(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("process tree: a process group per worker"),
        "baton status does not show the mode:\n{text}"
    );
    assert!(
        baton.log().contains("process tree: a process group per worker"),
        "baton did not log the mode at start:\n{}",
        baton.log()
    );
}
