//! Man pages and shell completions, generated from the command line's own
//! definition so they never disagree with `--help`. `baton generate-docs
//! DIR` (hidden) writes them; the package build runs it.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `DIR/man/baton.1`, `DIR/man/baton-SUBCOMMAND.1` and
/// `DIR/completions/{baton.bash,_baton,baton.fish}`. Returns what it wrote.
pub fn generate(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(&man)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        written.push(clap_complete::generate_to(shell, &mut cmd, "baton", &completions)?);
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_a_page_per_subcommand_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for page in [
            "baton.1",
            "baton-run.1",
            "baton-reload.1",
            "baton-status.1",
            "baton-check.1",
            "baton-init.1",
        ] {
            assert!(names.contains(&page.to_owned()), "{page} missing from {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("generate")),
            "the hidden command has no page"
        );
        for c in ["baton.bash", "_baton", "baton.fish"] {
            assert!(names.contains(&c.to_owned()), "{c} missing");
        }
        let reload = std::fs::read_to_string(dir.path().join("man/baton-reload.1")).unwrap();
        assert!(reload.contains("Exit codes"), "{reload}");
        let bash = std::fs::read_to_string(dir.path().join("completions/baton.bash")).unwrap();
        assert!(bash.contains("reload"));
    }
}
