//! `baton import-pm2` on real ecosystem files, evaluated by the real node
//! (README, "Migrating from PM2"). Needs node in PATH, as the command itself
//! does.
//!
//! Each case copies `tests/pm2/FIXTURE/` into a temp dir, runs the `baton`
//! binary there with `--config-dir` and `--unit-dir` inside it, and compares
//! the exit code, stdout, stderr and every written file byte for byte with
//! `tests/pm2/CASE.expected/` (`stdout`, `stderr`, and the written tree under
//! `files/`). In those files the temp dir is written `$TMP` and the baton
//! binary `/usr/bin/baton`, so they hold on any machine. Every written config
//! must then pass `baton check --config FILE`.
//!
//! After a deliberate change to the output, re-bless and review the diff:
//!
//! ```sh
//! BATON_BLESS=1 cargo test --test it import_pm2::
//! git diff tests/pm2/
//! ```
//!
//! The `broken` case holds node's own syntax error message, which can change
//! with the node version: re-bless for that too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pm2")
}

fn baton() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir`, as paths relative to it, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A temp dir holding one fixture, where `baton import-pm2` runs.
struct Sandbox {
    _dir: tempfile::TempDir,
    /// The temp dir with symlinks resolved, as baton sees it.
    root: PathBuf,
    /// The fixture's copy; the working directory of every run.
    app: PathBuf,
}

impl Sandbox {
    fn new(fixture: &str) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let app = root.join(fixture);
        copy_dir(&fixtures().join(fixture), &app);
        Sandbox { _dir: dir, root, app }
    }

    /// Where the configs and units go.
    fn out(&self) -> PathBuf {
        self.root.join("etc")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(baton());
        cmd.arg("import-pm2")
            .args(args)
            .arg("--config-dir")
            .arg(self.out().join("baton"))
            .arg("--unit-dir")
            .arg(self.out().join("systemd/system"))
            // The golden units are for Debian 12's systemd, whatever runs here.
            .args(["--systemd-version", "252"])
            .current_dir(&self.app)
            .env_remove("NODE_OPTIONS");
        cmd
    }

    fn import(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn normalise(&self, text: &str) -> String {
        let exe = baton().canonicalize().unwrap();
        text.replace(&exe.display().to_string(), "/usr/bin/baton")
            .replace(&self.root.display().to_string(), "$TMP")
    }

    /// Compares the run and everything written with `tests/pm2/CASE.expected/`,
    /// or rewrites that with BATON_BLESS set.
    fn expect(&self, case: &str, output: &Output, code: i32) {
        let expected = fixtures().join(format!("{case}.expected"));
        let stdout = self.normalise(&String::from_utf8_lossy(&output.stdout));
        let stderr = self.normalise(&String::from_utf8_lossy(&output.stderr));
        let written = tree(&self.out());
        if std::env::var_os("BATON_BLESS").is_some() {
            let _ = std::fs::remove_dir_all(&expected);
            std::fs::create_dir_all(&expected).unwrap();
            std::fs::write(expected.join("stdout"), &stdout).unwrap();
            std::fs::write(expected.join("stderr"), &stderr).unwrap();
            for rel in &written {
                let text = std::fs::read_to_string(self.out().join(rel)).unwrap();
                let target = expected.join("files").join(rel);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(target, self.normalise(&text)).unwrap();
            }
        }
        let stale = "run BATON_BLESS=1 cargo test --test it import_pm2:: if the change is intended";
        assert_eq!(
            output.status.code(),
            Some(code),
            "{case}: exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let read = |name: &str| std::fs::read_to_string(expected.join(name)).unwrap_or_default();
        assert_eq!(stdout, read("stdout"), "{case}: stdout differs; {stale}");
        assert_eq!(stderr, read("stderr"), "{case}: stderr differs; {stale}");
        assert_eq!(
            written,
            tree(&expected.join("files")),
            "{case}: a different set of files was written; {stale}"
        );
        for rel in &written {
            let got = self.normalise(&std::fs::read_to_string(self.out().join(rel)).unwrap());
            let want = std::fs::read_to_string(expected.join("files").join(rel)).unwrap();
            assert_eq!(got, want, "{case}: {} differs; {stale}", rel.display());
        }
    }

    /// Every written config passes baton's own validation.
    fn check_configs(&self) {
        let configs: Vec<PathBuf> = tree(&self.out().join("baton"))
            .into_iter()
            .map(|rel| self.out().join("baton").join(rel))
            .collect();
        assert!(!configs.is_empty(), "no config was written");
        let mut failures = Vec::new();
        for config in configs {
            let out = Command::new(baton())
                .args(["check", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "baton check --config {} exited {:?}:\n{}",
                    config.display(),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn a_single_app() {
    let s = Sandbox::new("single");
    let out = s.import(&["ecosystem.config.js"]);
    s.expect("single", &out, 0);
    s.check_configs();
}

#[test]
fn a_cluster_with_wait_ready_and_graceful_stop() {
    let s = Sandbox::new("cluster");
    let out = s.import(&["ecosystem.config.js"]);
    s.expect("cluster", &out, 0);
    // node-ipc, [stop] message and [limits] memory: until they are
    // implemented, `baton check` refuses them as not supported yet.
    s.check_configs();
}

#[test]
fn unsupported_keys_are_named_with_the_reason() {
    let s = Sandbox::new("unsupported");
    let out = s.import(&["ecosystem.config.js"]);
    s.expect("unsupported", &out, 0);
    s.check_configs();
}

#[test]
fn the_file_is_evaluated_by_node() {
    let s = Sandbox::new("computed");
    let file = s.app.join("ecosystem.config.js");
    let out = s.import(&[file.to_str().unwrap()]);
    s.expect("computed", &out, 0);
    s.check_configs();
}

#[test]
fn a_json_file_with_a_bare_array_and_env_production() {
    let s = Sandbox::new("json");
    let out = s.import(&["ecosystem.json", "--env", "production"]);
    s.expect("json", &out, 0);
    s.check_configs();
}

#[test]
fn a_syntax_error_is_nodes_message_without_its_internals() {
    let s = Sandbox::new("broken");
    let out = s.import(&["ecosystem.config.js"]);
    s.expect("broken", &out, 1);
}

#[test]
fn an_app_without_a_port_is_refused_and_the_others_are_imported() {
    let s = Sandbox::new("noport");
    let out = s.import(&["ecosystem.config.js"]);
    s.expect("noport", &out, 1);
    s.check_configs();
}

#[test]
fn listen_gives_the_address_of_a_single_app() {
    let s = Sandbox::new("listen");
    let out = s.import(&[
        "ecosystem.config.js",
        "--listen",
        "127.0.0.1:7100",
        "--listen",
        "[::1]:7100",
        "--user",
        "www-data",
    ]);
    s.expect("listen", &out, 0);
    s.check_configs();
}

#[test]
fn listen_with_several_apps_is_a_usage_error() {
    let s = Sandbox::new("noport");
    let out = s.import(&["ecosystem.config.js", "--listen", "127.0.0.1:7100"]);
    s.expect("listen-several-apps", &out, 2);
}

#[test]
fn dry_run_prints_the_files_and_writes_nothing() {
    let s = Sandbox::new("single");
    let out = s.import(&["ecosystem.config.js", "--dry-run"]);
    s.expect("single-dry-run", &out, 0);
    assert!(!s.out().exists(), "--dry-run wrote something");
}

#[test]
fn missing_node_is_a_usage_error() {
    let s = Sandbox::new("single");
    let empty = s.root.join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let out = s
        .command(&["ecosystem.config.js"])
        .env("PATH", &empty)
        .output()
        .unwrap();
    s.expect("node-missing", &out, 2);
}

#[test]
fn existing_files_that_differ_need_force() {
    let s = Sandbox::new("single");
    assert_eq!(s.import(&["ecosystem.config.js"]).status.code(), Some(0));
    // The same bytes again are not an overwrite.
    assert_eq!(s.import(&["ecosystem.config.js"]).status.code(), Some(0));

    let config = s.out().join("baton/hello.toml");
    let written = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, "# edited by hand\n").unwrap();
    let out = s.import(&["ecosystem.config.js"]);
    let stderr = s.normalise(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "hello: error: $TMP/etc/baton/hello.toml already exists (and differs); pass --force to overwrite it\n"
        ),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited by hand\n");

    let out = s.import(&["ecosystem.config.js", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
}

#[test]
fn a_missing_file_is_a_usage_error() {
    let s = Sandbox::new("single");
    let out = s.import(&["nope.config.js"]);
    s.expect("file-missing", &out, 2);
}

/// `--dry-run` says exactly what the real run will say: the same lines, in
/// the same order, but "would write" for "wrote", the files shown, and the
/// reminder to run again. Checked on a mixed file (a Node app, and one
/// that is not, which alone gets the "make it listen" step).
#[test]
fn the_dry_run_says_what_the_real_run_says() {
    for fixture in ["single", "cluster", "json"] {
        let s = Sandbox::new(fixture);
        let file = std::fs::read_dir(&s.app)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("ecosystem"))
            .unwrap();
        let mut args = vec![file.as_str()];
        if fixture == "json" {
            args.extend(["--env", "production"]);
        }
        let dry = s.import(&[args.as_slice(), &["--dry-run"]].concat());
        assert!(dry.status.success(), "{dry:?}");
        let real = s.import(&args);
        assert!(real.status.success(), "{real:?}");
        let dry = String::from_utf8_lossy(&dry.stdout).into_owned();
        let mut said = Vec::new();
        let mut in_file = false;
        for line in dry.lines() {
            if line.starts_with("==> ") {
                in_file = true;
                continue;
            }
            // A file shown ends at the first line of the report after it.
            if in_file && !(line.starts_with("next: ") || line.contains(": wrote ") || line.contains(": would write "))
            {
                continue;
            }
            in_file = false;
            if line.is_empty() || line == "next: run again without --dry-run to write these files" {
                continue;
            }
            said.push(line.replacen(": would write ", ": wrote ", 1));
        }
        let real = String::from_utf8_lossy(&real.stdout).into_owned();
        let real: Vec<&str> = real.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(said, real, "{fixture}: the dry run said:\n{dry}");
    }
}
