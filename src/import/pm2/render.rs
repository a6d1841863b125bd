//! Rendering a [`Plan`] as NAME.toml, NAME.socket and NAME.service. The
//! config is written by hand, with comments that say which PM2 key each
//! value came from; the units come from `init`, so they are the very units
//! `baton init` writes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::plan::{Ctx, PM2_KILL_TIMEOUT_MS, Plan, READY_DELAY, Runner, Workers};
use crate::config::{self, ListenAddress, Overrides};
use crate::systemd::init;

fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

/// `key = value`, with a comment aligned as `baton init` aligns them.
fn kv(t: &mut String, key: &str, value: &str, comment: Option<&str>) {
    let line = format!("{key} = {value}");
    match comment {
        // A long line keeps two spaces before its comment.
        Some(c) if line.len() >= 24 => {
            let _ = writeln!(t, "{line}  # {c}");
        }
        Some(c) => {
            let _ = writeln!(t, "{line:<24} # {c}");
        }
        None => {
            let _ = writeln!(t, "{line}");
        }
    }
}

fn ms_text(d: Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

fn config_text(ctx: &Ctx<'_>, p: &Plan) -> String {
    let name = &p.name;
    let mut t = String::new();
    let pm2_name = p.pm2_name.as_deref().unwrap_or(name);
    let _ = writeln!(
        t,
        "# {name}: supervised by baton. Written by `baton import-pm2` from the PM2 app\n\
         # {pm2_name:?} in {}; edit freely.\n\
         # Check with `baton check {name}`, apply with `systemctl reload {name}`.",
        ctx.file.display()
    );
    kv(&mut t, "name", &quote(name), None);
    let how = match &p.runner {
        Runner::Interpreter { name, why: Some(why) } => format!("run by {name} ({why})"),
        Runner::Interpreter { name, why: None } => format!("run by interpreter {name:?}"),
        Runner::Direct(why) => format!("run directly ({why})"),
    };
    let _ = writeln!(t, "# PM2 script {:?}, {how}", p.script);
    let argv: Vec<String> = p.command.iter().map(|a| quote(a)).collect();
    kv(&mut t, "command", &format!("[{}]", argv.join(", ")), None);
    let dir_comment = match &p.directory_from {
        Some(key) => key.clone(),
        None => "the ecosystem file's directory (no cwd)".to_owned(),
    };
    kv(
        &mut t,
        "directory",
        &quote(&p.directory.display().to_string()),
        Some(&dir_comment),
    );
    match &p.workers {
        Some((Workers::Count(n), from)) => kv(&mut t, "workers", &n.to_string(), Some(from)),
        Some((Workers::Auto, from)) => kv(&mut t, "workers", "\"auto\"", Some(&format!("{from}; one per CPU"))),
        None => kv(&mut t, "workers", "1", None),
    }

    t.push_str(
        "\n# Under systemd the sockets come from the .socket unit; these entries are\n\
         # used only when baton runs without it (baton run --config ...).\n",
    );
    for addr in &p.listen {
        t.push_str("[[listen]]\n");
        kv(&mut t, "address", &quote(addr), Some(&p.listen_from));
        t.push('\n');
    }

    t.push_str("[environment]\n");
    for (k, v) in &p.environment {
        let key = toml_edit::Key::new(k.as_str());
        kv(&mut t, &key.display_repr(), &quote(v), None);
    }

    t.push_str("\n[readiness]\n");
    match &p.node_ipc {
        Some(key) => kv(
            &mut t,
            "mode",
            "\"node-ipc\"",
            Some(&format!("{key}: the app calls process.send('ready')")),
        ),
        None => {
            t.push_str(
                "# PM2 counted the app online as soon as it started (no wait_ready); baton\n\
                 # counts a worker ready once it has stayed up for `delay`. Better: have the\n\
                 # app send READY=1 (mode = \"notify\") or process.send('ready') (\"node-ipc\").\n",
            );
            kv(&mut t, "mode", "\"delay\"", None);
            kv(&mut t, "delay", &ms_text(READY_DELAY), None);
        }
    }
    match &p.readiness_timeout {
        Some((d, from)) => kv(
            &mut t,
            "timeout",
            &ms_text(*d),
            Some(&format!("{from}; not ready by then = failed (PM2 went ahead)")),
        ),
        None => kv(&mut t, "timeout", "\"60s\"", None),
    }

    t.push_str("\n[reload]\n");
    kv(&mut t, "strategy", "\"parallel\"", Some("or \"rolling\""));

    t.push_str("\n[stop]\n");
    kv(
        &mut t,
        "signal",
        "\"SIGINT\"",
        Some("what PM2 sends; apps written for PM2 handle it"),
    );
    match &p.stop_timeout {
        Some((d, from)) => kv(&mut t, "timeout", &ms_text(*d), Some(from)),
        None => kv(
            &mut t,
            "timeout",
            "\"30s\"",
            Some(&format!(
                "no kill_timeout; PM2 waited {}s",
                PM2_KILL_TIMEOUT_MS as f64 / 1000.0
            )),
        ),
    }
    if let Some(key) = &p.stop_message {
        kv(&mut t, "message", "\"shutdown\"", Some(key));
    }

    t.push_str("\n[restart]\n");
    let default_max = Duration::from_secs(30);
    match &p.restart_delay {
        Some((d, from)) => {
            kv(&mut t, "delay", &ms_text(*d), Some(from));
            kv(&mut t, "max_delay", &ms_text((*d).max(default_max)), None);
        }
        None => {
            kv(&mut t, "delay", "\"100ms\"", None);
            kv(&mut t, "max_delay", &ms_text(default_max), None);
        }
    }
    match &p.restart_limit {
        Some((n, from)) => kv(&mut t, "limit", &n.to_string(), Some(from)),
        None => kv(&mut t, "limit", "5", None),
    }
    kv(&mut t, "window", "\"60s\"", None);

    t.push_str("\n[watchdog]\n");
    kv(
        &mut t,
        "timeout",
        "\"0s\"",
        Some("e.g. \"10s\": workers must send WATCHDOG=1 this often"),
    );

    if let Some((bytes, from)) = &p.memory {
        t.push_str("\n[limits]\n");
        kv(&mut t, "memory", &format_size(*bytes), Some(from));
    }
    t
}

/// NAME.toml, NAME.socket and NAME.service, the config validated.
pub(super) fn render(ctx: &Ctx<'_>, p: &Plan) -> Result<Vec<(PathBuf, String)>, String> {
    let req = ctx.req;
    let config_path = req.config_dir.join(format!("{}.toml", p.name));
    let text = config_text(ctx, p);
    let config = config::parse(&text, &config_path, &Overrides::default())
        .map_err(|e| format!("the generated config is invalid:\n{e}"))?;
    let unit_req = init::Request {
        name: p.name.clone(),
        listen: p.listen.clone(),
        workers: None,
        user: p.user.clone(),
        directory: Some(p.directory.clone()),
        unit_dir: req.unit_dir.clone(),
        config_dir: req.config_dir.clone(),
        sysusers_dir: init::DEFAULT_SYSUSERS_DIR.into(),
        command: p.command.clone(),
        force: req.force,
        baton: req.baton.clone(),
    };
    let addrs: Vec<&ListenAddress> = config.listen.iter().map(|l| &l.address).collect();
    Ok(vec![
        (config_path, text),
        (
            req.unit_dir.join(format!("{}.socket", p.name)),
            init::socket_unit(&p.name, &addrs),
        ),
        (
            req.unit_dir.join(format!("{}.service", p.name)),
            init::service_unit(&unit_req, config.stop.timeout),
        ),
    ])
}

/// `[limits] memory` in the largest binary unit that divides it.
fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes % size == 0 {
            return format!("\"{}{unit}\"", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_in_the_largest_unit_that_divides_them() {
        assert_eq!(format_size(300 << 20), "\"300MiB\"");
        assert_eq!(format_size(1 << 30), "\"1GiB\"");
        assert_eq!(format_size(1536 << 10), "\"1536KiB\"");
        assert_eq!(format_size(1000), "1000");
    }
}
