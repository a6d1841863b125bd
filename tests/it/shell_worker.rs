//! A shell-script worker becomes ready with `systemd-notify --ready`, which
//! sends BARRIER=1 and waits for baton to close the fd it passes.

use std::time::Duration;

use crate::common::baton::{Baton, config_text, port, script};

#[test]
fn systemd_notify_ready_from_a_shell_worker_works() {
    assert!(
        std::process::Command::new("systemd-notify")
            .arg("--version")
            .output()
            .is_ok(),
        "systemd-notify is missing: apt-get install systemd"
    );
    let dir = tempfile::tempdir().unwrap();
    let worker = script(
        dir.path(),
        "worker.sh",
        "#!/bin/sh\n\
         echo \"shell worker $BATON_GENERATION.$BATON_WORKER starting\"\n\
         start=$(date +%s%N)\n\
         systemd-notify --ready --status=\"starting\"\n\
         rc=$?\n\
         took=$(( ($(date +%s%N) - start) / 1000000 ))\n\
         systemd-notify --status=\"notify rc=$rc took=${took}ms\"\n\
         exec sleep 600\n",
    );
    let port = port();
    let worker = worker.display().to_string();
    let baton = Baton::start(port, &config_text(port, &[&worker], 2, "[stop]\ntimeout = \"2s\"\n"));
    // READY=1 came through; now check that BARRIER=1 was released quickly
    // (systemd-notify gives up after 5 s and exits non-zero otherwise).
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || {
            let s = baton.status();
            let workers = s["supervisor"]["generations"][0]["workers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            workers.len() == 2
                && workers
                    .iter()
                    .all(|w| w["status"].as_str().is_some_and(|t| t.starts_with("notify rc=")))
        }),
        "{:#}",
        baton.status()
    );
    let s = baton.status();
    for w in s["supervisor"]["generations"][0]["workers"].as_array().unwrap() {
        // systemd-notify exits non-zero when its barrier times out.
        let text = w["status"].as_str().unwrap();
        assert!(text.starts_with("notify rc=0 "), "systemd-notify failed: {text}");
        eprintln!("worker {}: {text}", w["slot"]);
    }
    let out = baton.reload();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!baton.log().contains("ignored a notify datagram"), "{}", baton.log());
}
