//! The node subcommands: `meshctl token create`, `join`, `leave`, `node ls`, `node rm`.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::api::{
    LEAVE_PATH, NODES_PATH, NodesResponse, REMOVE_PATH, RemoveRequest, RemoveResponse, TOKEN_PATH,
    TokenRequest, TokenResponse,
};
use super::join::{self, JoinError, RunningProxy};
use super::token::JoinToken;
use crate::controlplane::client::{AdminClient, ClientError, RECONNECT_BUDGET, call_with_backoff};
use crate::project::ProjectArgs;

/// `meshctl token ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Print a join token for a node: single use, expiring, carrying this control plane's
    /// address and its CA's fingerprint (`meshctl join TOKEN` on the node).
    Create(TokenCreateArgs),
}

/// `meshctl token create`.
#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    /// The node's name (`x-mesh: {node: NAME}` places services on it).
    #[arg(long)]
    pub node: String,
    /// How long the token may be used: `90s`, `30m`, `1h`, `2d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The control plane's address as the node reaches it (`host:port`). Default: the
    /// address it listens on (`meshctl serve --listen`).
    #[arg(long)]
    pub address: Option<String>,
}

/// `meshctl join`.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The token printed by `meshctl token create`. Omit it to rejoin with the node
    /// credential kept in `.mesh/node/` (a restarted node needs no new token).
    pub token: Option<String>,
    /// The address this node's proxies listen on, which peers connect to. Default: the
    /// address the control plane sees the node's connection come from.
    #[arg(long)]
    pub address: Option<IpAddr>,
    /// The meshproxy binary. Default: as `meshctl up` finds it (`MESHCTL_RUNTIME_DIR`, beside
    /// meshctl, or built from its workspace).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
}

/// `meshctl node ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// List the nodes: address, joined, services placed on each, certificates.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node: its certificates are refused by every proxy and the CA, its
    /// endpoints leave every config.
    Rm {
        /// The node's name.
        name: String,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (90s, 30m, 1h, 2d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn state_dir(project: &ProjectArgs) -> PathBuf {
    project.spec().working_dir.join(".mesh")
}

/// `meshctl token create`.
pub fn token_create(project: &ProjectArgs, args: &TokenCreateArgs) -> anyhow::Result<ExitCode> {
    if !super::valid_node_name(&args.node) {
        bail!(
            "{:?} is not a node name: lowercase letters, digits and '-', at most 40",
            args.node
        );
    }
    let request = TokenRequest {
        node: args.node.clone(),
        ttl_secs: args.ttl.as_secs(),
    };
    let (client, answer) = runtime()?.block_on(call_with_backoff(
        &state_dir(project),
        RECONNECT_BUDGET,
        |c| {
            let request = request.clone();
            async move { c.post::<_, TokenResponse>(TOKEN_PATH, &request).await }
        },
    ))?;
    let address = match &args.address {
        Some(a) => a.clone(),
        None => {
            let a = client.address().to_string();
            if a.starts_with("127.") || a.starts_with("[::1]") {
                eprintln!(
                    "warning: the control plane listens on loopback ({a}): another machine cannot reach it; run `meshctl serve --listen <this machine's IP>:15012`, or pass --address"
                );
            }
            a
        }
    };
    let token = JoinToken {
        node: args.node.clone(),
        address,
        fingerprint: answer.fingerprint,
        secret: answer.secret,
    };
    println!("{token}");
    eprintln!(
        "single use, valid for {}s; on the node: meshctl join <token>  (services placed on {}: {})",
        args.ttl.as_secs(),
        args.node,
        if answer.services.is_empty() {
            "none yet".to_string()
        } else {
            answer.services.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `meshctl node ls`.
pub fn node_ls(project: &ProjectArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (_, answer) = runtime()?.block_on(call_with_backoff(
        &state_dir(project),
        RECONNECT_BUDGET,
        |c| async move { c.get::<NodesResponse>(NODES_PATH).await },
    ))?;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut w, &answer)?;
        writeln!(w)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        w,
        "{:<16} {:<8} {:<18} SERVICES",
        "NODE", "STATE", "ADDRESS"
    )?;
    for (name, r) in &answer.nodes {
        let state = if r.removed {
            "removed"
        } else if r.address.is_some() {
            "joined"
        } else {
            "invited"
        };
        let services: Vec<String> = answer
            .placed
            .get(name)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        writeln!(
            w,
            "{:<16} {:<8} {:<18} {}",
            name,
            state,
            r.address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            services.join(",")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `meshctl node rm`.
pub fn node_rm(project: &ProjectArgs, name: &str) -> anyhow::Result<ExitCode> {
    let request = RemoveRequest {
        node: name.to_string(),
    };
    let (_, answer) = runtime()?.block_on(call_with_backoff(
        &state_dir(project),
        RECONNECT_BUDGET,
        |c| {
            let request = request.clone();
            async move { c.post::<_, RemoveResponse>(REMOVE_PATH, &request).await }
        },
    ))?;
    println!(
        "node {} removed: {} certificate(s) refused by every proxy, {} proxy token(s) revoked",
        answer.node, answer.revoked_serials, answer.revoked_tokens
    );
    Ok(ExitCode::SUCCESS)
}

/// `meshctl leave`: on a joined node, removes it from the mesh and stops its `meshctl join`.
pub fn leave(project: &ProjectArgs) -> anyhow::Result<ExitCode> {
    let state = state_dir(project);
    let me = join::read_node(&state)?;
    let answer: RemoveResponse = runtime()?.block_on(async {
        let client = AdminClient::from_state_dir(&join::node_dir(&state))?;
        client.post(LEAVE_PATH, &()).await
    })?;
    if let Some(pid) = i32::try_from(me.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        && me.pid != std::process::id()
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    println!(
        "node {} left the mesh: {} certificate(s) refused by every proxy",
        answer.node, answer.revoked_serials
    );
    Ok(ExitCode::SUCCESS)
}

/// How long a proxy that keeps exiting waits before it is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// `meshctl join`: joins (or rejoins), runs the node's proxies until SIGINT/SIGTERM or removal.
pub fn join_cmd(project: &ProjectArgs, args: &JoinArgs) -> anyhow::Result<ExitCode> {
    let state = state_dir(project);
    let proxy_bin = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => crate::docker::runtime::find(&["meshproxy"])?
            .remove("meshproxy")
            .context("meshproxy not found")?,
    };
    runtime()?.block_on(async move {
        let started = Instant::now();
        let me = match &args.token {
            Some(text) => {
                let token: JoinToken = text.parse()?;
                let (roots, root) = join::verified_root(&token).await?;
                join::obtain_credentials(
                    &state,
                    &token,
                    root,
                    &roots.roots_pem,
                    &roots.trust_domain,
                )
                .await?;
                join::read_node(&state)?
            }
            None => {
                let me = join::read_node(&state)?;
                if !join::credential_valid(&state) {
                    return Err(JoinError::Expired(me.node).into());
                }
                join::renew(&state, &me.node, &me.trust_domain).await?;
                me
            }
        };
        let plan = join::register(&state, args.address).await?;
        println!(
            "joined {} as node {} ({}) in {} ms; {} proxy(ies)",
            me.control_plane,
            plan.node,
            plan.address,
            started.elapsed().as_millis(),
            plan.proxies.len()
        );
        let mut running: Vec<Option<RunningProxy>> = Vec::new();
        for i in 0..plan.proxies.len() {
            let p = join::spawn_proxy(&proxy_bin, &state, &plan, &me.control_plane, i)?;
            println!("  {} started (pid {})", p.name, p.pid().unwrap_or(0));
            running.push(Some(p));
        }
        std::io::stdout().flush()?;
        let outcome = supervise(&state, &me, &plan, &proxy_bin, &mut running).await;
        for p in running.into_iter().flatten() {
            p.stop(Duration::from_secs(5)).await;
        }
        outcome
    })
}

async fn supervise(
    state: &std::path::Path,
    me: &join::NodeState,
    plan: &super::api::NodePlan,
    proxy_bin: &std::path::Path,
    running: &mut [Option<RunningProxy>],
) -> anyhow::Result<ExitCode> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut renew_at = join::renew_at(state).unwrap_or_else(SystemTime::now);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; break; }
            _ = term.recv() => break,
            _ = tick.tick() => {}
        }
        for (i, slot) in running.iter_mut().enumerate() {
            let Some(p) = slot else { continue };
            if let Some(status) = p.exited() {
                if p.uptime() < RESTART_DELAY {
                    continue;
                }
                println!("  {} exited ({status}); starting it again", p.name);
                *slot = Some(join::spawn_proxy(
                    proxy_bin,
                    state,
                    plan,
                    &me.control_plane,
                    i,
                )?);
            }
        }
        if SystemTime::now() >= renew_at {
            match join::renew(state, &me.node, &me.trust_domain).await {
                Ok(_) => {
                    renew_at = join::renew_at(state).unwrap_or_else(SystemTime::now);
                }
                Err(JoinError::Client(ClientError::Refused {
                    status: 403,
                    message,
                })) => {
                    println!("node {} removed from the mesh: {message}", me.node);
                    return Ok(ExitCode::from(1));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node certificate renewal failed; retrying");
                    renew_at = SystemTime::now() + Duration::from_secs(5);
                }
            }
        }
    }
    println!("node {} stopping", me.node);
    Ok(ExitCode::SUCCESS)
}
