//! Compiling RequestAuthentications for one workload into the proxy's
//! [`meshapi::authn::RequestAuthentication`] section: which resources apply (root namespace
//! mesh-wide, then the workload's namespace, narrowed by `selector` or `targetRef(s)` as for
//! AuthorizationPolicy), and each `jwtRules` entry with Istio's defaults written out.

use meshapi::authn::{
    ClaimToHeader, DEFAULT_HEADER, DEFAULT_PARAM, DEFAULT_PREFIX, JwtRule, RequestAuthentication,
    TokenHeader,
};

use super::authz::{Scope, namespace_of, selects};
use crate::istio::IstioResource;
use crate::istio::request_authentication as ra;
use crate::model::{Mesh, Workload};

/// The RequestAuthentications of a loaded mesh, in file order.
pub fn request_authentications(mesh: &Mesh) -> Vec<&ra::RequestAuthentication> {
    mesh.resources
        .iter()
        .filter_map(|r| match &r.resource {
            IstioResource::RequestAuthentication(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// Whether `r` applies to `workload` (the rules of [`super::authz::applies_to`]).
pub fn applies_to(
    r: &ra::RequestAuthentication,
    workload: &Workload,
    root_namespace: &str,
) -> bool {
    let spec = &r.spec;
    selects(
        &r.metadata,
        Scope {
            selector: spec.selector.as_ref(),
            target_ref: spec.target_ref.as_ref(),
            target_refs: &spec.target_refs,
        },
        workload,
        root_namespace,
    )
}

/// The rules of every resource among `all` that applies to `workload`, root namespace first;
/// `None` when no rule applies (the proxy then never looks at tokens).
pub fn compile_for_workload(
    all: &[&ra::RequestAuthentication],
    workload: &Workload,
    root_namespace: &str,
) -> Option<RequestAuthentication> {
    let mut selected: Vec<&ra::RequestAuthentication> = all
        .iter()
        .copied()
        .filter(|r| applies_to(r, workload, root_namespace))
        .collect();
    selected.sort_by_key(|r| namespace_of(&r.metadata) != root_namespace);
    let rules: Vec<JwtRule> = selected
        .iter()
        .flat_map(|r| {
            let source = format!(
                "{}/{}",
                namespace_of(&r.metadata),
                r.metadata.name.as_deref().unwrap_or("")
            );
            r.spec
                .jwt_rules
                .iter()
                .map(move |j| compile_rule(j, source.clone()))
        })
        .collect();
    (!rules.is_empty()).then(|| RequestAuthentication {
        rules,
        ..RequestAuthentication::default()
    })
}

/// One `jwtRules` entry. With no location given, Istio reads `Authorization: Bearer <token>`
/// and `?access_token=`.
fn compile_rule(j: &ra::JwtRule, source: String) -> JwtRule {
    let defaults =
        j.from_headers.is_empty() && j.from_params.is_empty() && j.from_cookies.is_empty();
    let from_headers = if defaults {
        vec![TokenHeader {
            name: DEFAULT_HEADER.to_string(),
            prefix: DEFAULT_PREFIX.to_string(),
        }]
    } else {
        j.from_headers
            .iter()
            .map(|h| TokenHeader {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect()
    };
    let from_params = if defaults {
        vec![DEFAULT_PARAM.to_string()]
    } else {
        j.from_params.clone()
    };
    JwtRule {
        source,
        issuer: j.issuer.clone(),
        audiences: j.audiences.clone(),
        // Validation lets at most one of them through.
        jwks: j.jwks.clone(),
        jwks_uri: if j.jwks.is_some() {
            None
        } else {
            j.uri().map(str::to_string)
        },
        timeout: j.timeout.map(|t| meshapi::proxy::Dur(t.get())),
        from_headers,
        from_params,
        from_cookies: j.from_cookies.clone(),
        forward_original_token: j.forward_original_token.unwrap_or(false),
        output_payload_to_header: j
            .output_payload_to_header
            .as_ref()
            .map(|h| h.to_ascii_lowercase()),
        output_claim_to_headers: j
            .output_claim_to_headers
            .iter()
            .map(|c| ClaimToHeader {
                header: c.header.to_ascii_lowercase(),
                claim: c.claim.clone(),
            })
            .collect(),
    }
}
