//! The compose commands for process pods: `up` of a processes-only project, and what `ps`,
//! `logs` and `down` add for the process pods of any project (read from `.mesh/pods/`, so they
//! work without a Docker engine).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::net::{self, Link};
use super::spec::{PodSpec, PodState};
use super::up::{self, RunOptions};
use crate::docker::commands::UpArgs;
use crate::docker::progress::Progress;
use crate::docker::ps::PsRow;
use crate::docker::up::Project;

/// True when the project has services and none is a container (each is a process or an
/// existing host service): `up` then needs no Docker.
pub fn processes_only(project: &Project) -> bool {
    project
        .mesh
        .compose
        .as_ref()
        .is_some_and(|c| !c.services.is_empty() && c.services.values().all(|s| !s.is_container()))
}

/// True when the project has process or endpoint services.
pub fn has_processes(project: &Project) -> bool {
    project
        .mesh
        .compose
        .as_ref()
        .is_some_and(|c| c.services.values().any(|s| !s.is_container()))
}

/// The services of the files that are processes or existing host services: a pod of any other
/// service (removed, or now a container) is stopped by `up`.
pub fn process_services(project: &Project) -> BTreeSet<String> {
    project
        .mesh
        .compose
        .as_ref()
        .map(|c| {
            c.services
                .iter()
                .filter(|(_, s)| !s.is_container())
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// True when pods were started from this state directory (files under `.mesh/pods/`).
pub fn has_pods(state_dir: &Path) -> bool {
    !PodSpec::all(state_dir).is_empty()
}

/// The services `up SERVICE...` selects: the named ones and (without `--no-deps`) what they
/// depend on; every service when none is named.
pub fn selection(project: &Project, services: &[String], deps: bool) -> BTreeSet<String> {
    let Some(compose) = project.mesh.compose.as_ref() else {
        return BTreeSet::new();
    };
    if services.is_empty() {
        return compose.services.keys().cloned().collect();
    }
    let mut keep = BTreeSet::new();
    let mut todo: Vec<String> = services.to_vec();
    while let Some(s) = todo.pop() {
        if keep.insert(s.clone())
            && deps
            && let Some(svc) = compose.services.get(&s)
        {
            todo.extend(svc.depends_on.keys().cloned());
        }
    }
    keep
}

/// `meshctl up` for a processes-only project.
pub fn up(project: &Project, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let compose_names: BTreeSet<String> = project
        .mesh
        .compose
        .as_ref()
        .map(|c| c.services.keys().cloned().collect())
        .unwrap_or_default();
    for s in &args.services {
        if !compose_names.contains(s) {
            anyhow::bail!("no service {s:?} in the files");
        }
    }
    let chosen = selection(project, &args.services, !args.no_deps);
    let select = |s: &str| chosen.contains(s);
    let opts = RunOptions {
        select: &select,
        wait: args.wait,
        wait_timeout: Duration::from_secs(args.wait_timeout),
        force_recreate: args.force_recreate,
    };
    let progress = Progress::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = std::time::Instant::now();
        let outcome = up::run(project, &opts, &progress).await?;
        crate::controlplane::news::print_unseen(&project.state_dir).await;
        let apps = outcome.pods.iter().filter(|p| p.proxy.is_some()).count();
        eprintln!(
            "mesh {} up in {:.1} s: {apps} process pod(s) on {}/24",
            project.name(),
            started.elapsed().as_secs_f64(),
            outcome.network.subnet
        );
        if args.detach {
            return Ok(ExitCode::SUCCESS);
        }
        // Foreground: the apps' logs until Ctrl-C or SIGTERM, then everything stops.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let names: Vec<String> = outcome
            .pods
            .iter()
            .filter(|p| p.proxy.is_some())
            .map(|p| p.name.clone())
            .collect();
        let state_dir = project.state_dir.clone();
        tokio::select! {
            _ = follow(&state_dir, &names, false, true) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("\nstopping {}", project.name());
        let dir = project.state_dir.clone();
        tokio::task::spawn_blocking(move || down(&dir)).await??;
        Ok(ExitCode::SUCCESS)
    })
}

/// Stops every process pod of the state directory, its control plane when the project has
/// only processes, and meshctl's bridge; returns the pods stopped.
pub fn down(state_dir: &Path) -> anyhow::Result<Vec<String>> {
    let pods = PodSpec::all(state_dir);
    let mut bridges = BTreeSet::new();
    for p in pods.values() {
        up::stop_pod(state_dir, p);
        up::forget_pod(state_dir, &p.name, true);
        if let Some(n) = &p.net
            && let Link::Macvlan { parent } = &n.link
        {
            bridges.insert(parent.clone());
        }
    }
    for b in bridges {
        net::remove_bridge(&b)?;
    }
    Ok(pods.into_keys().collect())
}

/// Prints the `down` lines for the stopped pods.
pub fn report_down(progress: &Progress, stopped: &[String]) {
    for name in stopped {
        progress.line(&format!("Process {name}"), "Removed");
    }
}

/// `ps` rows of the process pods (apps, and with `proxy` their proxies and meshdns).
pub fn ps_rows(state_dir: &Path, proxy: bool) -> Vec<PsRow> {
    let mut rows = Vec::new();
    for (name, spec) in PodSpec::all(state_dir) {
        let state = PodState::read(state_dir, &name).unwrap_or_default();
        let alive = state.alive();
        let app_state = match (alive, state.status.as_str()) {
            (false, _) => "exited",
            (true, "running") => "running",
            (true, "restarting") => "restarting",
            (true, "starting") => "created",
            (true, "failed") => "dead",
            _ => "exited",
        };
        let ip = spec
            .net
            .as_ref()
            .map(|n| n.ip.to_string())
            .unwrap_or_default();
        let ports: Vec<String> = spec
            .published
            .iter()
            .map(|p| {
                format!(
                    "{}:{}->{}/tcp",
                    p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                    p.published,
                    p.target
                )
            })
            .collect();
        let base = PsRow {
            name: name.clone(),
            id: state
                .app_pid
                .map(|p| format!("pid-{p}"))
                .unwrap_or_else(|| {
                    format!("pod-{}", spec.hash.chars().take(8).collect::<String>())
                }),
            role: if spec.proxy.is_some() { "app" } else { "dns" }.into(),
            service: spec.service.clone(),
            mesh_service: spec.mesh_service.clone(),
            instance: Some(spec.instance),
            version: spec.version.clone(),
            state: app_state.into(),
            restarts: i64::from(state.restarts),
            exit_code: state
                .exit_code
                .filter(|_| app_state != "running")
                .map(i64::from),
            health: state.health.clone().unwrap_or_default(),
            status: match (&state.error, state.exit_code) {
                (Some(e), _) => e.lines().next().unwrap_or_default().to_string(),
                (None, _) if spec.endpoint.is_some() => {
                    format!(
                        "endpoint {}",
                        spec.endpoint.map(|a| a.to_string()).unwrap_or_default()
                    )
                }
                (None, Some(c)) if app_state != "running" => format!("Exited ({c})"),
                _ => format!("process {}", spec.app.program),
            },
            image: String::new(),
            ip,
            identity: spec.identity.clone(),
            cert_expires: None,
            cert_not_after: None,
            cert_expiry: None,
            ports,
        };
        if spec.proxy.is_none() {
            if proxy {
                rows.push(base);
            }
            continue;
        }
        if proxy {
            let mut p = base.clone();
            p.name = format!("{name}-proxy");
            p.id = state
                .proxy_pid
                .map(|p| format!("pid-{p}"))
                .unwrap_or_else(|| "-".into());
            p.role = "sidecar".into();
            p.state = if alive && state.proxy_ready {
                "running".into()
            } else {
                "exited".into()
            };
            p.restarts = 0;
            p.exit_code = None;
            p.health = String::new();
            p.status = "meshproxy".into();
            rows.push(p);
        }
        rows.push(base);
    }
    rows
}

/// The log files `logs` reads: each selected pod's app log, and with `proxy` its proxy log
/// (name `<pod>-proxy`) and meshdns's.
pub fn log_files(state_dir: &Path, services: &[String], proxy: bool) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for (name, spec) in PodSpec::all(state_dir) {
        if !services.is_empty()
            && !services
                .iter()
                .any(|s| s == &spec.service || s == &spec.mesh_service)
        {
            continue;
        }
        if spec.proxy.is_some() {
            out.insert(name.clone(), PodSpec::log_path(state_dir, &name));
            if proxy {
                out.insert(
                    format!("{name}-proxy"),
                    PodSpec::proxy_log_path(state_dir, &name),
                );
            }
        } else if proxy {
            out.insert(name.clone(), PodSpec::log_path(state_dir, &name));
        }
    }
    out
}

/// Prints the last `tail` lines (`None`: all) of each file, prefixed with its name.
pub fn print_tail(
    files: &BTreeMap<String, PathBuf>,
    tail: Option<usize>,
    prefix: bool,
) -> std::io::Result<()> {
    let width = files.keys().map(String::len).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (name, path) in files {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
        for line in &lines[skip..] {
            if prefix {
                writeln!(out, "{name:width$}  | {line}")?;
            } else {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

/// Follows the logs of the pods `names` (from their current end, or from the start with
/// `from_start`), forever; `proxy` adds their proxies' logs.
pub async fn follow(state_dir: &Path, names: &[String], proxy: bool, from_start: bool) {
    let mut files: Vec<(String, PathBuf, u64)> = Vec::new();
    for n in names {
        files.push((n.clone(), PodSpec::log_path(state_dir, n), 0));
        if proxy {
            files.push((
                format!("{n}-proxy"),
                PodSpec::proxy_log_path(state_dir, n),
                0,
            ));
        }
    }
    follow_files(files, from_start).await
}

/// Follows `(name, path, offset)` files, printing complete new lines with a prefix.
pub async fn follow_files(mut files: Vec<(String, PathBuf, u64)>, from_start: bool) {
    if !from_start {
        for f in &mut files {
            f.2 = std::fs::metadata(&f.1).map(|m| m.len()).unwrap_or(0);
        }
    }
    let width = files.iter().map(|f| f.0.len()).max().unwrap_or(0);
    let mut pending: Vec<String> = vec![String::new(); files.len()];
    loop {
        for (i, (name, path, offset)) in files.iter_mut().enumerate() {
            let Ok(mut f) = std::fs::File::open(&*path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *offset {
                *offset = 0; // truncated
            }
            if len == *offset || f.seek(std::io::SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).is_err() {
                continue;
            }
            *offset += buf.len() as u64;
            pending[i].push_str(&String::from_utf8_lossy(&buf));
            let mut out = std::io::stdout().lock();
            while let Some(nl) = pending[i].find('\n') {
                let line: String = pending[i].drain(..=nl).collect();
                if writeln!(out, "{name:width$}  | {}", line.trim_end_matches('\n')).is_err() {
                    return;
                }
            }
            let _ = out.flush();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
