//! PM2's value formats: ports, milliseconds, sizes and word lists, read as
//! PM2 reads them, and paths cleaned without the filesystem.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::keys::{Remark, describe};

/// `args` and `node_args`: an array, or a string split like a shell
/// would (quotes group words and are removed; no escapes, no expansion).
pub(super) fn words(key: &str, value: &Value, remarks: &mut Vec<Remark>) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(split_words(s)),
        Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    Value::Number(n) => out.push(n.to_string()),
                    Value::Bool(b) => out.push(b.to_string()),
                    _ => {
                        remarks.push(Remark::not_mapped(
                            key,
                            format!("{} is not a list of strings", describe(value)),
                        ));
                        return None;
                    }
                }
            }
            Some(out)
        }
        Value::Null => None,
        _ => {
            remarks.push(Remark::not_mapped(
                key,
                format!("{} is not a string or a list of strings", describe(value)),
            ));
            None
        }
    }
}

fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A port number, as PM2 would read it (a number or a string of digits).
pub(super) fn port_of(value: &Value) -> Option<u16> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
    .filter(|p| *p != 0)
}

/// Milliseconds: a non-negative number, or a string of one.
pub(super) fn millis(value: &Value) -> Option<u64> {
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    (0.0..1e15).contains(&n).then_some(n as u64)
}

/// PM2's `max_memory_restart`: bytes, or digits then K, M or G, which PM2
/// reads as powers of 1024. PM2 ignores anything else.
pub(super) fn pm2_size(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_f64().filter(|n| n.is_finite() && *n >= 0.0).map(|n| n as u64),
        Value::String(s) => {
            let (digits, shift) = match s.as_bytes().last() {
                Some(b'K') => (&s[..s.len() - 1], 10),
                Some(b'M') => (&s[..s.len() - 1], 20),
                Some(b'G') => (&s[..s.len() - 1], 30),
                _ => (s.as_str(), 0),
            };
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            digits.parse::<u64>().ok()?.checked_mul(1 << shift)
        }
        _ => None,
    }
}

/// `a/./b/../c` as `a/c`, without touching the filesystem.
pub(super) fn clean_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_are_read_as_pm2_reads_them() {
        assert_eq!(pm2_size(&json!("300M")), Some(300 << 20));
        assert_eq!(pm2_size(&json!("1G")), Some(1 << 30));
        assert_eq!(pm2_size(&json!("200K")), Some(200 << 10));
        assert_eq!(pm2_size(&json!("1000")), Some(1000));
        assert_eq!(pm2_size(&json!(1073741824)), Some(1 << 30));
        // PM2's regex is ^\d+(G|M|K)?$; it ignores the rest, and so does baton.
        assert_eq!(pm2_size(&json!("300MB")), None);
        assert_eq!(pm2_size(&json!("300m")), None);
        assert_eq!(pm2_size(&json!("1.5G")), None);
    }

    #[test]
    fn string_args_split_like_a_shell() {
        assert_eq!(
            split_words("  --port 3000 --name 'my app' --x=\"a b\"c "),
            vec!["--port", "3000", "--name", "my app", "--x=a bc"]
        );
        assert_eq!(split_words("''"), vec![""]);
        assert!(split_words("   ").is_empty());
    }

    #[test]
    fn paths_are_cleaned_lexically() {
        assert_eq!(
            clean_path(Path::new("/srv/app/./x/../current")),
            PathBuf::from("/srv/app/current")
        );
    }

    #[test]
    fn ports_and_millis() {
        assert_eq!(port_of(&json!(3000)), Some(3000));
        assert_eq!(port_of(&json!("3000")), Some(3000));
        assert_eq!(port_of(&json!("0")), None);
        assert_eq!(port_of(&json!(70000)), None);
        assert_eq!(port_of(&json!("http")), None);
        assert_eq!(millis(&json!(1600)), Some(1600));
        assert_eq!(millis(&json!("250")), Some(250));
        assert_eq!(millis(&json!(-1)), None);
    }
}
