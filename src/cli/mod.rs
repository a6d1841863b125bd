//! The command line: its shape (`args`), each command's flow (`commands`),
//! the man pages (`docs`), and [`main`], which the `baton` binary calls.
//!
//! This layer sits at the edge: it may use every other part of baton, and
//! nothing else uses it.

#![forbid(unsafe_code)]

mod args;
pub(crate) mod commands;
pub(crate) mod docs;
mod watch;

pub(crate) use args::{Cli, Cmd, Target};

use clap::Parser;

use crate::config::Overrides;

/// Parses the command line, reads what systemd passed while still
/// single-threaded, runs the command and returns its exit code (README
/// "Commands and exit codes").
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            target,
            listen,
            workers,
            app_name,
            command,
        } => {
            // Before any thread exists: nothing else may take systemd's fds.
            let inherited = match crate::os::activation::take_inherited() {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("baton: {}", commands::chain(&e));
                    return commands::EX_FAILED;
                }
            };
            let journal = libsystemd::logging::connected_to_journal();
            init_logging("info", journal);
            let overrides = Overrides {
                name: app_name,
                listen,
                workers,
                command,
            };
            commands::run(target, overrides, inherited, journal)
        }
        Cmd::Reload {
            target,
            wait,
            canary,
            hold,
        } => {
            init_logging("warn", false);
            let request = crate::control::Request::Reload {
                wait,
                canary: canary.map(|n| n as usize),
                hold_ms: hold.map(|d| d.0.as_millis() as u64),
            };
            commands::change(target, "reload", &request)
        }
        Cmd::Promote { target } => {
            init_logging("warn", false);
            commands::change(target, "promote", &crate::control::Request::Promote {})
        }
        Cmd::Rollback { target, to } => {
            init_logging("warn", false);
            commands::change(target, "rollback", &crate::control::Request::Rollback { to })
        }
        Cmd::History { target, json } => {
            init_logging("warn", false);
            commands::history(target, json)
        }
        Cmd::Upgrade { target, all } => {
            init_logging("warn", false);
            commands::upgrade(target, all)
        }
        Cmd::UpgradeCheck => {
            init_logging("warn", false);
            commands::upgrade_check()
        }
        Cmd::UpgradeResume { handover_fd } => {
            // stderr is what the previous image had: the journal under systemd.
            init_logging("info", libsystemd::logging::connected_to_journal());
            commands::resume(handover_fd)
        }
        Cmd::Status {
            target,
            json,
            watch,
            interval,
        } => {
            init_logging("warn", false);
            commands::status(target, json, watch.then_some(interval.0))
        }
        Cmd::Metrics { target } => {
            init_logging("warn", false);
            commands::metrics(target)
        }
        Cmd::Init(args) => {
            init_logging("warn", false);
            commands::init(args.into_request(this_binary(), commands::systemd_here))
        }
        Cmd::ImportPm2(args) => {
            init_logging("warn", false);
            commands::import_pm2(args.into_request(this_binary(), commands::systemd_here))
        }
        Cmd::GenerateDocs { dir } => match crate::cli::docs::generate(&dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                0
            }
            Err(e) => {
                eprintln!("baton generate-docs: {}", commands::chain(&e));
                1
            }
        },
        Cmd::Check { target } => {
            init_logging("warn", false);
            commands::check(target)
        }
    }
}

/// The units that `init` and `import-pm2` write run this very binary
/// (/usr/bin/baton once packaged).
fn this_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .unwrap_or_else(|_| "/usr/bin/baton".into())
}

/// baton's own events: structured journal entries under systemd (INFO as
/// priority 6, not tracing-journald's default 5), else plain stderr.
fn init_logging(default: &str, journal: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    if journal {
        if let Ok(layer) = tracing_journald::layer() {
            use tracing_journald::{Priority, PriorityMappings};
            let layer = layer.with_priority_mappings(PriorityMappings {
                info: Priority::Informational,
                debug: Priority::Debug,
                ..PriorityMappings::new()
            });
            registry.with(layer).init();
            return;
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}
