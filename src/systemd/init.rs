//! `baton init`: writes NAME.toml, NAME.socket and NAME.service so that
//! `systemctl enable --now NAME.socket` is the only step left.
//!
//! The units are rendered from the template units shipped in `units/`, so
//! the instance units and `baton@.service` never drift apart, and both carry
//! the same sandbox. The app runs as a system user of its own, named like
//! the app: `init` writes a sysusers.d entry for it (and `commands::init`
//! runs `systemd-sysusers`). A static user rather than `DynamicUser=`: files
//! the app writes (uploads, caches under /srv or /var/lib) keep one owner
//! across restarts, and an operator can `chown` a directory to it.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::render::{File, Place};
use crate::config::{self, ListenAddress, Overrides, Workers};
use crate::systemd::version::SystemdVersion;

const SERVICE_TEMPLATE: &str = include_str!("../../units/baton@.service");

/// What `baton init` was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub listen: Vec<String>,
    pub workers: Option<Workers>,
    /// `--user`; none means a system user named like the app.
    pub user: Option<String>,
    pub directory: Option<PathBuf>,
    pub unit_dir: PathBuf,
    pub config_dir: PathBuf,
    /// Where the dedicated user's sysusers.d entry goes.
    pub sysusers_dir: PathBuf,
    pub command: Vec<String>,
    pub force: bool,
    /// The baton binary the units run.
    pub baton: PathBuf,
    /// The systemd the units are for.
    pub systemd: SystemdVersion,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path} already exists and says something else; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("the command is missing: baton init NAME --listen ADDR -- CMD ARGS...")]
    NoCommand,
    #[error("at least one --listen ADDR is needed (the socket unit listens there)")]
    NoListen,
    #[error(
        "{name:?} cannot be a user name (a lowercase letter or _, then up to 30 lowercase letters, \
         digits, _ or -); pass --user USER to run the app as an existing user"
    )]
    UserName { name: String },
    #[error("the generated config is invalid")]
    Invalid(#[source] config::ConfigError),
    #[error("cannot write the config as TOML")]
    Render(#[source] toml_edit::ser::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The config directory `baton check NAME` and `baton run NAME` read.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/baton";
/// Where `init` puts the dedicated user's entry by default.
pub const DEFAULT_SYSUSERS_DIR: &str = "/etc/sysusers.d";

/// Whom the app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// A system user of its own, named like the app, made by `init`.
    Dedicated(String),
    /// An existing user, from `--user`.
    Existing(String),
    /// `--user root`: allowed, with a warning.
    Root,
}

impl Account {
    pub fn name(&self) -> &str {
        match self {
            Account::Dedicated(name) | Account::Existing(name) => name,
            Account::Root => "root",
        }
    }
}

/// What `--user` (or its absence) means for `req`.
pub fn account(req: &Request) -> Result<Account, InitError> {
    match req.user.as_deref() {
        Some("root" | "0") => Ok(Account::Root),
        Some(user) => Ok(Account::Existing(user.to_owned())),
        None if is_user_name(&req.name) => Ok(Account::Dedicated(req.name.clone())),
        None => Err(InitError::UserName { name: req.name.clone() }),
    }
}

/// The names `systemd-sysusers` accepts everywhere (its portable subset,
/// which `useradd` on every distribution accepts too).
fn is_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.len() <= 31
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The sysusers.d entry of the dedicated user `name`.
pub fn sysusers_entry(name: &str) -> String {
    format!(
        "# Written by `baton init`: the system user that {name}.service runs as.\n\
         # `systemd-sysusers` creates it (baton init runs it); see sysusers.d(5).\n\
         u {name} - \"{name} (supervised by baton)\" - -\n"
    )
}

/// The files `init` writes, (path, contents): the config, the two units and,
/// for a dedicated user, its sysusers.d entry.
pub fn render(req: &Request) -> Result<Vec<(PathBuf, String)>, InitError> {
    if req.command.is_empty() {
        return Err(InitError::NoCommand);
    }
    if req.listen.is_empty() {
        return Err(InitError::NoListen);
    }
    let account = account(req)?;
    let config_path = req.config_dir.join(format!("{}.toml", req.name));
    let config_text = config_toml(req, kept_metrics(&config_path))?;
    // The generated file must pass the same validation `baton check` does.
    let config = config::parse(&config_text, &config_path, &Overrides::default()).map_err(InitError::Invalid)?;
    let socket = socket_unit(&req.name, &config.listen.iter().map(|l| &l.address).collect::<Vec<_>>());
    let resolved = Request {
        user: Some(account.name().to_owned()),
        ..req.clone()
    };
    let service = service_unit(&resolved, &config);
    let mut files = vec![
        (config_path, config_text),
        (req.unit_dir.join(format!("{}.socket", req.name)), socket),
        (req.unit_dir.join(format!("{}.service", req.name)), service),
    ];
    if let Account::Dedicated(name) = &account {
        files.push((
            req.sysusers_dir.join(format!("baton-{name}.conf")),
            sysusers_entry(name),
        ));
    }
    Ok(files)
}

/// What [`write`] did with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was missing, or said something else (and `force` was given).
    Wrote,
    /// It already said exactly this: left alone, not even its mtime.
    Unchanged,
}

/// Writes the files, refusing to replace any that says something else
/// unless `force`. A file that already says exactly what would be written
/// is left alone, so running `init` again with the same arguments changes
/// nothing and succeeds (what configuration management such as the Ansible
/// role in contrib/ansible needs to report "changed" only on a change).
pub fn write(req: &Request) -> Result<Vec<(PathBuf, Outcome)>, InitError> {
    // Each file's present text is read once: None when it is missing or
    // unreadable (then it is written, as before).
    let files: Vec<(PathBuf, String, Option<Vec<u8>>)> = render(req)?
        .into_iter()
        .map(|(path, text)| {
            let old = std::fs::read(&path).ok();
            (path, text, old)
        })
        .collect();
    let same = |text: &str, old: &Option<Vec<u8>>| old.as_deref() == Some(text.as_bytes());
    if !req.force {
        if let Some((path, ..)) = files.iter().find(|(p, t, old)| p.exists() && !same(t, old)) {
            return Err(InitError::Exists { path: path.clone() });
        }
    }
    let mut done = Vec::with_capacity(files.len());
    for (path, text, old) in files {
        let outcome = if same(&text, &old) {
            Outcome::Unchanged
        } else {
            write_file(&path, &text)?;
            Outcome::Wrote
        };
        done.push((path, outcome));
    }
    Ok(done)
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), InitError> {
    let err = |source| InitError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Write then rename, so a unit is never seen half-written.
    let tmp = path.with_extension("baton-init.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The `[metrics]` section of a config already at `path`, which `init
/// --force` is about to replace: the command line has no way to say it, so
/// it is kept (and the unit lets baton write the textfile). Nothing when
/// there is no such file, it is not valid, or it has no `[metrics]`.
fn kept_metrics(path: &Path) -> Option<config::Metrics> {
    let text = std::fs::read_to_string(path).ok()?;
    let old = config::parse(&text, path, &Overrides::default()).ok()?;
    (old.metrics != config::Metrics::default()).then_some(old.metrics)
}

fn config_toml(req: &Request, metrics: Option<config::Metrics>) -> Result<String, InitError> {
    let mut file = File::new(&req.name, "`baton init`", req.command.clone(), &req.listen);
    file.directory = req.directory.as_ref().map(|d| d.display().to_string());
    file.workers = req.workers.unwrap_or(Workers::Count(1));
    file.metrics = metrics;
    file.note(Some("environment"), None, Place::Below, "NODE_ENV = \"production\"");
    file.note(
        Some("readiness"),
        Some("mode"),
        Place::Beside,
        "the app sends READY=1 to $NOTIFY_SOCKET; or \"delay\"",
    );
    file.render().map_err(InitError::Render)
}

/// systemd's ListenStream= syntax for an address.
fn listen_stream(addr: &ListenAddress) -> String {
    match addr {
        ListenAddress::Tcp(a) => a.to_string(),
        ListenAddress::Unix(p) => p.display().to_string(),
        ListenAddress::Abstract(n) => format!("@{n}"),
    }
}

pub(crate) fn socket_unit(name: &str, addrs: &[&ListenAddress]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `baton init`. systemd owns these sockets; baton hands the same"
    );
    let _ = writeln!(
        t,
        "# fds to every generation of {name}, so the port never closes on reload."
    );
    let _ = writeln!(
        t,
        "[Unit]\nDescription=Sockets of {name} (baton)\nDocumentation=man:baton(1)\n\n[Socket]"
    );
    for a in addrs {
        let _ = writeln!(t, "ListenStream={}", listen_stream(a));
    }
    t.push_str("# Connections that arrive while the app (re)starts wait in this queue.\nBacklog=4096\n");
    t.push_str("\n[Install]\nWantedBy=sockets.target\n");
    t
}

/// One argument of an `Exec*=` line: `%` and `$` escaped, quoted when it
/// has anything but plain path characters (systemd.service(5), "Command
/// lines").
fn exec_arg(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if escaped
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%$=,".contains(c))
    {
        escaped
    } else {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The template's note on `ProtectControlGroups=`, true up to systemd 256.
const CGROUPS_LEFT_OUT: &str = "\
# ProtectControlGroups= is left out on purpose: on systemd 252 it makes all
# of /sys/fs/cgroup read-only, including the subtree Delegate=yes hands to
# baton, which could then not give each worker a cgroup of its own.
";
/// What replaces it from systemd 257 on (measured: README "systemd versions").
const CGROUPS_PRIVATE: &str = "\
# A cgroup namespace of the unit's own: /sys/fs/cgroup shows only this
# unit's cgroup, and the subtree Delegate=yes hands to baton stays writable
# for the workers' cgroups. Written for systemd 257 or later: older versions
# lack \"private\", and their ProtectControlGroups=yes would make that
# subtree read-only.
ProtectControlGroups=private
";

/// A path of a `ReadWritePaths=` line: `%` escaped, quoted when it has
/// spaces, quotes or backslashes (systemd.exec(5): a space-separated list of
/// paths, each of which may be quoted; no `$` expansion there). `prefix`
/// (`-`: a missing path is no error) goes inside the quotes, where systemd
/// looks for it.
fn path_arg(prefix: &str, path: &Path) -> String {
    let word = format!("{prefix}{}", path.display()).replace('%', "%%");
    if word.chars().any(|c| c.is_whitespace() || "\"'\\".contains(c)) {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        word
    }
}

/// The lines after `ProtectHome=` for `[metrics] textfile = DIR`: DIR stays
/// writable whatever ProtectSystem= and ProtectHome= say, and a DIR that
/// does not exist yet does not keep the unit from starting.
fn textfile_paths(name: &str, dir: &Path) -> String {
    format!(
        "# [metrics] textfile: baton keeps {name}.prom in this directory (node_exporter\n\
         # reads it). A missing directory is no error (\"-\"); baton logs that it cannot write.\n\
         ReadWritePaths={}\n",
        path_arg("-", dir)
    )
}

/// The service unit for `req` running `config` (its stop timeout, its
/// metrics textfile), from the packaged template (README "Under systemd"),
/// adapted to `req.systemd`.
pub(crate) fn service_unit(req: &Request, config: &config::Config) -> String {
    let stop_timeout = config.stop.timeout;
    let baton = exec_arg(&req.baton.display().to_string());
    // `baton check NAME` and `baton run NAME` read /etc/baton/NAME.toml; a
    // config written elsewhere must be named on their command lines.
    let config_arg = (req.config_dir != Path::new(DEFAULT_CONFIG_DIR)).then(|| {
        let path = req.config_dir.join(format!("{}.toml", req.name));
        let path = std::path::absolute(&path).unwrap_or(path);
        format!("--config {}", exec_arg(&path.display().to_string()))
    });
    let template = if req.systemd >= SystemdVersion::PRIVATE_CGROUPS {
        SERVICE_TEMPLATE.replace(CGROUPS_LEFT_OUT, CGROUPS_PRIVATE)
    } else {
        SERVICE_TEMPLATE.to_owned()
    };
    let mut t = format!("# Written by `baton init` from baton@.service, for {}.\n", req.systemd);
    for line in template.lines() {
        // The template's own header comments describe the template.
        if line.starts_with("# baton@.service") || line.starts_with("# Started by baton@") {
            continue;
        }
        let mut line = line.to_owned();
        if let Some(arg) = &config_arg {
            line = line
                .replace("baton check %i", &format!("baton check {arg}"))
                .replace("baton run %i", &format!("baton run {arg}"));
        }
        let line = line
            .replace("baton@%i.socket", &format!("{}.socket", req.name))
            .replace("/usr/bin/baton", &baton)
            .replace("%i", &req.name);
        let line = match line.strip_prefix("TimeoutStopSec=") {
            // baton needs its own stop timeout plus time to SIGKILL and reap.
            Some(_) => format!("TimeoutStopSec={}s", stop_timeout.as_secs() + 15),
            None => line,
        };
        t.push_str(&line);
        t.push('\n');
        if line.starts_with("ProtectHome=") {
            if let Some(dir) = &config.metrics.textfile {
                t.push_str(&textfile_paths(&req.name, dir));
            }
        }
        if line == "[Service]" {
            if let Some(user) = &req.user {
                let _ = writeln!(t, "User={user}");
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(dir: &Path) -> Request {
        Request {
            name: "myapp".into(),
            listen: vec!["127.0.0.1:8080".into(), "[::1]:8080".into(), "/run/myapp.sock".into()],
            workers: Some(Workers::Count(4)),
            user: Some("www-data".into()),
            directory: Some("/srv/myapp/current".into()),
            unit_dir: dir.join("units"),
            config_dir: dir.join("etc"),
            sysusers_dir: dir.join("sysusers.d"),
            command: vec!["node".into(), "server.js".into()],
            force: false,
            baton: "/usr/bin/baton".into(),
            systemd: SystemdVersion::BASELINE,
        }
    }

    fn line_of<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn renders_valid_config_and_units() {
        let dir = tempfile::tempdir().unwrap();
        let files = render(&request(dir.path())).unwrap();
        let (cfg_path, cfg) = &files[0];
        let parsed = config::parse(cfg, cfg_path, &Overrides::default()).unwrap();
        assert_eq!(parsed.command, vec!["node", "server.js"]);
        assert_eq!(parsed.workers, 4);
        assert_eq!(parsed.listen.len(), 3);

        let socket = &files[1].1;
        assert!(
            socket.contains("ListenStream=127.0.0.1:8080\nListenStream=[::1]:8080\nListenStream=/run/myapp.sock\n")
        );
        assert!(socket.contains("[Install]\nWantedBy=sockets.target"));

        let service = &files[2].1;
        for line in [
            "Type=notify",
            "ExecReload=/usr/bin/baton reload myapp",
            "KillMode=mixed",
            "Delegate=yes",
            "Restart=on-failure",
            "WatchdogSec=30s",
            "RuntimeDirectory=baton/myapp",
            "TimeoutStopSec=45s",
            "Requires=myapp.socket",
            "User=www-data",
            "Delegate=yes",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "PrivateTmp=yes",
            "ProtectSystem=full",
            "ProtectHome=read-only",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "SystemCallFilter=@system-service",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "UMask=0027",
            "ProtectProc=invisible",
        ] {
            assert!(service.lines().any(|l| l == line), "missing {line:?} in\n{service}");
        }
        assert!(!service.contains("[Install]"), "[Install] belongs on the socket only");
        assert!(!service.contains("%i"));
        for setting in ["ProtectControlGroups=", "MemoryDenyWriteExecute=", "RemoveIPC="] {
            assert!(
                !service.lines().any(|l| l.starts_with(setting)),
                "{setting} breaks Delegate=yes, Node or shared users:\n{service}"
            );
        }
        assert_eq!(files.len(), 3, "--user www-data: no sysusers entry");
    }

    /// Defect: with --config-dir D the unit read /etc/baton/NAME.toml, so
    /// its ExecStartPre exited 78.
    #[test]
    fn a_config_outside_etc_baton_is_named_on_the_command_lines() {
        let dir = tempfile::tempdir().unwrap();
        let files = render(&request(dir.path())).unwrap();
        let config = dir.path().join("etc/myapp.toml").display().to_string();
        let service = &files[2].1;
        assert_eq!(
            line_of(service, "ExecStartPre="),
            Some(format!("ExecStartPre=/usr/bin/baton check --config {config}").as_str())
        );
        assert_eq!(
            line_of(service, "ExecStart="),
            Some(format!("ExecStart=/usr/bin/baton run --config {config}").as_str())
        );
        assert_eq!(
            line_of(service, "ExecReload="),
            Some("ExecReload=/usr/bin/baton reload myapp")
        );

        let mut req = request(dir.path());
        req.config_dir = DEFAULT_CONFIG_DIR.into();
        let service = &render(&req).unwrap()[2].1;
        assert_eq!(
            line_of(service, "ExecStartPre="),
            Some("ExecStartPre=/usr/bin/baton check myapp")
        );

        req.config_dir = "/srv/my app/100%/$HOME".into();
        let service = &render(&req).unwrap()[2].1;
        assert_eq!(
            line_of(service, "ExecStart="),
            Some(r#"ExecStart=/usr/bin/baton run --config "/srv/my app/100%%/$$HOME/myapp.toml""#)
        );
    }

    #[test]
    fn by_default_the_app_runs_as_a_system_user_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path());
        req.user = None;
        let files = render(&req).unwrap();
        assert!(files[2].1.lines().any(|l| l == "User=myapp"), "{}", files[2].1);
        let (path, entry) = &files[3];
        assert_eq!(path, &dir.path().join("sysusers.d/baton-myapp.conf"));
        assert!(
            entry
                .lines()
                .any(|l| l == r#"u myapp - "myapp (supervised by baton)" - -"#),
            "{entry}"
        );
        assert_eq!(account(&req).unwrap(), Account::Dedicated("myapp".into()));

        req.user = Some("root".into());
        let files = render(&req).unwrap();
        assert_eq!(files.len(), 3);
        assert!(files[2].1.lines().any(|l| l == "User=root"));
        assert_eq!(account(&req).unwrap(), Account::Root);

        for bad in ["MyApp", "my.app", "1app", &"a".repeat(32)] {
            req.user = None;
            req.name = bad.to_owned();
            assert!(
                matches!(render(&req), Err(InitError::UserName { .. })),
                "{bad:?} accepted as a user name"
            );
            req.user = Some("www-data".into());
            render(&req).unwrap();
        }
    }

    /// units/example/ holds what `baton init` writes with the defaults, for
    /// people who read units before running tools. `BATON_BLESS=1 cargo
    /// test` refreshes it.
    /// `units/example/` is what `baton init` writes for systemd 252 (and
    /// the README shows); `units/example/systemd-257/` holds the service
    /// unit for 257, the only file that differs.
    #[test]
    fn the_example_units_are_what_init_writes() {
        for (systemd, dir, count) in [
            (SystemdVersion(252), "units/example", 4),
            (SystemdVersion(257), "units/example/systemd-257", 1),
        ] {
            let req = Request {
                name: "myapp".into(),
                listen: vec!["0.0.0.0:8080".into()],
                workers: Some(Workers::Count(4)),
                user: None,
                directory: Some("/srv/myapp/current".into()),
                unit_dir: "/etc/systemd/system".into(),
                config_dir: DEFAULT_CONFIG_DIR.into(),
                sysusers_dir: DEFAULT_SYSUSERS_DIR.into(),
                command: vec!["node".into(), "server.js".into()],
                force: true,
                baton: "/usr/bin/baton".into(),
                systemd,
            };
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let files = render(&req).unwrap();
            assert_eq!(files.len(), 4);
            let files: Vec<_> = files
                .into_iter()
                .filter(|(p, _)| count == 4 || p.extension().is_some_and(|e| e == "service"))
                .collect();
            assert_eq!(files.len(), count);
            for (path, text) in files {
                let path = root.join(path.file_name().unwrap());
                if std::env::var_os("BATON_BLESS").is_some() {
                    std::fs::create_dir_all(&root).unwrap();
                    std::fs::write(&path, &text).unwrap();
                }
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                assert_eq!(
                    committed,
                    text,
                    "{} is stale: run BATON_BLESS=1 cargo test",
                    path.display()
                );
            }
        }
    }

    /// Measured on systemd 257 (README "systemd versions"): with
    /// `ProtectControlGroups=private` each worker still gets a cgroup of its
    /// own; on 252 the setting would take that away, so it is left out.
    #[test]
    fn protect_control_groups_is_private_from_systemd_257_on() {
        assert!(
            SERVICE_TEMPLATE.contains(CGROUPS_LEFT_OUT),
            "the template's note changed"
        );
        let dir = tempfile::tempdir().unwrap();
        for (version, expected) in [
            (252, None),
            (256, None),
            (257, Some("ProtectControlGroups=private")),
            (258, Some("ProtectControlGroups=private")),
        ] {
            let req = Request {
                systemd: SystemdVersion(version),
                ..request(dir.path())
            };
            let service = &render(&req).unwrap()[2].1;
            assert_eq!(line_of(service, "ProtectControlGroups="), expected, "systemd {version}");
            assert!(
                service.starts_with(&format!(
                    "# Written by `baton init` from baton@.service, for systemd {version}.\n"
                )),
                "{service}"
            );
            for line in ["Type=notify", "ExecReload=/usr/bin/baton reload myapp", "Delegate=yes"] {
                assert_eq!(line_of(service, line), Some(line), "systemd {version}");
            }
            assert_eq!(line_of(service, "ReloadSignal="), None);
        }
    }

    /// `[metrics] textfile = DIR` in the config the unit runs: the unit lets
    /// baton write DIR under its sandbox; without one, no such line.
    #[test]
    fn a_metrics_textfile_is_writable_under_the_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(dir.path());
        let files = render(&req).unwrap();
        assert!(!files[0].1.contains("[metrics]"), "{}", files[0].1);
        assert_eq!(line_of(&files[2].1, "ReadWritePaths="), None, "{}", files[2].1);

        // An existing config with [metrics], replaced by `init --force`.
        let (path, text) = &files[0];
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            path,
            format!(
                "{text}\n[metrics]\ntextfile = \"/var/lib/prometheus/node-exporter\"\nlisten = \"127.0.0.1:9464\"\n"
            ),
        )
        .unwrap();
        let files = render(&Request {
            force: true,
            ..req.clone()
        })
        .unwrap();
        let kept = config::parse(&files[0].1, &files[0].0, &Overrides::default()).unwrap();
        assert_eq!(
            kept.metrics,
            config::Metrics {
                textfile: Some("/var/lib/prometheus/node-exporter".into()),
                listen: Some("127.0.0.1:9464".parse().unwrap()),
            },
            "{}",
            files[0].1
        );
        let service = &files[2].1;
        let lines: Vec<&str> = service.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("ProtectHome=")).unwrap();
        assert_eq!(
            lines[at + 1..at + 4],
            [
                "# [metrics] textfile: baton keeps myapp.prom in this directory (node_exporter",
                "# reads it). A missing directory is no error (\"-\"); baton logs that it cannot write.",
                "ReadWritePaths=-/var/lib/prometheus/node-exporter",
            ],
            "{service}"
        );
        assert_eq!(
            service.matches("ReadWritePaths=").count(),
            2,
            "the template's example and ours: {service}"
        );

        // A config that is not valid is replaced as before, metrics and all.
        std::fs::write(path, "[metrics]\ntextfile = \"relative\"\n").unwrap();
        let files = render(&Request {
            force: true,
            ..req.clone()
        })
        .unwrap();
        assert!(!files[0].1.contains("[metrics]"));
        assert_eq!(line_of(&files[2].1, "ReadWritePaths="), None);
        // So is one without [metrics].
        std::fs::write(path, text).unwrap();
        assert_eq!(line_of(&render(&req).unwrap()[2].1, "ReadWritePaths="), None);
    }

    /// systemd.exec(5): a space-separated list of paths, each maybe quoted,
    /// with specifiers (`%`) but no `$` expansion; the `-` goes inside the quotes.
    #[test]
    fn textfile_directories_are_quoted_for_read_write_paths() {
        for (dir, expected) in [
            (
                "/var/lib/prometheus/node-exporter",
                "-/var/lib/prometheus/node-exporter",
            ),
            ("/srv/my metrics", r#""-/srv/my metrics""#),
            ("/srv/100%/$HOME", "-/srv/100%%/$HOME"),
            (r#"/srv/a"b\c"#, r#""-/srv/a\"b\\c""#),
        ] {
            assert_eq!(path_arg("-", Path::new(dir)), expected, "{dir}");
        }
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path());
        let written = write(&req).unwrap();
        assert_eq!(written.len(), 3);
        assert!(written.iter().all(|(_, o)| *o == Outcome::Wrote), "{written:?}");
        // The same arguments again: nothing to do, and no --force needed.
        let again = write(&req).unwrap();
        assert!(again.iter().all(|(_, o)| *o == Outcome::Unchanged), "{again:?}");
        // Other arguments: the files say something else now.
        req.workers = Some(Workers::Count(3));
        assert!(matches!(write(&req), Err(InitError::Exists { .. })));
        req.force = true;
        let forced = write(&req).unwrap();
        let wrote: Vec<_> = forced.iter().filter(|(_, o)| *o == Outcome::Wrote).collect();
        assert_eq!(wrote.len(), 1, "only the config names the workers: {forced:?}");
        assert!(wrote[0].0.ends_with("etc/myapp.toml"), "{forced:?}");
    }

    #[test]
    fn bad_input_is_rejected_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path());
        req.listen = vec!["8080".into()];
        assert!(matches!(write(&req), Err(InitError::Invalid(_))));
        assert!(!dir.path().join("etc").exists());
        req.listen = vec![];
        assert!(matches!(write(&req), Err(InitError::NoListen)));
        req.listen = vec!["127.0.0.1:1".into()];
        req.command = vec![];
        assert!(matches!(write(&req), Err(InitError::NoCommand)));
    }
}
