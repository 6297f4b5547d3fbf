//! The node routes of the control plane's API, and the CSR route wrapped with node checks.
//!
//! - `GET /v1/roots` (anyone): the CA roots, public; a joining node hashes them against its
//!   token's fingerprint before it sends anything secret.
//! - `POST /v1/nodes/token` (admin): a single-use, expiring token for a node identity.
//! - `POST /v1/nodes/register` (a node): records its address (the TCP peer's, unless it
//!   names one), issues a pod token per proxy placed on it, reloads; answers its [`NodePlan`].
//! - `POST /v1/nodes/leave` (a node), `POST /v1/nodes/remove` (admin): revoke a node.
//! - `GET /v1/nodes` (admin): the registry; `GET /v1/status` (admin): the control plane's
//!   status with every node and its endpoints added.
//! - `POST /v1/csr`: the CA's handler behind two checks: a removed node (or a certificate
//!   once issued to it) gets nothing, and each certificate issued to a node or its proxies is
//!   recorded against the node, so that its removal can name every serial to refuse.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use meshapi::ca_api::{CSR_PATH, CsrRequest, SpiffeId};
use meshapi::wire::STATUS_PATH;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{NodeRecord, NodeRegistry, holder, node_id, node_of, valid_node_name};
use crate::api::{ApiBody, PeerInfo, Router, error_response, json_response, read_json};
use crate::ca::Ca;
use crate::controlplane::ReloadCmd;
use crate::controlplane::api::require_admin;

/// `GET`: the CA roots.
pub const ROOTS_PATH: &str = "/v1/roots";
/// `POST`: a join token.
pub const TOKEN_PATH: &str = "/v1/nodes/token";
/// `POST`: a node registers.
pub const REGISTER_PATH: &str = "/v1/nodes/register";
/// `POST`: a node leaves.
pub const LEAVE_PATH: &str = "/v1/nodes/leave";
/// `POST`: the admin removes a node.
pub const REMOVE_PATH: &str = "/v1/nodes/remove";
/// `GET`: the registry.
pub const NODES_PATH: &str = "/v1/nodes";

const MAX_BODY: usize = 64 * 1024;

/// Answer of `GET /v1/roots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootsResponse {
    pub roots_pem: String,
    /// The mesh's trust domain (node identities are in it).
    pub trust_domain: String,
}

/// Body of `POST /v1/nodes/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    pub node: String,
    /// Validity, seconds.
    pub ttl_secs: u64,
}

/// Answer of `POST /v1/nodes/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub secret: String,
    pub identity: String,
    /// sha256 of the root, hex.
    pub fingerprint: String,
    /// Services placed on the node now.
    pub services: Vec<String>,
}

/// Body of `POST /v1/nodes/register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// The address its proxies listen on. Default: the address the request came from.
    #[serde(default)]
    pub address: Option<IpAddr>,
}

/// One proxy a node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedProxy {
    pub workload: String,
    pub instance: u32,
    pub identity: String,
    /// Its pod token (reusable by this proxy until the node is removed).
    pub token: String,
}

/// Answer of `POST /v1/nodes/register`: what the node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    pub node: String,
    pub address: IpAddr,
    pub proxies: Vec<PlannedProxy>,
    pub roots_pem: String,
}

/// Body of `POST /v1/nodes/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoveRequest {
    pub node: String,
}

/// Answer of leave/remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveResponse {
    pub node: String,
    /// Certificates now refused by every proxy.
    pub revoked_serials: usize,
    /// Pod tokens revoked.
    pub revoked_tokens: usize,
}

/// Answer of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodesResponse {
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Services placed on each node (workload -> replicas).
    pub placed: BTreeMap<String, BTreeMap<String, u32>>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct NodeApi {
    pub ca: Arc<Ca>,
    pub push: Arc<crate::controlplane::PushState>,
    pub nodes: Arc<NodeRegistry>,
    pub reload: mpsc::Sender<ReloadCmd>,
}

fn reload(api: &NodeApi, note: String) {
    // A full queue already holds a reload, which reads the registry when it runs.
    let _ = api.reload.try_send(ReloadCmd {
        reply: None,
        trigger: Some(std::time::Instant::now()),
        note: Some(note),
    });
}

/// Reloads and waits for it, so the node's proxies have configs before it starts them.
async fn reload_now(api: &NodeApi, note: String) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let cmd = ReloadCmd {
        reply: Some(tx),
        trigger: Some(std::time::Instant::now()),
        note: Some(note),
    };
    if api.reload.send(cmd).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    }
}

/// Adds the node routes (and the checked CSR route) to `base`.
pub fn routes(base: Router, api: NodeApi) -> Router {
    let (a1, a2, a3, a4, a5, a6, a7) = (
        api.clone(),
        api.clone(),
        api.clone(),
        api.clone(),
        api.clone(),
        api.clone(),
        api.clone(),
    );
    base.route(
        Method::GET,
        ROOTS_PATH,
        move |_req: Request<Incoming>, _peer: PeerInfo| {
            let answer = RootsResponse {
                roots_pem: a1.ca.root_pem().to_string(),
                trust_domain: a1.ca.config().trust_domain.clone(),
            };
            async move { json_response(StatusCode::OK, &answer) }
        },
    )
    .route(Method::POST, TOKEN_PATH, move |req, peer| {
        token(a2.clone(), req, peer)
    })
    .route(Method::POST, REGISTER_PATH, move |req, peer| {
        register(a3.clone(), req, peer)
    })
    .route(
        Method::POST,
        LEAVE_PATH,
        move |_req: Request<Incoming>, peer: PeerInfo| {
            let api = a4.clone();
            async move {
                match peer.identity.as_ref().and_then(node_of) {
                    Some(node) => remove(&api, node),
                    None => error_response(StatusCode::FORBIDDEN, "only a node may leave"),
                }
            }
        },
    )
    .route(
        Method::POST,
        REMOVE_PATH,
        move |req: Request<Incoming>, peer: PeerInfo| {
            let api = a5.clone();
            async move {
                if let Err(resp) = require_admin(&peer, &api.ca) {
                    return resp;
                }
                match read_json::<RemoveRequest>(req, MAX_BODY).await {
                    Ok(body) => remove(&api, &body.node),
                    Err(resp) => resp,
                }
            }
        },
    )
    .route(
        Method::GET,
        NODES_PATH,
        move |_req: Request<Incoming>, peer: PeerInfo| {
            let api = a6.clone();
            async move {
                if let Err(resp) = require_admin(&peer, &api.ca) {
                    return resp;
                }
                let nodes = api.nodes.list();
                let placed = nodes
                    .keys()
                    .map(|n| (n.clone(), api.nodes.placed_on(n)))
                    .collect();
                json_response(StatusCode::OK, &NodesResponse { nodes, placed })
            }
        },
    )
    .route(Method::POST, CSR_PATH, move |req, peer| {
        csr(a7.clone(), req, peer)
    })
    .route(
        Method::GET,
        STATUS_PATH,
        move |_req: Request<Incoming>, peer: PeerInfo| {
            let api = api.clone();
            async move {
                if let Err(resp) = require_admin(&peer, &api.ca) {
                    return resp;
                }
                let mut report = crate::controlplane::api::status_report(&api.push, &api.ca);
                let issued = api.ca.issued();
                report.nodes = api
                    .nodes
                    .status(|id| issued.get(id).map(|i| crate::ca::unix_secs(i.not_after)));
                json_response(StatusCode::OK, &report)
            }
        },
    )
}

async fn token(api: NodeApi, req: Request<Incoming>, peer: PeerInfo) -> Response<ApiBody> {
    if let Err(resp) = require_admin(&peer, &api.ca) {
        return resp;
    }
    let body: TokenRequest = match read_json(req, MAX_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if !valid_node_name(&body.node) {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not a node name (lowercase letters, digits and '-', at most 40)",
                body.node
            ),
        );
    }
    let id = match node_id(&api.ca.config().trust_domain, &body.node) {
        Ok(id) => id,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let ttl = Duration::from_secs(body.ttl_secs.clamp(1, 7 * 24 * 3600));
    let secret = match api.ca.issue_token_with_ttl(&id, ttl) {
        Ok(t) => t.as_str().to_string(),
        Err(e) => return crate::api::csr::ca_error_response(&e),
    };
    api.nodes.admit(&body.node);
    let fingerprint = api
        .ca
        .roots()
        .first()
        .map(|r| super::token::fingerprint(r))
        .unwrap_or_default();
    let services = api.nodes.placed_on(&body.node).into_keys().collect();
    json_response(
        StatusCode::OK,
        &TokenResponse {
            secret,
            identity: id.to_string(),
            fingerprint,
            services,
        },
    )
}

async fn register(api: NodeApi, req: Request<Incoming>, peer: PeerInfo) -> Response<ApiBody> {
    let Some(node) = peer.identity.as_ref().and_then(node_of).map(str::to_string) else {
        return error_response(StatusCode::FORBIDDEN, "only a node may register");
    };
    let body: RegisterRequest = match read_json(req, MAX_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let address = body.address.unwrap_or(peer.remote_addr.ip());
    if !api.nodes.register(&node, address) {
        return error_response(
            StatusCode::FORBIDDEN,
            format!("node {node} was removed; create a new token to join it again"),
        );
    }
    let mut proxies = Vec::new();
    for (workload, (replicas, identity)) in api.nodes.placed_identities(&node) {
        for instance in 0..replicas {
            match api
                .ca
                .issue_pod_token(&identity, &holder(&node, &workload, instance))
            {
                Ok(t) => proxies.push(PlannedProxy {
                    workload: workload.clone(),
                    instance,
                    identity: identity.to_string(),
                    token: t.as_str().to_string(),
                }),
                Err(e) => return crate::api::csr::ca_error_response(&e),
            }
        }
    }
    tracing::info!(node, %address, proxies = proxies.len(), "node registered");
    reload_now(&api, format!("node {node} joined from {address}")).await;
    json_response(
        StatusCode::OK,
        &NodePlan {
            node,
            address,
            proxies,
            roots_pem: api.ca.root_pem().to_string(),
        },
    )
}

fn remove(api: &NodeApi, node: &str) -> Response<ApiBody> {
    if !api.nodes.remove(node) {
        return error_response(StatusCode::NOT_FOUND, format!("no node {node}"));
    }
    let prefix = format!("node/{node}/");
    let revoked_tokens = api
        .ca
        .revoke_pod_tokens(|h| h.starts_with(&prefix))
        .unwrap_or(0);
    let revoked_serials = api.nodes.get(node).map_or(0, |r| r.serials.len());
    tracing::info!(node, revoked_serials, revoked_tokens, "node removed");
    reload(api, format!("node {node} removed"));
    json_response(
        StatusCode::OK,
        &RemoveResponse {
            node: node.to_string(),
            revoked_serials,
            revoked_tokens,
        },
    )
}

/// The node a CSR is made for: the node of a node identity, of the pod token's holder, or
/// of the certificate it renews.
fn owner(
    api: &NodeApi,
    body: &CsrRequest,
    identity: Option<&SpiffeId>,
    peer: &PeerInfo,
) -> Option<String> {
    if let Some(n) = identity.and_then(node_of) {
        return Some(n.to_string());
    }
    if let Some(h) = body.token.as_deref().and_then(|t| api.ca.token_holder(t))
        && let Some(rest) = h.strip_prefix("node/")
    {
        return rest.split('/').next().map(str::to_string);
    }
    peer.serial
        .as_deref()
        .and_then(|s| api.nodes.owner_of_serial(s))
}

async fn csr(api: NodeApi, req: Request<Incoming>, peer: PeerInfo) -> Response<ApiBody> {
    let body: CsrRequest = match read_json(req, MAX_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let identity: Option<SpiffeId> = body.identity.parse().ok();
    let owner = owner(&api, &body, identity.as_ref(), &peer);
    if let Some(node) = &owner
        && api.nodes.is_removed(node)
    {
        tracing::warn!(node, identity = %body.identity, "CSR of a removed node refused");
        return error_response(
            StatusCode::FORBIDDEN,
            format!("node {node} was removed from the mesh"),
        );
    }
    let ca = api.ca.clone();
    let peer_id = peer.identity.clone();
    let result = tokio::task::spawn_blocking(move || ca.handle_csr(&body, peer_id.as_ref())).await;
    match result {
        Ok(Ok(answer)) => {
            if let Some(node) = owner {
                let leaf = CertificateDer::pem_slice_iter(answer.cert_chain_pem.as_bytes())
                    .next()
                    .and_then(Result::ok);
                if let Some(serial) = leaf.and_then(|c| crate::api::tls::serial_of(&c)) {
                    api.nodes.add_serial(&node, serial);
                }
            }
            json_response(StatusCode::OK, &answer)
        }
        Ok(Err(e)) => crate::api::csr::ca_error_response(&e),
        Err(e) => {
            tracing::error!(error = %e, "CSR task failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}
