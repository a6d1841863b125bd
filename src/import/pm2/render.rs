//! Rendering a [`Plan`] as NAME.toml, NAME.socket and NAME.service. The
//! config is written by src/config/render.rs, with comments that say which
//! PM2 key each value came from; the units come from `init`, so they are the very units
//! `baton init` writes.

use std::path::PathBuf;

use super::plan::{Ctx, PM2_KILL_TIMEOUT_MS, Plan, READY_DELAY, Runner, Workers};
use crate::config::render::{File, LimitsSection, Memory, NodeSection, Place};
use crate::config::{self, Dur, ListenAddress, Overrides};
use crate::systemd::init;

fn config_text(ctx: &Ctx<'_>, p: &Plan) -> Result<String, String> {
    let name = &p.name;
    let pm2_name = p.pm2_name.as_deref().unwrap_or(name);
    let written_by = format!(
        "`baton import-pm2` from the PM2 app\n{pm2_name:?} in {}",
        ctx.file.display()
    );
    let mut f = File::new(name, &written_by, p.command.clone(), &p.listen);
    let how = match &p.runner {
        Runner::Interpreter { name, why: Some(why) } => format!("run by {name} ({why})"),
        Runner::Interpreter { name, why: None } => format!("run by interpreter {name:?}"),
        Runner::Direct(why) => format!("run directly ({why})"),
    };
    f.note(
        None,
        Some("command"),
        Place::Above,
        format!("PM2 script {:?}, {how}", p.script),
    );
    f.directory = Some(p.directory.display().to_string());
    let dir_comment = match &p.directory_from {
        Some(key) => key.clone(),
        None => "the ecosystem file's directory (no cwd)".to_owned(),
    };
    f.note(None, Some("directory"), Place::Beside, dir_comment);
    match &p.workers {
        Some((Workers::Count(n), from)) => {
            f.workers = config::Workers::Count(usize::try_from(*n).unwrap_or(usize::MAX));
            f.note(None, Some("workers"), Place::Beside, from);
        }
        Some((Workers::Auto, from)) => {
            f.workers = config::Workers::Auto;
            f.note(None, Some("workers"), Place::Beside, format!("{from}; one per CPU"));
        }
        None => {}
    }
    f.note(Some("listen"), Some("address"), Place::Beside, &p.listen_from);
    f.environment = p.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();

    match (&p.node_ipc, p.node) {
        (Some(key), _) => {
            f.readiness.mode = "node-ipc";
            f.note(
                Some("readiness"),
                Some("mode"),
                Place::Beside,
                format!("{key}: the app calls process.send('ready')"),
            );
        }
        (None, true) => {
            f.readiness.mode = "node-ipc";
            f.note(
                Some("readiness"),
                Some("mode"),
                Place::Beside,
                "no wait_ready: ready when the app's server listens",
            );
        }
        (None, false) => {
            f.readiness.mode = "delay";
            f.readiness.delay = Some(Dur(READY_DELAY));
            f.note(
                Some("readiness"),
                Some("mode"),
                Place::Above,
                "PM2 counted the app online as soon as it started (no wait_ready); baton\n\
                 counts a worker ready once it has stayed up for `delay`. Better: have the\n\
                 app send READY=1 (mode = \"notify\") or process.send('ready') (\"node-ipc\").",
            );
        }
    }
    if p.node {
        f.node = Some(NodeSection {
            inherit_listen: true,
            wait_ready: p.node_ipc.is_some(),
            drain: true,
        });
        f.note(
            Some("node"),
            None,
            Place::Above,
            "baton's preload lets the app run unchanged (README \"Node apps without code\n\
             changes\"): its listen(PORT) uses the socket baton holds.",
        );
        let ready = if p.node_ipc.is_some() {
            "wait_ready: the app sends 'ready' itself"
        } else {
            "'ready' on the first 'listening'"
        };
        f.note(Some("node"), Some("wait_ready"), Place::Beside, ready);
        f.note(
            Some("node"),
            Some("drain"),
            Place::Beside,
            "on stop: keep-alive connections end after their next response",
        );
    }
    if let Some((d, from)) = &p.readiness_timeout {
        f.readiness.timeout = Dur(*d);
        let text = format!("{from}; not ready by then = failed (PM2 went ahead)");
        f.note(Some("readiness"), Some("timeout"), Place::Beside, text);
    }

    f.stop.signal = "SIGINT";
    let why = "what PM2 sends; apps written for PM2 handle it";
    f.note(Some("stop"), Some("signal"), Place::Beside, why);
    let timeout_comment = match &p.stop_timeout {
        Some((d, from)) => {
            f.stop.timeout = Dur(*d);
            from.clone()
        }
        None => format!("no kill_timeout; PM2 waited {}s", PM2_KILL_TIMEOUT_MS as f64 / 1000.0),
    };
    f.note(Some("stop"), Some("timeout"), Place::Beside, timeout_comment);
    if let Some(key) = &p.stop_message {
        f.stop.message = Some("shutdown".to_owned());
        f.note(Some("stop"), Some("message"), Place::Beside, key);
    }

    if let Some((d, from)) = &p.restart_delay {
        f.restart.delay = Dur(*d);
        f.restart.max_delay = f.restart.max_delay.max(Dur(*d));
        f.note(Some("restart"), Some("delay"), Place::Beside, from);
    }
    if let Some((n, from)) = &p.restart_limit {
        f.restart.limit = *n;
        f.note(Some("restart"), Some("limit"), Place::Beside, from);
    }

    if let Some((bytes, from)) = &p.memory {
        f.limits = Some(LimitsSection { memory: memory(*bytes) });
        f.note(Some("limits"), Some("memory"), Place::Beside, from);
    }
    f.render().map_err(|e| format!("cannot write the config as TOML: {e}"))
}

/// NAME.toml, NAME.socket and NAME.service, the config validated.
pub(super) fn render(ctx: &Ctx<'_>, p: &Plan) -> Result<Vec<(PathBuf, String)>, String> {
    let req = ctx.req;
    let config_path = req.config_dir.join(format!("{}.toml", p.name));
    let text = config_text(ctx, p)?;
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
        systemd: req.systemd,
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
            init::service_unit(&unit_req, &config),
        ),
    ])
}

/// `[limits] memory` in the largest binary unit that divides it.
fn memory(bytes: u64) -> Memory {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes % size == 0 {
            return Memory::Text(format!("{}{unit}", bytes / size));
        }
    }
    Memory::Bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_in_the_largest_unit_that_divides_them() {
        let text = |bytes| match memory(bytes) {
            Memory::Text(t) => t,
            Memory::Bytes(b) => b.to_string(),
        };
        assert_eq!(text(300 << 20), "300MiB");
        assert_eq!(text(1 << 30), "1GiB");
        assert_eq!(text(1536 << 10), "1536KiB");
        assert!(matches!(memory(1000), Memory::Bytes(1000)));
    }
}
