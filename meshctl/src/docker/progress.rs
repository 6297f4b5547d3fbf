//! Progress output, docker compose's way: on a terminal one live line per object, rewritten in
//! place as its state changes; otherwise (CI, pipes) one plain line per change.

use std::io::Write;
use std::sync::Mutex;

/// Where progress goes (stderr).
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    quiet: bool,
    state: Mutex<Lines>,
}

#[derive(Debug, Default)]
struct Lines {
    /// `(object, status)` in first-seen order.
    entries: Vec<(String, String)>,
    /// Lines drawn last time (on a terminal).
    drawn: usize,
}

impl Progress {
    /// As `--progress` and `--ansi` say ([`crate::term::progress_mode`]): live lines when
    /// stderr is a terminal (and `NO_COLOR`/`CI` do not say otherwise).
    pub fn new() -> Progress {
        use crate::term::ProgressMode;
        let mode = crate::term::progress_mode();
        Progress {
            tty: mode == ProgressMode::Tty,
            quiet: mode == ProgressMode::Quiet,
            state: Mutex::new(Lines::default()),
        }
    }

    /// Prints nothing (for callers that only want the result).
    pub fn quiet() -> Progress {
        Progress {
            tty: false,
            quiet: true,
            state: Mutex::new(Lines::default()),
        }
    }

    /// Sets the status of `object`.
    pub fn line(&self, object: &str, status: &str) {
        if self.quiet {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.entries.iter_mut().find(|(o, _)| o == object) {
            Some(e) => e.1 = status.to_string(),
            None => s.entries.push((object.to_string(), status.to_string())),
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let width = s.entries.iter().map(|(o, _)| o.len()).max().unwrap_or(0);
            if s.drawn > 0 {
                let _ = write!(err, "\x1b[{}A", s.drawn);
            }
            for (o, st) in &s.entries {
                let mark = if is_final(st) { '✔' } else { '⠿' };
                let _ = writeln!(err, "\x1b[2K {mark} {o:<width$}  {st}");
            }
            s.drawn = s.entries.len();
        } else {
            let _ = writeln!(err, " {object}  {status}");
        }
    }

    /// A detail line (build output): on a terminal it becomes the object's status; otherwise
    /// it is printed indented.
    pub fn detail(&self, object: &str, text: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            let short: String = text.chars().take(70).collect();
            self.line(object, &short);
        } else {
            let _ = writeln!(std::io::stderr().lock(), "   {object} | {text}");
        }
    }

    /// A message outside the live lines (warnings).
    pub fn note(&self, text: &str) {
        if self.quiet {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(std::io::stderr().lock(), "{text}");
        s.drawn = 0;
        if self.tty {
            // Redraw below the note next time.
            s.entries.clear();
        }
    }
}

/// A status that ends an object's progress (compose's check mark).
fn is_final(status: &str) -> bool {
    [
        "Created",
        "Started",
        "Running",
        "Ready",
        "Healthy",
        "Removed",
        "Stopped",
        "built",
        "up to date",
    ]
    .iter()
    .any(|f| status.starts_with(f))
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
