//! The rules that span several keys, the command line's overrides, and the
//! defaults: from what the [`Reader`] found to a finished [`Config`].

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    Config, ConfigError, ListenSpec, Overrides, Readiness, ReadinessMode, Restart, Stop,
    raw::{Raw, Reader},
    types::{ModeKind, Name, Workers, check_name, is_name_char},
};

/// Where a config came from, for defaults that depend on it.
pub enum Origin<'p> {
    File(&'p Path),
    Quick,
}

/// Apply the overrides and the cross-key rules, then either the finished
/// config or every problem found along the way, in file order.
pub fn validate(
    reader: &mut Reader<'_>,
    raw: Raw,
    origin: Origin<'_>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let top = raw.top.value;

    // command
    let command = if !overrides.command.is_empty() {
        if overrides.command[0].is_empty() {
            reader.report_cli("the command's program (the first word after --) is empty");
        }
        if overrides.command.iter().any(|arg| arg.contains('\0')) {
            reader.report_cli("the command contains a NUL character");
        }
        overrides.command.clone()
    } else if let Some(command) = top.command {
        argv_of(reader, command, "command")
    } else {
        match origin {
            // An invalid `command` has been reported already.
            Origin::File(_) if raw.command_seen => {}
            Origin::File(_) => reader.report(
                None,
                r#"missing required key "command" in the top level; add the program and its arguments, like command = ["node", "server.js"]"#,
            ),
            Origin::Quick => reader.report_cli(
                "no command given: write it after --, as in `baton run -- node server.js`, or use a config file",
            ),
        }
        Vec::new()
    };

    // name
    let name = if let Some(name) = &overrides.name {
        if let Err(why) = name.parse::<Name>() {
            reader.report_cli(format!("name {why}"));
        }
        name.clone()
    } else if let Some(name) = top.name {
        name.0
    } else {
        match origin {
            Origin::File(path) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Err(why) = check_name(&stem) {
                    reader.report(
                        None,
                        format!(
                            "the name defaults to the file's stem, {stem:?}, which {why}; set name = \"...\" in the top level"
                        ),
                    );
                }
                stem
            }
            Origin::Quick => command
                .first()
                .map(|program| name_from_program(program))
                .unwrap_or_default(),
        }
    };

    // directory
    let directory = match (&origin, top.directory) {
        (Origin::File(path), Some(dir)) => {
            let base = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let joined = base.join(dir.0);
            Some(std::path::absolute(&joined).unwrap_or(joined))
        }
        _ => None,
    };

    // workers
    let workers = overrides.workers.or(top.workers).map_or(1, Workers::count);

    // listen; names are at most 247 characters, so this is a valid fd name
    let default_fd_name = format!("{name}.socket");
    // The position of each entry; `None` for the command line.
    let mut listen: Vec<(ListenSpec, Option<std::ops::Range<usize>>)> = Vec::new();
    if overrides.listen.is_empty() {
        for entry in raw.listen {
            let Some(address) = entry.address else { continue };
            let span = address.span();
            let spec = ListenSpec {
                name: entry.name.map_or_else(|| default_fd_name.clone(), |n| n.0),
                address: address.into_inner(),
            };
            listen.push((spec, Some(span)));
        }
    } else {
        for address in &overrides.listen {
            let spec = ListenSpec {
                name: default_fd_name.clone(),
                address: address.clone(),
            };
            listen.push((spec, None));
        }
    }
    for (i, (spec, span)) in listen.iter().enumerate() {
        let Some((_, first)) = listen[..i].iter().find(|(l, _)| l.address == spec.address) else {
            continue;
        };
        match span {
            Some(span) => {
                let also = first
                    .as_ref()
                    .map(|s| format!(" (first at line {})", reader.positions.at(s.start).0))
                    .unwrap_or_default();
                reader.report(
                    Some(span.clone()),
                    format!(
                        "[[listen]] address \"{}\" is listed twice{also}; each socket can be bound once",
                        spec.address
                    ),
                );
            }
            None => reader.report_cli(format!(
                "--listen {} is given twice; each socket can be bound once",
                spec.address
            )),
        }
    }

    // node, before readiness: inherit_listen changes readiness's default
    let node_raw = raw.node.value;
    let inherit_listen = node_raw.inherit_listen.as_ref().is_some_and(|b| *b.get_ref());
    let mode_invalid = raw.readiness.failed("mode");
    let pattern_invalid = raw.readiness.failed("pattern");
    let readiness = raw.readiness.value;
    let mode_span = readiness.mode.as_ref().map(|m| m.span());
    let given_mode = readiness.mode.as_ref().map(|m| *m.get_ref());
    let node = node_of(reader, node_raw, inherit_listen, given_mode, mode_invalid);

    // readiness
    let default_mode = if inherit_listen {
        ModeKind::NodeIpc
    } else {
        ModeKind::Notify
    };
    let mode_kind = given_mode.unwrap_or(default_mode);
    let how = if readiness.mode.is_some() {
        "is"
    } else if inherit_listen {
        "defaults (with [node] inherit_listen) to"
    } else {
        "defaults to"
    };
    let delay = readiness.delay.as_ref().map(|d| d.get_ref().0);
    let pattern = readiness.pattern.as_ref().map(|p| p.get_ref().clone());
    let mode = match mode_kind {
        ModeKind::Notify => ReadinessMode::Notify,
        ModeKind::NodeIpc => ReadinessMode::NodeIpc,
        ModeKind::Delay => ReadinessMode::Delay(delay.unwrap_or(Duration::from_secs(1))),
        ModeKind::Log => match pattern {
            Some(p) => ReadinessMode::Log(p),
            None => {
                if !pattern_invalid {
                    reader.report(
                        mode_span,
                        "[readiness] mode = \"log\" needs a pattern: the regular expression a line of the worker's output must match, e.g. pattern = \"Listening on\"",
                    );
                }
                ReadinessMode::Notify
            }
        },
    };
    if let Some(pattern) = readiness
        .pattern
        .as_ref()
        .filter(|_| mode_kind != ModeKind::Log && !mode_invalid)
    {
        reader.report(
            Some(pattern.span()),
            format!(
                "[readiness] pattern is only used with mode = \"log\", but mode {how} {:?}; set mode = \"log\" or remove pattern",
                mode_kind.as_str()
            ),
        );
    }
    if let Some(delay) = readiness
        .delay
        .filter(|_| mode_kind != ModeKind::Delay && !mode_invalid)
    {
        reader.report(
            Some(delay.span()),
            format!(
                "[readiness] delay is only used with mode = \"delay\", but mode {how} {:?}; set mode = \"delay\" or remove delay",
                mode_kind.as_str()
            ),
        );
    }
    let mut timeout = Readiness::default().timeout;
    if let Some(t) = readiness.timeout {
        if t.get_ref().0.is_zero() {
            reader.report(
                Some(t.span()),
                "[readiness] timeout must be greater than 0: a worker needs some time to become ready",
            );
        } else {
            timeout = t.get_ref().0;
        }
    }
    let readiness = Readiness {
        mode,
        timeout,
        settle: readiness.settle.map_or(Duration::ZERO, |d| d.0),
        notify_socket: readiness.notify_socket.unwrap_or_default(),
    };

    // stop
    let stop = raw.stop.value;
    if let Some(message) = stop
        .message
        .as_ref()
        .filter(|_| mode_kind != ModeKind::NodeIpc && !mode_invalid)
    {
        reader.report(
            Some(message.span()),
            format!(
                "[stop] message is sent over Node's IPC channel, so it needs [readiness] mode = \"node-ipc\", but mode {how} {:?}",
                mode_kind.as_str()
            ),
        );
    }
    let stop_default = Stop::default();
    let stop = Stop {
        signal: stop.signal.map_or(stop_default.signal, |s| s.0),
        timeout: stop.timeout.map_or(stop_default.timeout, |t| t.0),
        message: stop.message.map(|m| m.into_inner().0),
    };

    // restart
    let mut backoff_invalid = raw.restart.failed("delay") || raw.restart.failed("max_delay");
    let restart = raw.restart.value;
    let mut positive = |value: &Option<toml::Spanned<super::types::Dur>>, label: &str, why: &str| {
        let zero = value.as_ref().filter(|d| d.get_ref().0.is_zero());
        if let Some(zero) = zero {
            reader.report(
                Some(zero.span()),
                format!("[restart] {label} must be greater than 0: {why}"),
            );
        }
        zero.is_some()
    };
    backoff_invalid |= positive(
        &restart.delay,
        "delay",
        "the backoff doubles it, and doubling 0 never waits",
    );
    positive(&restart.window, "window", "crashes are counted within it");
    let default = Restart::default();
    let delay = restart.delay.as_ref().map_or(default.delay, |d| d.get_ref().0);
    let max_delay = restart.max_delay.as_ref().map_or(default.max_delay, |d| d.get_ref().0);
    if max_delay < delay && !backoff_invalid {
        let (span, which) = match (&restart.max_delay, &restart.delay) {
            (Some(m), _) => (Some(m.span()), ""),
            (None, Some(d)) => (Some(d.span()), ", the default"),
            (None, None) => (None, ""),
        };
        reader.report(
            span,
            format!(
                "[restart] max_delay ({}{which}) must be at least [restart] delay ({})",
                humantime::format_duration(max_delay),
                humantime::format_duration(delay)
            ),
        );
    }
    let restart = Restart {
        delay,
        max_delay,
        limit: restart.limit.map_or(default.limit, |l| l.0),
        window: restart
            .window
            .map(|w| w.get_ref().0)
            .filter(|w| !w.is_zero())
            .unwrap_or(default.window),
    };

    // canary
    let canary = raw.canary.value;
    let canary_default = super::Canary::default();
    let mut check_timeout = canary_default.check_timeout;
    if let Some(t) = canary.check_timeout {
        if t.get_ref().0.is_zero() {
            reader.report(
                Some(t.span()),
                "[canary] check_timeout must be greater than 0: the check needs some time to run",
            );
        } else {
            check_timeout = t.get_ref().0;
        }
    }
    let canary = super::Canary {
        hold: canary.hold.map(|h| h.0),
        check: canary.check.map(|c| argv_of(reader, c, "[canary] check")),
        check_timeout,
    };

    let metrics = metrics_of(reader, raw.metrics.value, &listen);

    if !reader.problems.is_empty() {
        let mut problems = std::mem::take(&mut reader.problems);
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(ConfigError::Invalid(problems));
    }

    Ok(Config {
        name,
        source: match origin {
            Origin::File(path) => Some(path.to_path_buf()),
            Origin::Quick => None,
        },
        command,
        directory,
        workers,
        environment: raw.environment,
        listen: listen.into_iter().map(|(spec, _)| spec).collect(),
        readiness,
        reload: raw.reload.value.strategy.unwrap_or_default(),
        stop,
        restart,
        watchdog: raw.watchdog.value.timeout.map(|t| t.0).filter(|d| !d.is_zero()),
        memory_limit: raw.limits.value.memory.map(|m| m.0),
        canary,
        metrics,
        node,
    })
}

/// `[node]`. The preload tells readiness over Node's IPC channel (Node
/// cannot send the unix datagrams of sd_notify), so `inherit_listen`
/// implies `[readiness] mode = "node-ipc"` unless the mode is set: to
/// "node-ipc", or to "delay" (ready after the delay; the preload then only
/// maps listen()). "notify" is an error. The other keys work through the
/// preload and need `inherit_listen`.
fn node_of(
    reader: &mut Reader<'_>,
    raw: super::raw::Node,
    inherit_listen: bool,
    mode: Option<ModeKind>,
    mode_invalid: bool,
) -> super::Node {
    let default = super::Node::default();
    if let (Some(on), Some(ModeKind::Notify)) = (raw.inherit_listen.as_ref().filter(|b| *b.get_ref()), mode) {
        reader.report(
            Some(on.span()),
            "[node] inherit_listen tells readiness over Node's IPC channel (Node cannot send sd_notify datagrams), \
             but [readiness] mode is \"notify\"; set mode = \"node-ipc\" (or remove it: inherit_listen implies it), or \"delay\"",
        );
    }
    let needs_preload = |reader: &mut Reader<'_>, key: &str, span: std::ops::Range<usize>| {
        reader.report(
            Some(span),
            format!("[node] {key} works through baton's preload, which only inherit_listen = true loads; set it, or remove {key}"),
        );
    };
    for (key, value) in [("wait_ready", &raw.wait_ready), ("drain", &raw.drain)] {
        if let Some(v) = value.as_ref().filter(|v| *v.get_ref() && !inherit_listen) {
            needs_preload(reader, key, v.span());
        }
    }
    if let Some(g) = raw.drain_grace.as_ref().filter(|_| !inherit_listen) {
        needs_preload(reader, "drain_grace", g.span());
    }
    let wait_ready = raw.wait_ready.as_ref().is_some_and(|b| *b.get_ref());
    if let Some(w) = raw
        .wait_ready
        .as_ref()
        .filter(|w| *w.get_ref() && inherit_listen && !mode_invalid)
    {
        if mode == Some(ModeKind::Delay) {
            reader.report(
                Some(w.span()),
                "[node] wait_ready = true means the app sends 'ready' over Node's IPC channel, but [readiness] mode is \"delay\"; set mode = \"node-ipc\" (or remove it)",
            );
        }
    }
    let mut drain_grace = default.drain_grace;
    if let Some(g) = raw.drain_grace {
        let d = g.get_ref().0;
        if d.is_zero() || d > Duration::from_secs(60) {
            reader.report(
                Some(g.span()),
                "[node] drain_grace must be greater than 0 and at most 60s: a connection idle this long during a drain is closed (1s to 2s is enough for any client that is still sending)",
            );
        } else {
            drain_grace = d;
        }
    }
    super::Node {
        inherit_listen,
        wait_ready,
        drain: raw.drain.is_some_and(|b| b.into_inner()),
        drain_grace,
    }
}

/// `address` would take `port`'s place: the same port on the same or a
/// wildcard IP.
fn same_port(address: &super::ListenAddress, other: std::net::SocketAddr) -> bool {
    match address {
        super::ListenAddress::Tcp(a) => {
            a.port() == other.port() && (a.ip() == other.ip() || a.ip().is_unspecified() || other.ip().is_unspecified())
        }
        _ => false,
    }
}

/// `[metrics]`: an absolute directory, and a TCP address that is not one
/// of the app's own sockets (a scrape must never reach the app).
fn metrics_of(
    reader: &mut Reader<'_>,
    raw: super::raw::Metrics,
    app: &[(ListenSpec, Option<std::ops::Range<usize>>)],
) -> super::Metrics {
    let mut metrics = super::Metrics::default();
    if let Some(dir) = raw.textfile {
        let span = Some(dir.span());
        let path = PathBuf::from(dir.get_ref());
        if dir.get_ref().contains('\0') {
            reader.report(span, "[metrics] textfile contains a NUL character");
        } else if !path.is_absolute() {
            reader.report(
                span,
                format!(
                    "[metrics] textfile must be an absolute directory (node_exporter's is /var/lib/prometheus/node-exporter), found {:?}",
                    dir.get_ref()
                ),
            );
        } else {
            metrics.textfile = Some(path);
        }
    }
    if let Some(addr) = raw.listen {
        let span = Some(addr.span());
        match addr.get_ref().parse::<std::net::SocketAddr>() {
            Err(_) => reader.report(
                span,
                format!(
                    "[metrics] listen must be an IP address and port such as \"127.0.0.1:9464\" or \"[::1]:9464\", found {:?}",
                    addr.get_ref()
                ),
            ),
            Ok(a) if app.iter().any(|(l, _)| same_port(&l.address, a)) => reader.report(
                span,
                format!("[metrics] listen = \"{a}\" is one of the app's [[listen]] sockets; give the metrics an address of their own"),
            ),
            Ok(a) => metrics.listen = Some(a),
        }
    }
    metrics
}

/// An argv array (`command`, `[canary] check`), each bad item reported at
/// its own position as `key[i]`.
fn argv_of(reader: &mut Reader<'_>, command: super::types::Command, key: &str) -> Vec<String> {
    let mut argv = Vec::new();
    for (i, arg) in command.0.into_iter().enumerate() {
        let span = Some(arg.span());
        match arg.get_ref() {
            toml::Value::String(s) if s.is_empty() && i == 0 => {
                reader.report(span, format!("{key}[0], the program, is empty"));
            }
            toml::Value::String(s) if s.contains('\0') => {
                reader.report(span, format!("{key}[{i}] contains a NUL character"));
            }
            toml::Value::String(s) => argv.push(s.clone()),
            _ => {
                let found = reader.text_at(arg.span());
                reader.report(span, format!("{key}[{i}] must be a string, found {found}; quote it"));
            }
        }
    }
    argv
}

/// The quick-mode name: the program's file name, with characters that are
/// not allowed in names replaced, since the user never chose it.
fn name_from_program(program: &str) -> String {
    let base = Path::new(program)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cleaned: String = base.chars().map(|c| if is_name_char(c) { c } else { '_' }).collect();
    if check_name(&cleaned).is_ok() {
        cleaned
    } else {
        "baton".to_owned()
    }
}
