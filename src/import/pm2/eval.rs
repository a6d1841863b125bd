//! Evaluating the ecosystem file: it is JavaScript that may compute its
//! values, so node evaluates it, as PM2 does, and baton reads the result as
//! JSON.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::keys::{Remark, describe, top_level_reason};
use crate::exit::{EX_FAILED, EX_USAGE};

/// Why the file gave no apps to look at.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is YAML, which baton does not read; convert it to ecosystem.config.js or .json (the keys are the same)"
    )]
    Yaml { path: std::path::PathBuf },
    #[error("node is not installed, or not in PATH; it is needed to evaluate {path}, as PM2 does (install nodejs)")]
    NodeMissing { path: std::path::PathBuf },
    #[error("cannot run node")]
    NodeSpawn(#[source] std::io::Error),
    #[error("node could not evaluate {path} ({status}):\n{stderr}")]
    Evaluate {
        path: std::path::PathBuf,
        status: String,
        stderr: String,
    },
    #[error("evaluating {path} did not print JSON (does the file call process.exit()?)")]
    NotJson {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} exports {found}; expected module.exports = {{ apps: [...] }}, an array of apps, or one app with a script"
    )]
    Shape { path: std::path::PathBuf, found: String },
    #[error("{path} has no apps")]
    NoApps { path: std::path::PathBuf },
}

impl EvalError {
    /// 1 when the file itself is broken, 2 when baton could not get that far.
    pub fn exit_code(&self) -> i32 {
        match self {
            EvalError::Evaluate { .. }
            | EvalError::NotJson { .. }
            | EvalError::Shape { .. }
            | EvalError::NoApps { .. } => EX_FAILED,
            EvalError::Read { .. }
            | EvalError::Yaml { .. }
            | EvalError::NodeMissing { .. }
            | EvalError::NodeSpawn(_) => EX_USAGE,
        }
    }
}

/// Requires the file and prints it as JSON. Whatever the file itself prints
/// goes to stderr, so it cannot corrupt the JSON; `process.exit` ends a file
/// that left timers or sockets open.
const EVALUATE_JS: &str = r#"
const file = process.argv[1];
const out = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);
const done = (m) => { out(JSON.stringify(m === undefined ? null : m) ?? 'null'); process.exit(0); };
const fail = (e) => { process.stderr.write(String((e && e.stack) || e) + '\n'); process.exit(1); };
try {
  if (file.endsWith('.mjs')) {
    import(require('url').pathToFileURL(file)).then((m) => done(m.default ?? m), fail);
  } else {
    done(require(file));
  }
} catch (e) {
  fail(e);
}
"#;

/// What the file (absolute) exports. Runs node in the file's directory,
/// `base`, so that a file using process.cwd() sees what it sees when
/// `pm2 start` is run next to it.
pub(super) fn evaluate(file: &Path, base: &Path) -> Result<Value, EvalError> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(EvalError::Read {
                path: file.to_owned(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        Err(source) => {
            return Err(EvalError::Read {
                path: file.to_owned(),
                source,
            });
        }
    }
    if matches!(file.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
        return Err(EvalError::Yaml { path: file.to_owned() });
    }
    let output = Command::new("node")
        .arg("-e")
        .arg(EVALUATE_JS)
        .arg("--")
        .arg(file)
        .current_dir(base)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EvalError::NodeMissing { path: file.to_owned() },
            _ => EvalError::NodeSpawn(e),
        })?;
    let stderr = clean_node_stderr(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(EvalError::Evaluate {
            path: file.to_owned(),
            status: output.status.to_string(),
            stderr: stderr
                .lines()
                .map(|l| if l.is_empty() { String::new() } else { format!("  {l}") })
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    for line in stderr.lines() {
        eprintln!("node: {line}");
    }
    serde_json::from_slice(&output.stdout).map_err(|source| EvalError::NotJson {
        path: file.to_owned(),
        source,
    })
}

/// node's error output without the frames inside node itself and the
/// version banner: what is left points into the ecosystem file.
fn clean_node_stderr(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            let internal_frame = t.starts_with("at ")
                && (t.contains("(node:")
                    || t.starts_with("at node:")
                    || t.contains("[eval]")
                    || t.contains("(<anonymous>)"));
            let eval_require = t.starts_with("- ") && t.ends_with("[eval]");
            !(internal_frame || eval_require || t.starts_with("Node.js v"))
        })
        .collect();
    let start = kept.iter().position(|l| !l.trim().is_empty()).unwrap_or(kept.len());
    let end = kept.iter().rposition(|l| !l.trim().is_empty()).map_or(start, |i| i + 1);
    kept[start..end]
        .iter()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The apps, in file order, and remarks about the file's other top-level keys.
pub(super) fn apps_of<'v>(exported: &'v Value, file: &Path) -> Result<(Vec<&'v Value>, Vec<Remark>), EvalError> {
    let shape = || EvalError::Shape {
        path: file.to_owned(),
        found: describe(exported),
    };
    let mut remarks = Vec::new();
    let apps: Vec<&Value> = match exported {
        Value::Array(apps) => apps.iter().collect(),
        Value::Object(top) if top.contains_key("apps") => {
            for key in top.keys().filter(|k| *k != "apps") {
                remarks.push(Remark::not_mapped(key, top_level_reason(key)));
            }
            match &top["apps"] {
                Value::Array(apps) => apps.iter().collect(),
                app @ Value::Object(_) => vec![app],
                _ => return Err(shape()),
            }
        }
        Value::Object(app) if app.contains_key("script") || app.contains_key("exec") => vec![exported],
        _ => return Err(shape()),
    };
    if apps.is_empty() {
        return Err(EvalError::NoApps { path: file.to_owned() });
    }
    Ok((apps, remarks))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn node_internals_are_dropped_from_its_errors() {
        let raw = "/x/eco.js:4\n    script: 'x'\n    ^^^^^^\n\nSyntaxError: Unexpected identifier 'script'\n    at wrapSafe (node:internal/modules/cjs/loader:1464:18)\n    at [eval]:1:7\n    at node:internal/process/execution:118:14\n\nNode.js v20.20.2\n";
        assert_eq!(
            clean_node_stderr(raw),
            "/x/eco.js:4\n    script: 'x'\n    ^^^^^^\n\nSyntaxError: Unexpected identifier 'script'"
        );
        let raw = "ReferenceError: nope is not defined\n    at Object.<anonymous> (/x/eco.js:1:37)\n    at Module._compile (node:internal/modules/cjs/loader:1521:14)\n";
        assert_eq!(
            clean_node_stderr(raw),
            "ReferenceError: nope is not defined\n    at Object.<anonymous> (/x/eco.js:1:37)"
        );
    }

    #[test]
    fn the_file_exports_apps_an_array_or_one_app() {
        let file = Path::new("/x/eco.js");
        let top = json!({"apps": [{"script": "a.js"}], "deploy": {}});
        let (apps, remarks) = apps_of(&top, file).unwrap();
        assert_eq!(apps, vec![&json!({"script": "a.js"})]);
        assert_eq!(remarks.len(), 1);
        assert!(remarks[0].text.starts_with("`pm2 deploy` is not part of baton"));
        let one = json!({"exec": "a.js"});
        assert_eq!(apps_of(&one, file).unwrap().0, vec![&one]);
        assert!(matches!(apps_of(&json!([]), file), Err(EvalError::NoApps { .. })));
        assert!(matches!(apps_of(&json!(3), file), Err(EvalError::Shape { .. })));
        assert!(matches!(
            apps_of(&json!({"apps": 3}), file),
            Err(EvalError::Shape { .. })
        ));
    }
}
