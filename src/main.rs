//! The `baton` binary: parse the command line, read what systemd passed
//! while still single-threaded, and hand over to the library.

use baton::cli::{Cli, Cmd};
use baton::commands;
use baton::config::Overrides;
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run {
            target,
            listen,
            workers,
            app_name,
            command,
        } => {
            // Before any thread exists: nothing else may take systemd's fds.
            let inherited = match baton::activation::take_inherited() {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("baton: {}", commands::chain(&e));
                    std::process::exit(commands::EX_FAILED);
                }
            };
            let journal = journal_connected();
            init_logging("info", journal);
            let overrides = Overrides {
                name: app_name,
                listen,
                workers,
                command,
            };
            commands::run(target, overrides, inherited, journal)
        }
        Cmd::Reload { target, wait } => {
            init_logging("warn", false);
            commands::reload(target, wait)
        }
        Cmd::Status { target, json } => {
            init_logging("warn", false);
            commands::status(target, json)
        }
        Cmd::Init(args) => {
            init_logging("warn", false);
            commands::init(args.into_request(this_binary()))
        }
        Cmd::ImportPm2(args) => {
            init_logging("warn", false);
            commands::import_pm2(args.into_request(this_binary()))
        }
        Cmd::GenerateDocs { dir } => match baton::docs::generate(&dir) {
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
    };
    std::process::exit(code);
}

/// The units that `init` and `import-pm2` write run this very binary
/// (/usr/bin/baton once packaged).
fn this_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .unwrap_or_else(|_| "/usr/bin/baton".into())
}

/// Whether stderr is systemd's journal stream: JOURNAL_STREAM names the
/// device and inode of the stream systemd connected, and stderr must be it
/// (a redirected stderr keeps the variable but is not the journal).
fn journal_connected() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
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
