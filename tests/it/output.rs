//! Worker output without journald: every line reaches baton's stderr,
//! prefixed `NAME[generation.worker pid]:`, in order, however fast it comes
//! and however long it is.

use std::time::Duration;

use crate::common::baton::{Baton, config_text, port, script};

#[test]
fn a_burst_of_lines_and_a_huge_line_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // 50,000 numbered lines as fast as the shell can write them, then one
    // 200 KB line, then READY.
    let worker = script(
        dir.path(),
        "chatty.sh",
        "#!/bin/sh\n\
         seq 1 50000 | sed 's/^/burst /'\n\
         head -c 200000 /dev/zero | tr '\\0' 'x'; echo\n\
         echo '<3>with a priority prefix' >&2\n\
         echo done\n\
         systemd-notify --ready\n\
         exec sleep 600\n",
    )
    .display()
    .to_string();
    let port = port();
    let baton = Baton::start(port, &config_text(port, &[&worker], 1, ""));
    assert!(crate::common::wait_until(Duration::from_secs(30), || baton
        .log()
        .contains("]: done")));
    let log = baton.log();
    let prefix = "app[1.0 ";
    let burst: Vec<u64> = log
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_once("]: burst ").and_then(|(_, n)| n.parse().ok()))
        .collect();
    assert_eq!(burst.len(), 50_000, "lines lost");
    assert!(burst.windows(2).all(|w| w[1] == w[0] + 1), "lines out of order");
    // The long line arrives in 64 KiB pieces whose total is the whole line.
    let xs: usize = log
        .lines()
        .filter_map(|l| l.split_once("]: ").map(|(_, t)| t))
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b == b'x'))
        .map(str::len)
        .sum();
    assert_eq!(xs, 200_000);
    // The <N> prefix is stripped.
    assert!(
        log.contains("]: with a priority prefix"),
        "{}",
        &log[log.len().saturating_sub(500)..]
    );
}
