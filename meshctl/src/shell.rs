//! Shell completions (bash, zsh, fish, ...) and man pages, generated from the CLI definition
//! itself (clap_complete, clap_mangen), so they never fall behind a new flag.
//!
//! ```sh
//! meshctl completion bash > ~/.local/share/bash-completion/completions/meshctl
//! meshctl completion zsh  > "${fpath[1]}/_meshctl"
//! meshctl completion fish > ~/.config/fish/completions/meshctl.fish
//! meshctl man --dir ~/.local/share/man/man1      # meshctl.1 and meshctl-<command>.1
//! ```

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell`.
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = visible_command();
    let mut out = Vec::new();
    // Into a buffer: the generators panic on a write error, and stdout may be a closed pipe.
    clap_complete::generate(shell, &mut cmd, "meshctl", &mut out);
    out
}

/// The CLI without its hidden subcommands (the internal `__control-plane`), which the
/// completion generators would otherwise offer.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("meshctl")
        .bin_name("meshctl")
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd.version(env!("CARGO_PKG_VERSION"))
}

/// The man pages: `meshctl.1`, then `meshctl-<command>.1` per visible subcommand, as
/// `(file name, roff text)`.
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = visible_command();
    // Building names each subcommand `meshctl-<name>` (its page's title) and `meshctl <name>`
    // (its synopsis).
    cmd.build();
    let mut pages = Vec::new();
    let mut top = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut top)?;
    pages.push(("meshctl.1".to_string(), top));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub
            .get_display_name()
            .map_or_else(|| format!("meshctl-{}", sub.get_name()), str::to_string);
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone()).render(&mut page)?;
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// `meshctl man`: `meshctl.1` on stdout, or every page into `dir`.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let pages = man_pages()?;
    match dir {
        None => std::io::stdout().lock().write_all(&pages[0].1)?,
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, text) in &pages {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!("{} man page(s) in {}", pages.len(), dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_every_command_and_compose_flag() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let text = String::from_utf8(completion(shell)).unwrap();
            for word in ["restart", "profile", "no-log-prefix", "force-recreate"] {
                assert!(text.contains(word), "{shell:?} completion lacks {word}");
            }
            assert!(
                !text.contains("__control-plane"),
                "{shell:?}: the internal command is offered"
            );
        }
    }

    #[test]
    fn a_man_page_per_command() {
        let pages = man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "meshctl.1",
            "meshctl-up.1",
            "meshctl-logs.1",
            "meshctl-stop.1",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("__control-plane")));
        let logs = String::from_utf8(
            pages
                .iter()
                .find(|p| p.0 == "meshctl-logs.1")
                .unwrap()
                .1
                .clone(),
        )
        .unwrap();
        assert!(logs.contains(".TH meshctl-logs"), "{logs}");
        assert!(logs.contains("no\\-log\\-prefix"), "{logs}");
    }
}
