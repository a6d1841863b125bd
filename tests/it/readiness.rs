//! Readiness that real servers can give (issue 14): `[readiness] settle`,
//! mode "log" (a line of the worker's own output), failure reports that
//! show the error, and a NOTIFY_SOCKET path that a path-only client uses.

use std::time::Duration;

use crate::common::baton::{Baton, config_text, port, script};
use crate::common::example_bin;
use crate::common::load::Load;

fn hello() -> String {
    example_bin("hello").display().to_string()
}

/// A worker that sends READY=1 the way the smallest sd_notify clients do:
/// `connect(2)` to NOTIFY_SOCKET as a path (an abstract `@name` would be a
/// file name here, and fail). Then it lives `LIVE` seconds and exits 4.
const PATH_ONLY_NOTIFY: &str = r#"#!/usr/bin/env python3
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
s.send(b"READY=1")
print("sent READY=1", flush=True)
time.sleep(float(os.environ.get("LIVE", "600")))
print("Traceback (most recent call last):", file=sys.stderr)
print('  File "/srv/app/app.py", line 3, in <module>', file=sys.stderr)
print("RuntimeError: workers failed to boot", file=sys.stderr, flush=True)
sys.exit(4)
"#;

fn old_generation_serves(baton: &Baton) {
    let s = baton.status();
    assert_eq!(s["supervisor"]["serving"].as_u64(), Some(1), "{s:#}");
    assert_eq!(s["supervisor"]["last_reload"]["ok"], false, "{s:#}");
}

#[test]
fn a_worker_that_dies_while_settling_fails_the_reload_and_the_old_generation_serves() {
    let port = port();
    let hello = hello();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    let old = baton.worker_pids(1);
    let worker = script(baton.dir.path(), "boot.py", PATH_ONLY_NOTIFY);
    let worker = worker.display().to_string();
    let load = Load::start(baton.addr(), "/", 4);
    std::thread::sleep(Duration::from_millis(300));

    // READY=1 at once, dead 1 s later: without a settle this release
    // would serve (and then be gone); with 3 s it never counts as ready.
    let broken = "[readiness]\nsettle = \"3s\"\n[environment]\nLIVE = \"1\"\n";
    baton.write_config(&config_text(port, &[&worker], 2, broken));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", baton.log());
    eprintln!("{stderr}");
    assert!(stderr.contains("exited with status 4"), "{stderr}");
    assert!(stderr.contains("while settling"), "{stderr}");
    assert!(
        stderr.contains("the error: RuntimeError: workers failed to boot"),
        "{stderr}"
    );
    assert!(stderr.contains("its whole output: "), "{stderr}");
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    eprintln!("died while settling: {stats}");
    assert_eq!(stats.failed, 0, "{stats} {:?}", stats.first_errors);
    assert_eq!(baton.worker_pids(1), old);
    old_generation_serves(&baton);

    // The same worker living past the settle is ready: the path-only
    // client reached baton.
    let fine = "[readiness]\nsettle = \"1s\"\n";
    baton.write_config(&config_text(port, &[&worker], 2, fine));
    let started = std::time::Instant::now();
    let out = baton.reload();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() >= Duration::from_secs(1), "ready before the settle");
    assert!(String::from_utf8_lossy(&out.stdout).contains("settling for 1s"));
}

/// Workers that print `ready on fd 3` after a while; `SILENT` names a
/// worker that never does, and `CHATTY` makes every worker print the line
/// over and over (an old generation that keeps saying it).
const LOGGER: &str = r#"#!/bin/sh
echo "booting worker $BATON_WORKER of generation $BATON_GENERATION"
sleep 0.3
if [ "$BATON_WORKER" != "$SILENT" ]; then
  echo "ready on fd 3"
fi
while true; do
  if [ -n "$CHATTY" ]; then echo "ready on fd 3" >&2; fi
  sleep 0.1
done
"#;

#[test]
fn log_mode_counts_only_the_workers_own_lines() {
    let port = port();
    let dir = tempfile::tempdir().unwrap();
    let logger = script(dir.path(), "logger.sh", LOGGER).display().to_string();
    let mode = "[readiness]\nmode = \"log\"\npattern = \"^ready on fd [0-9]+$\"\ntimeout = \"3s\"\n";
    let chatty = format!("{mode}[environment]\nCHATTY = \"1\"\nSILENT = \"none\"\n");
    let baton = Baton::start(port, &config_text(port, &[&logger], 2, &chatty));

    // Generation 2's worker 1 says nothing; its sibling and both workers
    // of generation 1 say the line all the time. None of that is its own.
    let silent = format!("{mode}[environment]\nSILENT = \"1\"\n");
    baton.write_config(&config_text(port, &[&logger], 2, &silent));
    let started = std::time::Instant::now();
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(3), "timed out early");
    assert!(
        stderr.contains("worker 1 of generation 2") && stderr.contains("readiness timeout"),
        "{stderr}"
    );
    old_generation_serves(&baton);

    // Every worker says it: ready, also with a settle.
    let all = format!("{mode}settle = \"500ms\"\n[environment]\nSILENT = \"none\"\n");
    baton.write_config(&config_text(port, &[&logger], 2, &all));
    let out = baton.reload();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(baton.status()["supervisor"]["serving"].as_u64(), Some(3));
    // The progress says what the worker did, which was no READY=1.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = "worker 0 of generation 3 printed a line matching [readiness] pattern \"^ready on fd [0-9]+$\"; \
                settling for 500ms";
    assert!(stdout.contains(said), "{stdout}");
    assert!(!stdout.contains("READY"), "{stdout}");
}

#[test]
fn a_worker_binding_the_port_baton_holds_gets_the_hint() {
    let port = port();
    let hello = hello();
    let baton = Baton::start(port, &config_text(port, &[&hello], 1, ""));
    // What Node prints for `app.listen(PORT)` while baton holds PORT,
    // after a long stack trace.
    let body = format!(
        "#!/bin/sh\n\
         echo 'node:events:497' >&2\n\
         echo '      throw er; // Unhandled error event' >&2\n\
         echo 'Error: listen EADDRINUSE: address already in use :::{port}' >&2\n\
         for i in $(seq 1 30); do echo \"    at Server.listen (node:net:$i:7)\" >&2; done\n\
         exit 1\n"
    );
    let app = script(baton.dir.path(), "app.sh", &body).display().to_string();
    baton.write_config(&config_text(port, &[&app], 1, ""));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the error: Error: listen EADDRINUSE: address already in use :::{port}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "hint: the app binds port {port} itself, and baton already holds it"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("inherit_listen = true"), "{stderr}");

    // Express 5: the error goes to the listen callback, the app exits 0.
    let app = script(baton.dir.path(), "exits0.sh", "#!/bin/sh\necho listening\nexit 0\n");
    baton.write_config(&config_text(port, &[&app.display().to_string()], 1, ""));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited with status 0"), "{stderr}");
    assert!(
        stderr.contains("hint: an app that exits 0 as it starts has usually failed to listen"),
        "{stderr}"
    );
    old_generation_serves(&baton);
}

/// puma's output for a SyntaxError in config.ru: the error, then 30 stack
/// frames. The last ten lines are all frames; the report still shows the
/// error.
#[test]
fn the_error_before_a_long_stack_trace_is_in_the_failure_message() {
    let port = port();
    let hello = hello();
    let baton = Baton::start(port, &config_text(port, &[&hello], 1, ""));
    let body = "#!/bin/sh\n\
         echo 'Puma starting in single mode...'\n\
         echo '* Puma version: 6.4.2 (ruby 3.1.2-p20) (\"The Eagle of Durango\")'\n\
         echo '/srv/app/config.ru:3: syntax error, unexpected end-of-input (SyntaxError)' >&2\n\
         for i in $(seq 1 30); do echo \"\tfrom /usr/lib/ruby/vendor_ruby/rack/builder.rb:$i:in \\`eval'\" >&2; done\n\
         exit 1\n";
    let app = script(baton.dir.path(), "puma.sh", body).display().to_string();
    baton.write_config(&config_text(port, &[&app], 1, ""));
    let out = baton.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the error: /srv/app/config.ru:3: syntax error, unexpected end-of-input (SyntaxError)"),
        "{stderr}"
    );
    let shown: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.contains("last output of the failing worker"))
        .skip(1)
        .collect();
    assert_eq!(shown.len(), 10, "{stderr}");
    assert!(shown.iter().all(|l| l.contains("from /usr/lib/ruby")), "{stderr}");
    // Standalone, the whole output is on baton's stderr.
    assert!(
        stderr.contains("its whole output: baton's stderr, the lines prefixed app[2.0 …]"),
        "{stderr}"
    );
    old_generation_serves(&baton);
}
