//! `meshctl logs` and the log stream of a foreground `up`: each line prefixed with its
//! container's name (coloured per container on a terminal, as compose does), with compose's
//! flags: `-f`, `--tail`, `-t`, `--since`, `--until`, `--no-color`, `--no-log-prefix`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use bollard::query_parameters::LogsOptionsBuilder;
use clap::Args;
use futures_util::StreamExt;

use super::engine::Engine;
use super::lifecycle::{Target, selected};
use super::*;
use crate::project::ProjectArgs;

/// `meshctl logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Follow the output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Compose file, Istio resource file or directory (repeatable; `-f` before `logs` too).
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<std::path::PathBuf>,
    /// Lines from the end of each log (`all` for everything).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Only lines since this time: RFC 3339 (`2026-01-02T13:23:37Z`), Unix seconds, or a
    /// duration before now (`42m`, `1h30m`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only lines before this time (same forms as `--since`).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// No colours in the prefixes.
    #[arg(long)]
    pub no_color: bool,
    /// No `name | ` prefix.
    #[arg(long)]
    pub no_log_prefix: bool,
    /// Include the sidecars' (meshproxy) logs.
    #[arg(long)]
    pub proxy: bool,
    /// Only these services.
    pub services: Vec<String>,
}

/// How to stream logs.
#[derive(Debug, Clone, Default)]
pub struct LogStyle {
    pub follow: bool,
    pub tail: String,
    pub timestamps: bool,
    pub since: Option<i32>,
    pub until: Option<i32>,
    pub color: bool,
    pub prefix: bool,
}

impl LogStyle {
    /// A foreground `up`'s stream: follow everything, prefixed.
    pub fn follow_all() -> LogStyle {
        LogStyle {
            follow: true,
            tail: "all".into(),
            color: crate::term::color(std::io::stdout().is_terminal()),
            prefix: true,
            ..LogStyle::default()
        }
    }
}

/// compose's prefix colours, in its order.
const COLORS: [u8; 6] = [36, 33, 32, 35, 34, 31];

/// Streams the logs of `containers` (name -> ID) to stdout, lines interleaved as they come.
/// Returns when every stream ends, or with the error of a write (a closed pipe ends it).
pub async fn stream(
    engine: &Engine,
    containers: &BTreeMap<String, String>,
    style: &LogStyle,
) -> std::io::Result<()> {
    let width = containers.keys().map(String::len).max().unwrap_or(0);
    let streams = containers.iter().enumerate().map(|(i, (name, id))| {
        let mut opts = LogsOptionsBuilder::new()
            .follow(style.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(style.timestamps)
            .tail(&style.tail);
        if let Some(s) = style.since {
            opts = opts.since(s);
        }
        if let Some(u) = style.until {
            opts = opts.until(u);
        }
        let prefix = match (style.prefix, style.color) {
            (false, _) => String::new(),
            (true, false) => format!("{name:<width$} | "),
            (true, true) => format!("\x1b[{}m{name:<width$} |\x1b[0m ", COLORS[i % COLORS.len()]),
        };
        engine
            .docker
            .logs(id, Some(opts.build()))
            .map(move |chunk| (prefix.clone(), chunk))
            .boxed()
    });
    let mut all = futures_util::stream::select_all(streams);
    let mut partial: BTreeMap<String, String> = BTreeMap::new();
    while let Some((prefix, chunk)) = all.next().await {
        let text = match chunk {
            Ok(c) => String::from_utf8_lossy(&c.into_bytes()).into_owned(),
            Err(e) => format!("(logs unavailable: {e})\n"),
        };
        let buf = partial.entry(prefix.clone()).or_default();
        buf.push_str(&text);
        let mut out = std::io::stdout().lock();
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            write!(out, "{prefix}{line}")?;
        }
        out.flush()?;
    }
    let mut out = std::io::stdout().lock();
    for (prefix, rest) in partial.into_iter().filter(|(_, r)| !r.is_empty()) {
        writeln!(out, "{prefix}{rest}")?;
    }
    out.flush()
}

/// `--since`/`--until` as Unix seconds: RFC 3339, Unix seconds, or a duration before `now`
/// (`30s`, `42m`, `1h30m`, `2d`).
pub fn parse_time(s: &str, now: i64) -> Result<i32, String> {
    let secs = if let Ok(n) = s.parse::<i64>() {
        n
    } else if let Ok(t) =
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
    {
        t.unix_timestamp()
    } else {
        now - parse_duration(s).ok_or_else(|| {
            format!("{s:?} is not a time: give RFC 3339 (2026-01-02T13:23:37Z), Unix seconds or a duration (42m, 1h30m)")
        })?
    };
    i32::try_from(secs).map_err(|_| format!("{s:?} is out of range"))
}

fn parse_duration(s: &str) -> Option<i64> {
    let mut total = 0i64;
    let mut num = String::new();
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        total += n * match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
    }
    (num.is_empty() && !s.is_empty()).then_some(total)
}

/// `meshctl logs`.
pub fn logs(project: &ProjectArgs, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(project)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--until: {e}"))?;
    let style = LogStyle {
        follow: args.follow,
        tail: args.tail.clone(),
        timestamps: args.timestamps,
        since,
        until,
        color: !args.no_color && crate::term::color(std::io::stdout().is_terminal()),
        prefix: !args.no_log_prefix,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Process pods' logs are files under `.mesh/pods/`: printed first (followed beside
        // the containers' with -f); a project of processes only needs no engine.
        let files =
            crate::process::commands::log_files(&target.state_dir, &args.services, args.proxy);
        let tail = match args.tail.as_str() {
            "all" => None,
            n => Some(
                n.parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("--tail: {n:?} is not a number or `all`"))?,
            ),
        };
        if !files.is_empty() {
            crate::process::commands::print_tail(&files, tail, style.prefix)?;
        }
        let follow_files = || {
            crate::process::commands::follow_files(
                files
                    .iter()
                    .map(|(n, p)| (n.clone(), p.clone(), 0))
                    .collect(),
                false,
            )
        };
        let engine = match Engine::connect().await {
            Ok(e) => e,
            Err(_) if !files.is_empty() => {
                if args.follow {
                    follow_files().await;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e.into()),
        };
        let containers = target.containers(&engine).await?;
        for s in &args.services {
            if !containers
                .iter()
                .any(|c| selected(c, std::slice::from_ref(s)))
                && !files.keys().any(|f| f.contains(s.as_str()))
            {
                anyhow::bail!("no such service: {s}");
            }
        }
        let chosen: BTreeMap<String, String> = containers
            .iter()
            .filter(|c| match c.role() {
                Some(Role::App) => true,
                Some(Role::Sidecar) => args.proxy,
                _ => false,
            })
            .filter(|c| selected(c, &args.services))
            .map(|c| (c.name.clone(), c.id.clone()))
            .collect();
        if args.follow && !files.is_empty() {
            tokio::select! {
                r = stream(&engine, &chosen, &style) => r?,
                _ = follow_files() => {}
            }
        } else {
            stream(&engine, &chosen, &style).await?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_and_until_take_compose_forms() {
        let now = 1_800_000_000;
        assert_eq!(parse_time("42m", now), Ok(now as i32 - 42 * 60));
        assert_eq!(parse_time("1h30m", now), Ok(now as i32 - 5400));
        assert_eq!(parse_time("1700000000", now), Ok(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now), Ok(1_700_000_000));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("5x", now).is_err());
        assert!(parse_time("", now).is_err());
    }
}
