//! 200 reloads in a row. baton's open fds and RSS do not grow, and no zombie
//! is left behind.

use std::time::Duration;

use crate::common::baton::{Baton, config_text, fd_count, port, rss_kib, zombies_of};
use crate::common::example_bin;

#[test]
fn two_hundred_reloads_leak_no_fds_memory_or_zombies() {
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, "[stop]\ntimeout = \"5s\"\n"));
    let reload = |i: usize| {
        // --wait: the old generation has fully exited when this returns.
        let out = baton.client(&["reload", "--wait"]);
        assert!(
            out.status.success(),
            "reload {i}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            baton.log()
        );
    };
    // Warm up: allocator arenas, tokio's worker threads, the tails cache.
    for i in 0..70 {
        reload(i);
    }
    let (fds_before, rss_before) = (fd_count(baton.pid()), rss_kib(baton.pid()));
    for i in 70..200 {
        reload(i);
    }
    // Timer tasks of retired workers may still be pending; they hold no fds.
    std::thread::sleep(Duration::from_millis(200));
    let (fds_after, rss_after) = (fd_count(baton.pid()), rss_kib(baton.pid()));
    eprintln!("after 70 reloads: {fds_before} fds, {rss_before} KiB; after 200: {fds_after} fds, {rss_after} KiB");
    assert!(fds_after <= fds_before, "fds grew from {fds_before} to {fds_after}");
    // RSS wobbles with the allocator; a leak of even 1 KiB per reload over
    // 130 reloads would exceed this.
    assert!(
        rss_after <= rss_before + 512,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let zombies = zombies_of(baton.pid());
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    assert_eq!(baton.status()["supervisor"]["serving"].as_u64(), Some(201));
}
