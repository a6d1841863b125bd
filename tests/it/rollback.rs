//! `baton rollback` without a canary and `baton history`: a deploy layout
//! of `releases/v1`, `releases/v2` and a `current` symlink, rolled back and
//! forth under load, refused when a release is gone, and remembered across
//! a restart of baton.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::load::Load;
use crate::common::{example_bin, text};

struct Layout {
    _root: tempfile::TempDir,
    current: PathBuf,
    releases: PathBuf,
}

impl Layout {
    fn new() -> Layout {
        let root = tempfile::tempdir().unwrap();
        let releases = root.path().join("releases");
        for v in ["v1", "v2"] {
            std::fs::create_dir_all(releases.join(v)).unwrap();
        }
        let current = root.path().join("current");
        std::os::unix::fs::symlink(releases.join("v1"), &current).unwrap();
        Layout {
            current,
            releases: releases.canonicalize().unwrap(),
            _root: root,
        }
    }

    /// What a deploy script does: `current` → `releases/v`, atomically.
    fn deploy(&self, v: &str) {
        let tmp = self.current.with_file_name("current.tmp");
        std::os::unix::fs::symlink(self.releases.join(v), &tmp).unwrap();
        std::fs::rename(&tmp, &self.current).unwrap();
    }

    fn points_to(&self) -> PathBuf {
        self.current.canonicalize().unwrap()
    }

    fn config(&self, port: u16, v: &str) -> String {
        let hello = example_bin("hello").display().to_string();
        format!(
            "directory = {:?}\n{}",
            self.current.display().to_string(),
            config_text(
                port,
                &[&hello],
                3,
                &format!("[stop]\ntimeout = \"10s\"\n\n[environment]\nAPP_RELEASE = \"{v}\"\n"),
            )
        )
    }
}

fn directory_of(baton: &Baton, generation: u64) -> Option<PathBuf> {
    let s = baton.status();
    s["supervisor"]["generations"]
        .as_array()?
        .iter()
        .find(|g| g["id"].as_u64() == Some(generation))?["directory"]
        .as_str()
        .map(PathBuf::from)
}

fn rollback_to(baton: &Baton, layout: &Layout, generation: u64, v: &str) {
    let out = baton.client(&["rollback"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}\n{}", baton.log());
    assert!(
        shown.contains(&format!("generation {generation} is serving")),
        "{shown}"
    );
    assert!(shown.contains("re-pointed"), "{shown}");
    assert_eq!(layout.points_to(), layout.releases.join(v), "{shown}");
    assert_eq!(directory_of(baton, generation), Some(layout.releases.join(v)));
}

fn history(baton: &Baton, state: Option<&Path>) -> serde_json::Value {
    let mut args = vec!["history", "--json"];
    let out = match state {
        None => baton.client(&args),
        Some(dir) => {
            args.push("--config");
            std::process::Command::new(crate::common::baton_bin())
                .args(&args)
                .arg(&baton.config)
                .env("BATON_STATE_DIR", dir)
                .output()
                .unwrap()
        }
    };
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn rollback_goes_back_and_forth_repoints_current_and_survives_a_restart() {
    let layout = Layout::new();
    let port = port();
    let mut baton = Baton::start(port, &layout.config(port, "v1"));
    let load = Load::start(baton.addr(), "/", 8);
    std::thread::sleep(Duration::from_millis(300));

    // Nothing to go back to yet.
    let out = baton.client(&["rollback"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no earlier release to roll back to"),
        "{}",
        text(&out)
    );

    layout.deploy("v2");
    baton.write_config(&layout.config(port, "v2"));
    assert!(baton.reload().status.success(), "{}", baton.log());
    // `status` says what changed since the release before.
    let out = baton.client(&["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("changed since"), "{shown}");
    assert!(shown.contains("  environment: APP_RELEASE changed\n"), "{shown}");
    assert!(
        shown.contains(&format!(
            "  directory: {} → {}\n",
            layout.releases.join("v1").display(),
            layout.releases.join("v2").display()
        )),
        "{shown}"
    );
    assert!(!shown.contains("command:") && !shown.contains("executable:"), "{shown}");
    std::thread::sleep(Duration::from_millis(300));
    rollback_to(&baton, &layout, 3, "v1");
    std::thread::sleep(Duration::from_millis(300));
    // A second rollback returns to where the first started, like `cd -`.
    rollback_to(&baton, &layout, 4, "v2");
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    eprintln!("rollback to v1 and back to v2: {stats}");
    assert_eq!(stats.failed, 0, "{stats}\n{:?}", stats.first_errors);
    assert!(stats.ok > 100, "{stats}");
    for g in ["1", "2", "3", "4"] {
        assert!(stats.generations_seen.contains(g), "{stats}");
    }

    let h = history(&baton, None);
    let entries = h["entries"].as_array().unwrap();
    let gens: Vec<u64> = entries.iter().map(|e| e["generation"].as_u64().unwrap()).collect();
    assert_eq!(gens, vec![4, 3, 2, 1], "{h:#}");
    let via: Vec<&str> = entries.iter().map(|e| e["via"].as_str().unwrap()).collect();
    assert_eq!(via, vec!["rollback", "rollback", "reload", "start"], "{h:#}");
    // The same release has the same id: 1 and 3 are v1, 2 and 4 are v2.
    assert_eq!(entries[1]["release"]["id"], entries[3]["release"]["id"], "{h:#}");
    assert_eq!(entries[0]["release"]["id"], entries[2]["release"]["id"], "{h:#}");
    assert_ne!(entries[0]["release"]["id"], entries[1]["release"]["id"], "{h:#}");
    assert!(
        entries[0]["stopped"].is_null() && entries[1]["stopped"].is_string(),
        "{h:#}"
    );
    assert_eq!(
        entries[3]["release"]["directory"].as_str(),
        Some(layout.releases.join("v1").to_str().unwrap())
    );
    assert!(entries[3]["release"]["executable"]["inode"].as_u64().is_some(), "{h:#}");

    // A release whose directory is gone is refused, and nothing changes.
    std::fs::remove_dir(layout.releases.join("v1")).unwrap();
    let out = baton.client(&["rollback"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("is gone") && shown.contains("nothing changed"),
        "{shown}"
    );
    assert_eq!(layout.points_to(), layout.releases.join("v2"));
    assert_eq!(baton.status()["supervisor"]["serving"].as_u64(), Some(4));
    let id = entries[1]["release"]["id"].as_str().unwrap().to_owned();
    let out = baton.client(&["rollback", "--to", "nosuchid"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no release \"nosuchid\""), "{}", text(&out));
    std::fs::create_dir(layout.releases.join("v1")).unwrap();

    // baton stops; `baton history` still reads the file.
    let state = baton.dir.path().join("state");
    baton.signal(nix::sys::signal::SIGTERM);
    assert_eq!(baton.wait_exit(Duration::from_secs(20)).unwrap().code(), Some(0));
    let out = std::process::Command::new(crate::common::baton_bin())
        .args(["history", "--config"])
        .arg(&baton.config)
        .env("BATON_STATE_DIR", &state)
        .output()
        .unwrap();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("generation 4 release") && shown.contains("(rollback): ok"),
        "{shown}"
    );
    assert_eq!(history(&baton, Some(&state))["entries"].as_array().unwrap().len(), 4);

    // A new baton with the same state directory rolls back right away.
    let port = crate::common::baton::port();
    let state_env = state.display().to_string();
    let again = Baton::spawn_with_env(port, &layout.config(port, "v2"), &[("BATON_STATE_DIR", &state_env)]);
    assert!(again.wait_serving(1, Duration::from_secs(30)), "{}", again.log());
    let out = again.client(&["rollback", "--to", &id]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}\n{}", again.log());
    assert!(shown.contains("generation 2 is serving"), "{shown}");
    assert_eq!(layout.points_to(), layout.releases.join("v1"));
    assert_eq!(directory_of(&again, 2), Some(layout.releases.join("v1")));
}
