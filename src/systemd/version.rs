//! Which systemd the units are written for (README "systemd versions").
//! `baton init` and `baton import-pm2` ask `systemctl --version` on the
//! machine they run on; `--systemd-version N` writes units for another host.

use std::fmt;
use std::str::FromStr;

/// A systemd version: the number in `systemd 257 (257.13-1~deb13u1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SystemdVersion(pub u32);

impl SystemdVersion {
    /// The oldest systemd baton is tested on (Debian 12), and what units are
    /// written for when the version cannot be found out.
    pub const BASELINE: SystemdVersion = SystemdVersion(252);
    /// `ProtectControlGroups=private`: a cgroup namespace of the unit's own,
    /// in which the subtree `Delegate=yes` hands to baton stays writable.
    pub const PRIVATE_CGROUPS: SystemdVersion = SystemdVersion(257);

    /// The version `systemctl --version` reports on this machine.
    pub fn detect() -> Result<SystemdVersion, String> {
        let out = std::process::Command::new("systemctl")
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `systemctl --version`: {e}"))?;
        if !out.status.success() {
            return Err(format!("`systemctl --version` failed ({})", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        parse_version_output(&text).ok_or_else(|| {
            format!(
                "`systemctl --version` printed no version: {:?}",
                text.lines().next().unwrap_or("")
            )
        })
    }
}

/// The version in `systemctl --version`'s first line.
fn parse_version_output(text: &str) -> Option<SystemdVersion> {
    let first = text.lines().next()?;
    let number = first.strip_prefix("systemd ")?.split_whitespace().next()?;
    number.parse().ok().map(SystemdVersion)
}

impl FromStr for SystemdVersion {
    type Err = String;

    /// `257`, or the whole `systemd 257 (…)` line pasted from another host.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let number = s.strip_prefix("systemd ").unwrap_or(s);
        let number = number.split_whitespace().next().unwrap_or("");
        match number.parse::<u32>() {
            Ok(n) if (200..10_000).contains(&n) => Ok(SystemdVersion(n)),
            _ => Err(format!(
                "{s:?} is not a systemd version: give the number `systemctl --version` prints on the target host, like 252 or 257"
            )),
        }
    }
}

impl fmt::Display for SystemdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "systemd {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_first_line_of_systemctl_version() {
        let debian12 = "systemd 252 (252.38-1~deb12u1)\n+PAM +AUDIT +SELINUX +APPARMOR\n";
        let debian13 = "systemd 257 (257.13-1~deb13u1)\n+PAM +AUDIT\n";
        assert_eq!(parse_version_output(debian12), Some(SystemdVersion(252)));
        assert_eq!(parse_version_output(debian13), Some(SystemdVersion(257)));
        assert_eq!(parse_version_output("bash: systemctl: not found"), None);
        assert_eq!(parse_version_output(""), None);
    }

    #[test]
    fn the_flag_takes_a_number_or_the_pasted_line() {
        assert_eq!("257".parse(), Ok(SystemdVersion(257)));
        assert_eq!(" systemd 252 (252.38-1~deb12u1)".parse(), Ok(SystemdVersion(252)));
        for bad in ["", "latest", "25", "-1", "252.38", "99999"] {
            let err = bad.parse::<SystemdVersion>().unwrap_err();
            assert!(err.contains("not a systemd version"), "{bad}: {err}");
        }
    }
}
