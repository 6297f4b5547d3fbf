//! `exec` and `processes`: compose's `exec` (a command in a service's running app container,
//! so in its pod's network namespace: its calls go through the sidecar like the app's own)
//! and compose's `top` (the processes of each container), spelled `processes` because
//! `meshctl top` is the busiest paths.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use clap::Args;
use futures_util::StreamExt;

use super::engine::{Engine, Owned};
use super::lifecycle::{Target, selected};
use super::{LABEL_SERVICE, Role};
use crate::project::ProjectArgs;

/// `meshctl exec`: compose's flags.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Detached: start the command and return at once.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// No pseudo-TTY (the default when stdin is not a terminal).
    #[arg(short = 'T', long = "no-TTY")]
    pub no_tty: bool,
    /// Run as this user (`user`, `user:group`, `uid`, `uid:gid`).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Working directory of the command.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Set an environment variable (repeatable); `-e KEY` passes meshctl's own value.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VAL]")]
    pub env: Vec<String>,
    /// Which replica of the service (1-based, as compose counts).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub index: u32,
    /// Extended privileges for the command.
    #[arg(long)]
    pub privileged: bool,
    /// The compose service.
    pub service: String,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// `meshctl processes`: compose's `top`.
#[derive(Debug, Clone, Args)]
pub struct ProcessesArgs {
    /// Also the sidecars and meshdns.
    #[arg(long)]
    pub proxy: bool,
    /// Only these services (default: all).
    pub services: Vec<String>,
}

/// The running app container of `service`'s replica `index` (1-based).
fn app_container<'a>(
    project: &str,
    containers: &'a [Owned],
    service: &str,
    index: u32,
) -> anyhow::Result<&'a Owned> {
    let apps: Vec<&Owned> = containers
        .iter()
        .filter(|c| c.role() == Some(Role::App) && c.label(LABEL_SERVICE) == service)
        .collect();
    if apps.is_empty() {
        anyhow::bail!("no such service: {service} (project {project} has no container of it)");
    }
    let Some(c) = apps
        .iter()
        .find(|c| c.pod_key().is_some_and(|(_, i)| i + 1 == index))
    else {
        anyhow::bail!(
            "service {service} has no container with index {index} (it has {})",
            apps.len()
        );
    };
    if c.state != "running" {
        anyhow::bail!(
            "service {service} is not running: container {} is {} (`meshctl start {service}`)",
            c.name,
            c.state
        );
    }
    Ok(c)
}

/// `-e` values: `KEY=VAL` as given, `KEY` with meshctl's own value (left out when unset).
fn env_values(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// Puts the terminal in raw mode while it lives (an interactive TTY session), restores it on
/// drop.
struct RawTerminal(Option<rustix::termios::Termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        let stdin = std::io::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(&stdin) else {
            return RawTerminal(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).is_err()
        {
            return RawTerminal(None);
        }
        RawTerminal(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

/// `meshctl exec`: runs the command in the app container and exits with its status (compose's
/// behaviour); stdin is passed to it, stdout and stderr come back apart (merged on a TTY).
pub fn exec(args: &ProjectArgs, exec: &ExecArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(args)?;
    let rt = super::commands::runtime()?;
    let result = rt.block_on(async {
        let engine = Engine::connect().await?;
        let containers = target.containers(&engine).await?;
        let c = app_container(&target.name, &containers, &exec.service, exec.index)?;
        let tty = !exec.no_tty && !exec.detach && std::io::stdin().is_terminal();
        let created = engine
            .docker
            .create_exec(
                &c.id,
                CreateExecOptions {
                    cmd: Some(exec.command.clone()),
                    env: Some(env_values(&exec.env)),
                    user: exec.user.clone(),
                    working_dir: exec.workdir.clone(),
                    privileged: Some(exec.privileged),
                    tty: Some(tty),
                    attach_stdin: Some(!exec.detach),
                    attach_stdout: Some(!exec.detach),
                    attach_stderr: Some(!exec.detach),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating the exec in {}", c.name))?;
        let started = engine
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: exec.detach,
                    tty,
                    output_capacity: None,
                }),
            )
            .await
            .with_context(|| format!("starting {:?} in {}", exec.command, c.name))?;
        let StartExecResults::Attached { mut output, input } = started else {
            return Ok(ExitCode::SUCCESS);
        };
        let _raw = tty.then(RawTerminal::enter);
        if tty && let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdout()) {
            let _ = engine
                .docker
                .resize_exec(
                    &created.id,
                    bollard::exec::ResizeExecOptions {
                        height: size.ws_row,
                        width: size.ws_col,
                    },
                )
                .await;
        }
        // stdin to the command until EOF, then its stdin is closed.
        tokio::spawn(async move {
            let mut input = input;
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut input).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut input).await;
        });
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        while let Some(chunk) = output.next().await {
            match chunk.with_context(|| format!("reading the output of {}", c.name))? {
                LogOutput::StdErr { message } => {
                    err.write_all(&message)?;
                    err.flush()?;
                }
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    out.write_all(&message)?;
                    out.flush()?;
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        let inspected = engine
            .docker
            .inspect_exec(&created.id)
            .await
            .with_context(|| format!("reading the exit status of the exec in {}", c.name))?;
        let code = inspected.exit_code.unwrap_or(0);
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    });
    // A blocking read of the terminal may still be pending: do not wait for it.
    rt.shutdown_background();
    result
}

/// `meshctl processes`: per running container, its processes as the engine's `top` lists
/// them (compose's `top`).
pub fn processes(args: &ProjectArgs, procs: &ProcessesArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(args)?;
    super::commands::runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        let mut containers = target.containers(&engine).await?;
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut w = std::io::stdout().lock();
        let mut first = true;
        for c in containers.iter().filter(|c| {
            c.state == "running"
                && match c.role() {
                    Some(Role::App) => selected(c, &procs.services),
                    Some(Role::Sidecar) => procs.proxy && selected(c, &procs.services),
                    Some(Role::Dns) => procs.proxy && procs.services.is_empty(),
                    None => false,
                }
        }) {
            let top = engine
                .docker
                .top_processes(&c.id, None::<bollard::query_parameters::TopOptions>)
                .await
                .with_context(|| format!("listing the processes of {}", c.name))?;
            let titles = top.titles.unwrap_or_default();
            let header: Vec<&str> = titles.iter().map(String::as_str).collect();
            if !first {
                writeln!(w)?;
            }
            first = false;
            writeln!(w, "{}", c.name)?;
            super::lifecycle::write_table(&mut w, &header, &top.processes.unwrap_or_default())?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_pass_assignments_and_take_bare_names_from_meshctls_environment() {
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(
            env_values(&[
                "A=1".into(),
                "PATH".into(),
                "MESHCTL_SURELY_UNSET_VARIABLE".into(),
                "B=x=y".into()
            ]),
            ["A=1".to_string(), format!("PATH={path}"), "B=x=y".into()]
        );
    }
}
