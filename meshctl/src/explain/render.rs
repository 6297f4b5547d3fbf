//! `meshctl explain`'s arguments and its text for people (`--json` prints the
//! [`Explanation`] as is).

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use super::{ExplainRequest, Explanation, Offline, explain};
use crate::project::ProjectArgs;

/// `meshctl explain --from SERVICE METHOD URL [-H 'name: value']...`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The calling compose service or mesh service (its first workload).
    #[arg(long = "from", value_name = "SERVICE")]
    pub from: String,
    /// The request's method (GET, POST, ...).
    pub method: String,
    /// The URL the application calls (`http://backend:8080/path?q=1`).
    pub url: String,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print JSON for machines instead of text for people.
    #[arg(long)]
    pub json: bool,
}

/// Runs `meshctl explain`: exit 0 with the explanation, 1 when the project or the request
/// cannot be explained.
pub fn explain_cmd(project: &ProjectArgs, args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let loaded = project.load()?;
    let mut diags = loaded.diagnostics.clone();
    diags.extend(meshmodel::check::analyze(&loaded.mesh));
    let errors: Vec<_> = (diags.iter())
        .filter(|d| d.severity == meshapi::diag::Severity::Error)
        .collect();
    if !errors.is_empty() {
        for d in errors {
            eprintln!("{}", d.render(false));
        }
        return Ok(ExitCode::from(1));
    }
    let state = project.spec().working_dir.join(".mesh");
    let offline = Offline::new(&loaded, &state)?;
    let req = ExplainRequest::new(&args.from, &args.method, &args.url, &args.headers)?;
    let x = explain(&offline, &req)?;
    let mut w = std::io::stdout().lock();
    if args.json {
        let json = serde_json::to_string_pretty(&x)?;
        writeln!(w, "{json}")?;
    } else {
        w.write_all(text(&x).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The explanation as text for people.
pub fn text(x: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} {} from {} ({})",
        x.method, x.url, x.from.workload, x.from.identity
    );
    let Some(d) = &x.destination else {
        let _ = writeln!(s, "verdict: {}", x.verdict.summary);
        return s;
    };
    let _ = writeln!(
        s,
        "destination: {} port {} ({})",
        d.host, d.port, d.protocol
    );
    let r = &x.route;
    let _ = writeln!(
        s,
        "route: {} (VirtualService {}, DestinationRule {})",
        r.decision,
        r.virtual_service
            .as_deref()
            .unwrap_or("none: default route"),
        r.destination_rule.as_deref().unwrap_or("none")
    );
    for skipped in &r.skipped {
        let _ = writeln!(s, "  skipped rule {skipped}");
    }
    if let Some(i) = r.rule {
        let name = r
            .rule_name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let why = match &r.matched {
            Some(m) => format!("matched {m}"),
            None => "no match block: matches every request".into(),
        };
        let _ = writeln!(s, "  rule #{i}{name}: {why}");
    }
    if let Some(p) = &r.rewritten_path {
        let _ = writeln!(s, "  path rewritten to {p}");
    }
    if let Some(l) = &r.location {
        let _ = writeln!(s, "  location: {l}");
    }
    if r.decision == "forward" {
        let _ = writeln!(
            s,
            "  timeout: {}",
            r.timeout_ms.map_or("none".into(), |t| format!("{t}ms"))
        );
        let _ = writeln!(
            s,
            "  retries: {}",
            r.retries.as_ref().map_or("none".into(), |t| format!(
                "{} attempt(s) on {}{}",
                t.attempts,
                t.retry_on,
                t.per_try_timeout_ms
                    .map(|p| format!(", {p}ms per try"))
                    .unwrap_or_default()
            ))
        );
        if let Some(f) = &r.fault {
            let _ = writeln!(s, "  fault: {f}");
        }
        for m in &r.mirrors {
            let _ = writeln!(s, "  mirror: {m}");
        }
    }
    for b in &x.backends {
        let _ = writeln!(
            s,
            "backend {}{} port {}: weight {} ({:.1}%), load balancer {}{}",
            b.host,
            b.subset
                .as_deref()
                .map(|s| format!(" subset {s}"))
                .unwrap_or_default(),
            b.port,
            b.weight,
            b.percent,
            b.load_balancer,
            if b.outlier_detection {
                ", outlier detection on"
            } else {
                ""
            }
        );
        if b.endpoints.is_empty() {
            let _ = writeln!(s, "  no endpoints");
        }
        for e in &b.endpoints {
            let _ = writeln!(
                s,
                "  endpoint {}: {}{}, server {}",
                e.workload.as_deref().unwrap_or("(outside the mesh)"),
                e.client_tls,
                e.expected_identity
                    .as_deref()
                    .map(|i| format!(" expecting {i}"))
                    .unwrap_or_default(),
                match (&e.peer_authentication, e.connection_accepted) {
                    (Some(m), true) => m.clone(),
                    (Some(m), false) => format!("{m} refuses this connection"),
                    (None, _) => "not a mesh proxy".into(),
                }
            );
            if let Some(a) = &e.authorization {
                let by = match (&a.policy, a.rule) {
                    (Some(p), Some(i)) => format!(" by {p} rule {i}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "    authorization: {} ({}{by}) for principal {} on path {}",
                    if a.allowed { "ALLOW" } else { "DENY" },
                    a.reason,
                    a.principal.as_deref().unwrap_or("none (plaintext)"),
                    a.path
                );
                for f in &a.dry_run {
                    let _ = writeln!(s, "    {f}");
                }
            }
        }
    }
    let _ = writeln!(s, "verdict: {}", x.verdict.summary);
    s
}
