//! `baton init`: writes NAME.toml, NAME.socket and NAME.service so that
//! `systemctl enable --now NAME.socket` is the only step left.
//!
//! The units are rendered from the template units shipped in `units/`, so
//! the instance units and `baton@.service` never drift apart.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, ListenAddress, Overrides};

const SERVICE_TEMPLATE: &str = include_str!("../units/baton@.service");

impl crate::cli::InitArgs {
    pub fn into_request(self, baton: PathBuf) -> Request {
        Request {
            name: self.name,
            listen: self.listen,
            workers: self.workers,
            user: self.user,
            directory: self.directory,
            unit_dir: self.unit_dir,
            config_dir: self.config_dir,
            command: self.command,
            force: self.force,
            baton,
        }
    }
}

/// What `baton init` was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub listen: Vec<String>,
    pub workers: Option<String>,
    pub user: Option<String>,
    pub directory: Option<PathBuf>,
    pub unit_dir: PathBuf,
    pub config_dir: PathBuf,
    pub command: Vec<String>,
    pub force: bool,
    /// The baton binary the units run.
    pub baton: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path} already exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("the command is missing: baton init NAME --listen ADDR -- CMD ARGS...")]
    NoCommand,
    #[error("at least one --listen ADDR is needed (the socket unit listens there)")]
    NoListen,
    #[error("the generated config is invalid:\n{0}")]
    Invalid(#[source] config::ConfigError),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The three files `init` writes: (path, contents).
pub fn render(req: &Request) -> Result<Vec<(PathBuf, String)>, InitError> {
    if req.command.is_empty() {
        return Err(InitError::NoCommand);
    }
    if req.listen.is_empty() {
        return Err(InitError::NoListen);
    }
    let config_path = req.config_dir.join(format!("{}.toml", req.name));
    let config_text = config_toml(req);
    // The generated file must pass the same validation `baton check` does.
    let config = config::parse(&config_text, &config_path, &Overrides::default()).map_err(InitError::Invalid)?;
    let socket = socket_unit(&req.name, &config.listen.iter().map(|l| &l.address).collect::<Vec<_>>());
    let service = service_unit(req, config.stop.timeout);
    Ok(vec![
        (config_path, config_text),
        (req.unit_dir.join(format!("{}.socket", req.name)), socket),
        (req.unit_dir.join(format!("{}.service", req.name)), service),
    ])
}

/// Writes the files, refusing to replace any unless `force`.
pub fn write(req: &Request) -> Result<Vec<PathBuf>, InitError> {
    let files = render(req)?;
    if !req.force {
        if let Some((path, _)) = files.iter().find(|(p, _)| p.exists()) {
            return Err(InitError::Exists { path: path.clone() });
        }
    }
    for (path, text) in &files {
        write_file(path, text)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
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

fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

fn config_toml(req: &Request) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# {}: supervised by baton. Written by `baton init`; edit freely.",
        req.name
    );
    let _ = writeln!(
        t,
        "# Check with `baton check {}`, apply with `systemctl reload {}`.",
        req.name, req.name
    );
    let _ = writeln!(t, "name = {}", quote(&req.name));
    let argv: Vec<String> = req.command.iter().map(|a| quote(a)).collect();
    let _ = writeln!(t, "command = [{}]", argv.join(", "));
    if let Some(dir) = &req.directory {
        let _ = writeln!(t, "directory = {}", quote(&dir.display().to_string()));
    }
    match req.workers.as_deref() {
        Some("auto") => t.push_str("workers = \"auto\"\n"),
        Some(n) => {
            let _ = writeln!(t, "workers = {n}");
        }
        None => t.push_str("workers = 1\n"),
    }
    t.push_str(
        "\n# Under systemd the sockets come from the .socket unit; these entries are\n\
         # used only when baton runs without it (baton run --config ...).\n",
    );
    for addr in &req.listen {
        let _ = writeln!(t, "[[listen]]\naddress = {}\n", quote(addr));
    }
    t.push_str(
        "[environment]\n\
         # NODE_ENV = \"production\"\n\n\
         [readiness]\n\
         mode = \"notify\"          # the app sends READY=1 to $NOTIFY_SOCKET; or \"delay\"\n\
         timeout = \"60s\"\n\n\
         [reload]\n\
         strategy = \"parallel\"    # or \"rolling\"\n\n\
         [stop]\n\
         signal = \"SIGTERM\"\n\
         timeout = \"30s\"\n\n\
         [restart]\n\
         delay = \"100ms\"\n\
         max_delay = \"30s\"\n\
         limit = 5\n\
         window = \"60s\"\n\n\
         [watchdog]\n\
         timeout = \"0s\"           # e.g. \"10s\": workers must send WATCHDOG=1 this often\n",
    );
    t
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

pub(crate) fn service_unit(req: &Request, stop_timeout: Duration) -> String {
    let baton = req.baton.display().to_string();
    let mut t = String::from("# Written by `baton init` from baton@.service.\n");
    for line in SERVICE_TEMPLATE.lines() {
        // The template's own header comments describe the template.
        if line.starts_with("# baton@.service") || line.starts_with("# Started by baton@") {
            continue;
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
            workers: Some("4".into()),
            user: Some("www-data".into()),
            directory: Some("/srv/myapp/current".into()),
            unit_dir: dir.join("units"),
            config_dir: dir.join("etc"),
            command: vec!["node".into(), "server.js".into()],
            force: false,
            baton: "/usr/bin/baton".into(),
        }
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
            "ExecStart=/usr/bin/baton run myapp",
            "ExecReload=/usr/bin/baton reload myapp",
            "KillMode=mixed",
            "Delegate=yes",
            "Restart=on-failure",
            "WatchdogSec=30s",
            "RuntimeDirectory=baton/myapp",
            "TimeoutStopSec=45s",
            "Requires=myapp.socket",
            "User=www-data",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "ProtectSystem=full",
        ] {
            assert!(service.lines().any(|l| l == line), "missing {line:?} in\n{service}");
        }
        assert!(!service.contains("[Install]"), "[Install] belongs on the socket only");
        assert!(!service.contains("%i"));
    }

    /// units/example/ holds what `baton init` writes, for people who read
    /// units before running tools. `BATON_BLESS=1 cargo test` refreshes it.
    #[test]
    fn the_example_units_are_what_init_writes() {
        let req = Request {
            name: "myapp".into(),
            listen: vec!["0.0.0.0:8080".into()],
            workers: Some("4".into()),
            user: Some("www-data".into()),
            directory: Some("/srv/myapp/current".into()),
            unit_dir: "units/example".into(),
            config_dir: "units/example".into(),
            command: vec!["node".into(), "server.js".into()],
            force: true,
            baton: "/usr/bin/baton".into(),
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (path, text) in render(&req).unwrap() {
            let path = root.join(path);
            if std::env::var_os("BATON_BLESS").is_some() {
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

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path());
        let written = write(&req).unwrap();
        assert_eq!(written.len(), 3);
        assert!(matches!(write(&req), Err(InitError::Exists { .. })));
        req.force = true;
        write(&req).unwrap();
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
