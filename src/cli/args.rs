//! The command line's shape (README "Commands and exit codes"). Help texts
//! are written for an operator woken at 3 a.m.: what the command does, what
//! the exit codes mean.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Dur, ListenAddress, Workers};
use crate::systemd::version::SystemdVersion;

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Zero-downtime process supervisor for web services, built to run under systemd",
    long_about = "baton holds your app's listening sockets and hands the same file descriptors to \
every generation of its workers. A reload starts a new generation, waits until it is ready, then \
drains the old one: the port never closes. If the new release fails, the reload fails and the old \
one keeps serving.",
    after_help = "Quick start (no config file, no systemd):\n  \
baton run --listen 127.0.0.1:8080 --workers 2 -- node server.js\n  \
baton reload            # from another terminal; exit 0 = new generation serving\n  \
baton status\n\n\
Config files live in /etc/baton/NAME.toml; `baton run NAME` reads /etc/baton/NAME.toml."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Args, Clone, Default)]
pub struct Target {
    /// App name: reads /etc/baton/NAME.toml and uses its control socket
    pub name: Option<String>,
    /// Use this config file instead of /etc/baton/NAME.toml
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "name")]
    pub config: Option<PathBuf>,
    /// Control socket path (default: /run/baton/NAME/control.sock as root,
    /// $XDG_RUNTIME_DIR/baton/NAME/control.sock otherwise)
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// `baton init`'s flags.
#[derive(Debug, Args, Clone)]
pub struct InitArgs {
    /// App name: the unit names and /etc/baton/NAME.toml
    pub name: String,
    /// Address the socket unit listens on (repeatable): 0.0.0.0:8080, [::]:8080, /run/NAME.sock, @abstract
    #[arg(long, short = 'l', value_name = "ADDR", required = true)]
    pub listen: Vec<ListenAddress>,
    /// Number of workers, or "auto" for one per CPU
    #[arg(long, short = 'w', value_name = "N")]
    pub workers: Option<Workers>,
    /// Run the app as this existing user (User= in the unit). Default: a
    /// system user of its own named NAME, created with systemd-sysusers.
    /// `--user root` works but is warned about
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The app's working directory (a symlink is resolved per generation)
    #[arg(long, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Where to write the units
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Where to write NAME.toml (the unit names it with --config unless it
    /// is /etc/baton)
    #[arg(long, value_name = "DIR", default_value = "/etc/baton")]
    pub config_dir: PathBuf,
    /// Where to write the dedicated user's entry, baton-NAME.conf
    /// (systemd-sysusers runs only for the default directory)
    #[arg(long, value_name = "DIR", default_value = "/etc/sysusers.d")]
    pub sysusers_dir: PathBuf,
    /// Write the units for this systemd version (the number `systemctl
    /// --version` prints on the target host). Default: this machine's;
    /// 252 if it has no systemctl
    #[arg(long, value_name = "N")]
    pub systemd_version: Option<SystemdVersion>,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
    /// The app's command
    #[arg(last = true, value_name = "CMD ARGS", required = true)]
    pub command: Vec<String>,
}

/// `baton import-pm2`'s flags.
#[derive(Debug, Args, Clone)]
pub struct ImportPm2Args {
    /// The PM2 ecosystem file: ecosystem.config.js, .cjs, .mjs or .json (node evaluates it, as PM2 does)
    pub file: PathBuf,
    /// Address for the socket unit (repeatable), instead of 0.0.0.0:PORT from the app's env.PORT.
    /// Only for a file with exactly one app
    #[arg(long, short = 'l', value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Merge each app's env_NAME over its env, like `pm2 start --env NAME`
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// Run the services as this user (User= in the unit) when an app sets no uid
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Where to write the units
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Where to write NAME.toml
    #[arg(long, value_name = "DIR", default_value = "/etc/baton")]
    pub config_dir: PathBuf,
    /// Write the units for this systemd version (the number `systemctl
    /// --version` prints on the target host). Default: this machine's;
    /// 252 if it has no systemctl
    #[arg(long, value_name = "N")]
    pub systemd_version: Option<SystemdVersion>,
    /// Overwrite existing files that differ
    #[arg(long)]
    pub force: bool,
    /// Print the files that would be written, and the same report and next steps as a real run; write nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Supervise the app in the foreground (what systemd's ExecStart runs)
    #[command(
        long_about = "Supervise the app in the foreground. Uses the sockets systemd passes \
(LISTEN_FDS) or, standalone, binds the [[listen]] addresses itself. SIGHUP reloads; SIGTERM or \
SIGINT stop gracefully (a second one kills at once). With [node] inherit_listen = true, the \
workers' NODE_OPTIONS get `--require` of baton's Node preload (written to the runtime directory), \
appended to the user's own: an unchanged app's listen(PORT) then uses the inherited socket.",
        after_help = "Exit codes: 0 clean stop · 1 runtime failure (first generation never became ready, \
or every worker lost with restarts exhausted) · 78 invalid config.\n\n\
Examples:\n  baton run myapp\n  baton run --config ./app.toml\n  \
baton run --listen 127.0.0.1:8080 --workers 4 -- node server.js"
    )]
    Run {
        #[command(flatten)]
        target: Target,
        /// Address to listen on (repeatable): 127.0.0.1:8080, [::1]:8080, /path.sock, @abstract.
        /// Replaces the config's [[listen]] entries
        #[arg(long, short = 'l', value_name = "ADDR")]
        listen: Vec<ListenAddress>,
        /// Number of workers, or "auto" for one per CPU
        #[arg(long, short = 'w', value_name = "N")]
        workers: Option<Workers>,
        /// App name when running without a config file (default: the command's file name)
        #[arg(long = "name", id = "app_name", value_name = "NAME")]
        app_name: Option<String>,
        /// The app's command; replaces the config's `command`
        #[arg(last = true, value_name = "CMD ARGS")]
        command: Vec<String>,
    },
    /// Start a new generation, wait until it is ready, retire the old one (or, with --canary, start a few beside it)
    #[command(
        after_help = "Exit codes: 0 the new generation is serving (with --canary: the canary's workers \
are ready beside the serving generation) · 1 the reload failed or was refused and the old generation \
is still serving at full strength (the reason, the line of the failing worker's output that looks \
like the error, hints, where its whole output is and its last lines are printed; a worker that dies \
within [readiness] settle after its READY fails it too; a plain reload is refused while a canary \
runs: promote or roll it back first) · 2 usage error or no supervisor reachable.\n\n\
Canary release:\n  baton reload myapp --canary 1            # 1 new worker beside the serving ones\n  \
baton promote myapp                      # happy: the new release takes over\n  \
baton rollback myapp                     # unhappy: the canary stops, nothing else changes\n  \
baton reload myapp --canary 1 --hold 10m # promote by itself after 10 minutes without a failure\n\n\
Any failure of a canary worker (exit, crash, readiness or watchdog timeout, ERRNO=, memory limit) \
aborts the canary: its workers stop and are never restarted."
    )]
    Reload {
        #[command(flatten)]
        target: Target,
        /// Also wait until the old generation has fully exited
        #[arg(long, conflicts_with = "canary")]
        wait: bool,
        /// Start only N workers of the new release BESIDE the serving
        /// generation, which keeps all its workers (a canary). Exit 0 once
        /// they are ready; then `baton promote` or `baton rollback` decide
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        canary: Option<u32>,
        /// With --canary: after this long without a failure, run
        /// [canary] check (if any) and promote the canary by itself
        /// (default: [canary] hold; without one, a person decides)
        #[arg(long, value_name = "DURATION", requires = "canary", value_parser = duration_arg)]
        hold: Option<Dur>,
    },
    /// Finish a canary: grow it into the serving generation, from the release it pinned
    #[command(
        long_about = "Finish the running canary (started by `baton reload --canary N`): its release \
becomes the serving generation, started with the configured strategy (parallel or rolling). The \
canary's workers join the new generation without a restart. It uses the release the canary \
pinned when it started, NOT the config or the `current` symlink as they are now.",
        after_help = "Exit codes: 0 the canary's release is serving · 1 the promotion failed or was \
refused (no canary running, another reload running): the reason is printed, and the old generation \
is still serving at full strength · 2 usage error or no supervisor reachable.\n\n\
Example:\n  baton reload myapp --canary 1     # 1 worker of the new release beside the old ones\n  \
baton status myapp                 # look: both generations serve\n  baton promote myapp"
    )]
    Promote {
        #[command(flatten)]
        target: Target,
    },
    /// Abort the running canary, or go back to the release that served before the current one
    #[command(
        long_about = "With a canary running: abort it. Its workers stop and are not restarted; the \
serving generation is untouched. Without a canary, rollback would go back to the release that served \
before the current one (a second rollback returns to where the first started, like `cd -`), or \
to --to RELEASE (an id from `baton history`), with the same overlap and failure rules as a \
reload. A release whose directory or executable is gone (or was replaced) is refused and nothing \
changes. If the configured `directory` is a symlink (current -> releases/...), baton re-points it \
to the rolled-back release, so that later reloads and restarts stay there, and says so.",
        after_help = "Exit codes: 0 the canary was aborted, or the earlier release is serving · 1 \
refused or failed (the reason is printed), the serving generation is untouched · 2 usage error or \
no supervisor reachable.\n\n\
Examples:\n  baton rollback myapp              # back to the release before the current one\n  \
baton rollback myapp              # again: forward to where the first rollback started\n  \
baton history myapp               # the release ids\n  baton rollback myapp --to 3f2a9c"
    )]
    Rollback {
        #[command(flatten)]
        target: Target,
        /// Go back to this release (an id that `baton history` shows)
        #[arg(long, value_name = "RELEASE")]
        to: Option<String>,
    },
    /// The releases that served, newest first (read from the state directory; works with baton stopped)
    #[command(
        long_about = "The last 10 releases that served, newest first: generation, release id, how it \
came to serve (start, reload, canary, rollback), how that ended (ok, canary aborted with the \
reason, canary rolled back), when it served, its command, directory and executable. baton writes \
them to history.json in its state directory: $STATE_DIRECTORY under systemd \
(/var/lib/baton/NAME), else $XDG_STATE_HOME/baton/NAME or ~/.local/state/baton/NAME. A release id \
is what `baton rollback --to` takes.",
        after_help = "Exit codes: 0 ok (also when nothing is recorded yet) · 1 the history file is \
unreadable or corrupt · 2 usage error."
    )]
    History {
        #[command(flatten)]
        target: Target,
        /// Print the file's JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Replace the running supervisor with the baton binary now installed, in place: no worker restarts
    #[command(
        long_about = "Upgrade baton itself without touching the app. The running supervisor re-executes \
the baton binary now installed at the path it was started from (after a package upgrade: the new \
version), in place: the same pid, so systemd sees nothing but a reload. The listening sockets, every \
worker (never signalled or restarted), their output pipes, and all state (generations, restart \
counters, a running canary and its hold, history) carry over. Before it execs, baton runs the new \
binary in a check mode that reads the hand-over; if the binary is missing, is not baton, or cannot \
read this version's hand-over, the upgrade is refused and nothing changes. The packages run \
`baton upgrade --all` after installing, unless /etc/baton/no-auto-upgrade exists.",
        after_help = "Exit codes: 0 the new binary serves (it prints both versions and the workers it kept) · \
1 refused or failed: the reason is printed, and the old binary carries on unchanged (or, if the new \
one failed after the exec, systemd restarts the unit: see `systemctl status NAME`) · 2 usage error or \
no supervisor reachable.\n\n\
Examples:\n  baton upgrade myapp\n  baton upgrade --all        # every app running on this machine"
    )]
    Upgrade {
        #[command(flatten)]
        target: Target,
        /// Every supervisor running on this machine (as root: every app in /run/baton)
        #[arg(long, conflicts_with_all = ["name", "config", "control"])]
        all: bool,
    },
    /// (internal) Reads a hand-over on stdin and says whether this binary can take over
    #[command(name = "upgrade-check", hide = true)]
    UpgradeCheck,
    /// (internal) What `baton upgrade` execs: takes over from the previous image
    #[command(name = "upgrade-resume", hide = true)]
    UpgradeResume {
        #[arg(long, value_name = "FD")]
        handover_fd: i32,
    },
    /// Show generations, workers, pids, states, restarts, memory and the last reload
    #[command(
        long_about = "Show generations, workers, pids, states, restarts, memory and the last reload, \
once. With --watch: a live view, like top, redrawn every --interval until you press q: the \
generations, each worker's state, memory and CPU with a small history of both, the restarts and \
the last reload. It fits an 80×24 terminal (over ssh too); extra workers are counted as \"+N more\" \
and scrolled with the arrow keys. While baton is stopped or upgrading, the view says \"baton not \
reachable\" and keeps asking.",
        after_help = "Keys (--watch): q, Esc or Ctrl-C quit · ↑/↓ (j/k), PgUp/PgDn scroll the workers · \
Ctrl-L redraws.\n\n\
Exit codes: 0 ok · 1 the terminal failed (--watch) · 2 usage error, no supervisor reachable, or \
--watch without a terminal on stdout.\n\n\
Examples:\n  baton status myapp\n  baton status myapp --watch\n  \
baton status myapp --watch --interval 5s\n  baton status myapp --json | jq .supervisor.serving"
    )]
    Status {
        #[command(flatten)]
        target: Target,
        /// Print one JSON document instead of text
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Keep the view open and redraw it in place (q quits)
        #[arg(long, short = 'w')]
        watch: bool,
        /// How often --watch asks baton (100ms to 1h)
        #[arg(long, value_name = "DURATION", default_value = "1s", requires = "watch", value_parser = watch_interval)]
        interval: Dur,
    },
    /// Print the app's metrics in the Prometheus text format
    #[command(
        long_about = "Print the app's metrics in the Prometheus text format (0.0.4, which \
OpenMetrics readers accept): the serving generation, workers by state, reloads by result and \
their durations, restarts by reason, each worker's memory and CPU, the sockets' accept queues. \
The same text is served on `[metrics] listen` and written to `[metrics] textfile`.",
        after_help = "Exit codes: 0 ok · 2 usage error or no supervisor reachable."
    )]
    Metrics {
        #[command(flatten)]
        target: Target,
    },
    /// Write NAME.toml, NAME.socket and NAME.service for systemd
    #[command(
        long_about = "Write /etc/baton/NAME.toml, /etc/systemd/system/NAME.socket and NAME.service, \
then run `systemctl daemon-reload`. Start it with `systemctl enable --now NAME.socket`: the first \
connection starts NAME.service. A file that says something else is never overwritten without \
--force; running init again with the same arguments changes nothing (each file is reported as \
`wrote` or `unchanged`, and daemon-reload runs only if a unit changed).\n\n\
The service runs sandboxed (see the comments in NAME.service) as a system user of its own, \
NAME: init writes /etc/sysusers.d/baton-NAME.conf and runs `systemd-sysusers` to create it. \
--user USER runs it as an existing user instead; --user root works, with a warning.",
        after_help = "Example:\n  baton init myapp --listen 0.0.0.0:8080 --workers 4 --user www-data \\\n    \
--directory /srv/myapp/current -- node server.js\n  systemctl enable --now myapp.socket"
    )]
    Init(InitArgs),
    /// Turn a PM2 ecosystem file into a baton config and units for each app
    #[command(
        name = "import-pm2",
        long_about = "Evaluate a PM2 ecosystem file with node and write, for each app, \
/etc/baton/NAME.toml, /etc/systemd/system/NAME.socket and NAME.service, exactly as `baton init` \
would. The socket unit needs each app's port: it is 0.0.0.0:PORT from the app's env.PORT (or \
port), or --listen for a file with one app. Stdout says, one line each, what was written, \
`NAME: note: KEY: ...` for a key mapped with a difference, and `NAME: not mapped: KEY: why` for \
every key baton does not carry over. Errors go to stderr as `NAME: error: ...`; nothing is \
written for that app, and the others are still imported. Existing files that differ are never \
overwritten without --force. A Node app (one node runs) gets [node] inherit_listen = true and \
drain = true: baton's preload makes its own listen(PORT) use the socket baton holds, reports it \
ready on its first 'listening' (or its process.send('ready') with wait_ready), and drains \
keep-alive connections on stop, so the app runs unchanged. Any other app must listen on fd 3 \
itself, which a `next:` line says. Nothing is enabled, started or reloaded: review the files, \
then follow the `next:` lines; --dry-run prints the same lines.",
        after_help = "Exit codes: 0 every app written (not-mapped keys are warnings) · 1 an app could not be \
imported, or node could not evaluate the file · 2 usage error, unreadable file, or node missing.\n\n\
Examples:\n  baton import-pm2 --dry-run /srv/myapp/ecosystem.config.js\n  \
baton import-pm2 /srv/myapp/ecosystem.config.js --env production --user www-data\n  \
baton import-pm2 ecosystem.config.js --listen 127.0.0.1:3000\n  \
systemctl daemon-reload && systemctl enable --now myapp.socket\n\n\
Every PM2 key and command, and what it becomes: \"Migrating from PM2\" in \
/usr/share/doc/baton/README.md."
    )]
    ImportPm2(ImportPm2Args),
    /// Write man pages and shell completions into DIR (used by the package build)
    #[command(hide = true, name = "generate-docs")]
    GenerateDocs {
        /// Output directory; man/ and completions/ are created in it
        dir: PathBuf,
    },
    /// Validate the config and print its problems with file:line:column (the first 50, then a count)
    #[command(after_help = "Exit codes: 0 valid · 78 invalid (safe as ExecStartPre=).")]
    Check {
        #[command(flatten)]
        target: Target,
    },
}

impl InitArgs {
    /// What `baton init` is asked for; `baton` is the binary the units run,
    /// `here` the systemd version of this machine (used without the flag).
    pub fn into_request(self, baton: PathBuf, here: impl FnOnce() -> SystemdVersion) -> crate::systemd::init::Request {
        crate::systemd::init::Request {
            name: self.name,
            listen: self.listen.iter().map(ToString::to_string).collect(),
            workers: self.workers,
            user: self.user,
            directory: self.directory,
            unit_dir: self.unit_dir,
            config_dir: self.config_dir,
            sysusers_dir: self.sysusers_dir,
            command: self.command,
            force: self.force,
            baton,
            systemd: self.systemd_version.unwrap_or_else(here),
        }
    }
}

impl ImportPm2Args {
    /// What `baton import-pm2` is asked for; `baton` is the binary the units
    /// run, `here` the systemd version of this machine (used without the flag).
    pub fn into_request(self, baton: PathBuf, here: impl FnOnce() -> SystemdVersion) -> crate::import::pm2::Request {
        crate::import::pm2::Request {
            file: self.file,
            listen: self.listen,
            env: self.env,
            user: self.user,
            unit_dir: self.unit_dir,
            config_dir: self.config_dir,
            force: self.force,
            dry_run: self.dry_run,
            baton,
            systemd: self.systemd_version.unwrap_or_else(here),
        }
    }
}

/// `--interval`: often enough to be live, never a busy loop.
/// A duration argument; its message quotes the text where a config
/// message would say how the file writes it.
fn duration_arg(text: &str) -> Result<Dur, String> {
    text.parse()
        .map_err(|m: String| crate::config::on_command_line(&m, text))
}

fn watch_interval(text: &str) -> Result<Dur, String> {
    let d = duration_arg(text)?;
    if d.0 < std::time::Duration::from_millis(100) || d.0 > std::time::Duration::from_secs(3600) {
        return Err(format!("{text} is out of range: give 100ms to 1h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn canary_flags() {
        let cli = Cli::try_parse_from(["baton", "reload", "app", "--canary", "2", "--hold", "90s"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Reload { canary: Some(2), hold: Some(Dur(d)), wait: false, .. } if d.as_secs() == 90
        ));
        // --hold needs --canary, a canary needs a worker, and --wait is for plain reloads.
        for bad in [
            &["baton", "reload", "--hold", "1s"][..],
            &["baton", "reload", "--canary", "0"],
            &["baton", "reload", "--canary", "1", "--wait"],
            &["baton", "promote", "--to", "x"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["baton", "rollback", "app", "--to", "a1b2"]).unwrap();
        assert!(matches!(cli.command, Cmd::Rollback { to: Some(ref t), .. } if t == "a1b2"));
    }

    #[test]
    fn quick_mode_parses() {
        let cli = Cli::try_parse_from([
            "baton",
            "run",
            "--listen",
            "127.0.0.1:1",
            "-w",
            "2",
            "--",
            "node",
            "a.js",
        ]);
        assert!(matches!(cli, Ok(Cli { command: Cmd::Run { ref command, .. } }) if command == &["node", "a.js"]));
    }

    /// Bad values are usage errors, with the config's own explanation.
    #[test]
    fn listen_and_workers_are_parsed_at_the_edge() {
        let err = Cli::try_parse_from(["baton", "run", "--listen", "8080", "--", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(
            err.to_string().contains(
                r#"invalid value '8080' for '--listen <ADDR>': a bare port is not an address: write "0.0.0.0:8080""#
            ),
            "{err}"
        );
        let err = Cli::try_parse_from(["baton", "init", "a", "-l", "@a", "--workers", "0", "--", "x"]).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"invalid value '0' for '--workers <N>': must be a positive integer or "auto", found 0"#),
            "{err}"
        );
        let ok = Cli::try_parse_from(["baton", "run", "-l", "[::1]:80", "-w", "auto", "--", "x"]).unwrap();
        assert!(
            matches!(ok.command, Cmd::Run { ref listen, workers: Some(Workers::Auto), .. } if listen[0].to_string() == "[::1]:80")
        );
    }

    /// A bad duration's message names the text given, not the config's
    /// placeholder for how a file writes it (it printed U+E000).
    #[test]
    fn a_bad_duration_argument_is_quoted_in_its_message() {
        for (args, text) in [
            (
                &["baton", "reload", "app", "--canary", "1", "--hold", "5"][..],
                "found \"5\"",
            ),
            (
                &["baton", "reload", "app", "--canary", "1", "--hold", "25h"][..],
                "found \"25h\"",
            ),
            (
                &["baton", "status", "app", "--watch", "--interval", "0.5"][..],
                "found \"0.5\"",
            ),
        ] {
            let err = Cli::try_parse_from(args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(text), "{args:?}: {err}");
            assert!(!err.contains('\u{e000}'), "{args:?}: {err}");
        }
    }
}
