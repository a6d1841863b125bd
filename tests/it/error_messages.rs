//! Error messages give their cause, exactly once: an unreadable config says
//! why (missing, permissions, a directory, invalid UTF-8 with its
//! position), and a missing working directory is not repeated three times,
//! whether `check`, `run` or a reload reports it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::{baton_bin, example_bin};

fn baton(args: &[&str], config: &Path) -> Output {
    Command::new(baton_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_and_run_say_why_a_config_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    for cmd in [&["check"][..], &["run"][..]] {
        let out = baton(cmd, &missing);
        assert_eq!(out.status.code(), Some(78), "{cmd:?}: {}", stderr(&out));
        let prefix = if cmd == ["run"] { "baton: " } else { "" };
        assert_eq!(
            stderr(&out),
            format!(
                "{prefix}cannot read {}: No such file or directory (os error 2)\n",
                missing.display()
            )
        );
    }

    let out = baton(&["check"], dir.path());
    assert_eq!(
        stderr(&out),
        format!("cannot read {}: Is a directory (os error 21)\n", dir.path().display())
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, b"command = [\"sleep\", \"1\"]\n# caf\xc3\xa9 \xff\n").unwrap();
    let out = baton(&["check"], &bad);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        stderr(&out),
        format!(
            "{}:2:8: invalid UTF-8 (byte 0xff); a config file must be UTF-8 text\n",
            bad.display()
        )
    );
}

#[test]
fn check_says_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.path().join("secret.toml");
    std::fs::write(&secret, "command = [\"sleep\", \"1\"]\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = Command::new(baton_bin());
    cmd.args(["check", "--config"]).arg(&secret).stdin(Stdio::null());
    // root reads anything: check as nobody then (std drops the groups too).
    if nix::unistd::geteuid().is_root() {
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("cannot read {}: Permission denied (os error 13)\n", secret.display())
    );
}

#[test]
fn a_missing_working_directory_is_reported_once_by_check_run_and_reload() {
    let hello = example_bin("hello").display().to_string();
    let port = port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    let text = config_text(port, &[&hello], 1, "");
    let broken = text.replace("workers = 1\n", "workers = 1\ndirectory = \"/nonexistent/x\"\n");
    std::fs::write(&config, &broken).unwrap();
    let cause = "working directory /nonexistent/x: No such file or directory (os error 2)";

    let out = baton(&["check"], &config);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(stderr(&out), format!("{}: {cause}\n", config.display()));

    let mut run = Baton::spawn(port, &broken);
    assert_eq!(run.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(1));
    let log = run.log();
    assert!(log.contains(&format!("baton: {cause}\n")), "{log}");
    assert_eq!(log.matches("No such file").count(), 1, "{log}");

    let baton = Baton::start(port, &text);
    baton.write_config(&broken);
    let out = baton.reload();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(cause), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}
