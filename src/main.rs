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
            // Before any thread exists: this edits the environment.
            let inherited = match baton::activation::take_inherited() {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("baton: {}", commands::chain(&e));
                    std::process::exit(commands::EX_FAILED);
                }
            };
            init_logging("info");
            let overrides = Overrides {
                name: app_name,
                listen,
                workers,
                command,
            };
            commands::run(target, overrides, inherited)
        }
        Cmd::Reload { target, wait } => {
            init_logging("warn");
            commands::reload(target, wait)
        }
        Cmd::Status { target, json } => {
            init_logging("warn");
            commands::status(target, json)
        }
        Cmd::Init {
            name,
            listen,
            workers,
            user,
            directory,
            unit_dir,
            config_dir,
            force,
            command,
        } => {
            init_logging("warn");
            commands::init(baton::init::Request {
                name,
                listen,
                workers,
                user,
                directory,
                unit_dir,
                config_dir,
                command,
                force,
                baton: std::env::current_exe()
                    .and_then(|p| p.canonicalize())
                    .unwrap_or_else(|_| "/usr/bin/baton".into()),
            })
        }
        Cmd::Check { target } => {
            init_logging("warn");
            commands::check(target)
        }
    };
    std::process::exit(code);
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
