//! How the CLI writes to a terminal: colour and cursor escape codes (`--ansi`, `NO_COLOR`)
//! and the progress display (`--progress`), decided once from the flags at start, as docker
//! compose does. Nothing writes an escape code to a file or a pipe unless `--ansi always`.

use std::sync::OnceLock;

/// `--ansi`: whether to write escape codes (colour, live progress lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ansi {
    /// Only to a terminal, and not when `NO_COLOR` is set.
    #[default]
    Auto,
    /// Never.
    Never,
    /// Always, even to a file or a pipe.
    Always,
}

/// `--progress`: how `up`, `down`, `stop`, ... show what they do (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
    /// Live lines on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Live lines rewritten in place.
    Tty,
    /// One plain line per change.
    Plain,
    /// Nothing but errors and warnings.
    Quiet,
}

#[derive(Debug, Clone, Copy, Default)]
struct Settings {
    ansi: Ansi,
    progress: ProgressMode,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Records the flags; the first call wins (the CLI calls it once, before any output).
pub fn init(ansi: Ansi, progress: ProgressMode) {
    let _ = SETTINGS.set(Settings { ansi, progress });
}

fn settings() -> Settings {
    SETTINGS.get().copied().unwrap_or_default()
}

/// Whether to colour output going to a stream that `is_terminal` or not.
pub fn color(is_terminal: bool) -> bool {
    decide(
        settings().ansi,
        is_terminal,
        std::env::var_os("NO_COLOR").is_some(),
    )
}

fn decide(ansi: Ansi, is_terminal: bool, no_color: bool) -> bool {
    match ansi {
        Ansi::Always => true,
        Ansi::Never => false,
        Ansi::Auto => is_terminal && !no_color,
    }
}

/// The progress display for stderr: live lines need escape codes, so `--ansi never` (or a
/// non-terminal, `NO_COLOR`, `CI`) turns `auto` into plain lines.
pub fn progress_mode() -> ProgressMode {
    use std::io::IsTerminal;
    let s = settings();
    match s.progress {
        ProgressMode::Auto => {
            let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
            if color(tty) {
                ProgressMode::Tty
            } else {
                ProgressMode::Plain
            }
        }
        ProgressMode::Tty if s.ansi == Ansi::Never => ProgressMode::Plain,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_codes_only_where_asked() {
        assert!(decide(Ansi::Auto, true, false));
        assert!(!decide(Ansi::Auto, false, false), "not a terminal");
        assert!(!decide(Ansi::Auto, true, true), "NO_COLOR");
        assert!(!decide(Ansi::Never, true, false));
        assert!(decide(Ansi::Always, false, true));
    }
}
