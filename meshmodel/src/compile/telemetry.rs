//! One workload's telemetry ([`meshapi::telemetry::TelemetryConfig`]) from the top-level
//! `x-mesh` (Istio's MeshConfig names) and the Telemetry resources that apply to it, in
//! Istio's order: mesh-wide (root namespace, no selector), then its namespace's without a
//! selector, then the one whose `selector` matches it. One per level: where several are (two
//! without a selector in one namespace, two selecting one workload), Istio takes the oldest,
//! here the first in file order, and `meshctl check` warns (MESH0302). A later level
//! overrides what it sets (sampling, access logging on/off, tracing provider), adds custom
//! tags, and appends metrics overrides (so a workload's override wins over the mesh's).

use meshapi::telemetry::TelemetryConfig;
use meshapi::telemetry::access_log::AccessLogConfig;
use meshapi::telemetry::metrics::{
    MetricName, MetricOverride, MetricsConfig, ReporterMode, WorkloadLabels,
};
use meshapi::telemetry::tracing::{CustomTag, TracingConfig};

use super::CompileError;
use crate::istio::IstioResource;
use crate::istio::telemetry::{self as t, TagOperation, Telemetry, WorkloadMode};
use crate::model::{Mesh, Workload};

/// The Telemetry resources that apply to `me`, least specific first: at most one per level,
/// the first in file order (Istio's oldest).
pub fn telemetries_for<'m>(mesh: &'m Mesh, me: &Workload) -> Vec<&'m Telemetry> {
    let root = mesh
        .compose
        .as_ref()
        .map_or(crate::model::ROOT_NAMESPACE, |c| c.root_namespace());
    let mut levels: [Option<&Telemetry>; 3] = Default::default();
    for r in &mesh.resources {
        let IstioResource::Telemetry(tel) = &r.resource else {
            continue;
        };
        let ns = r.id.namespace.as_str();
        let selector = tel
            .spec
            .selector
            .as_ref()
            .filter(|s| !s.match_labels.is_empty());
        let level = match selector {
            None if ns == root => 0,
            None if ns == me.namespace => 1,
            Some(s) if ns == me.namespace && me.matches(&s.match_labels) => 2,
            _ => continue,
        };
        levels[level].get_or_insert(tel);
    }
    levels.into_iter().flatten().collect()
}

fn reporter(m: Option<WorkloadMode>) -> ReporterMode {
    match m {
        None | Some(WorkloadMode::ClientAndServer) => ReporterMode::ClientAndServer,
        Some(WorkloadMode::Client) => ReporterMode::Client,
        Some(WorkloadMode::Server) => ReporterMode::Server,
    }
}

fn custom_tag(tag: &t::CustomTag) -> Option<CustomTag> {
    if let Some(l) = &tag.literal {
        return Some(CustomTag::Literal {
            value: l.value.clone(),
        });
    }
    if let Some(h) = &tag.header {
        return Some(CustomTag::Header {
            name: h.name.clone(),
            default_value: h.default_value.clone(),
        });
    }
    tag.environment.as_ref().map(|e| CustomTag::Environment {
        name: e.name.clone(),
        default_value: e.default_value.clone(),
    })
}

/// The compiled telemetry of `me`.
pub fn telemetry_of(mesh: &Mesh, me: &Workload) -> Result<TelemetryConfig, CompileError> {
    let compose = mesh.compose.as_ref();
    let mut access_log = AccessLogConfig {
        enabled: compose.is_some_and(|c| c.access_log_on()),
        encoding: compose.map(|c| c.access_log_encoding()).unwrap_or_default(),
    };
    let mut tracing = TracingConfig::default();
    if let Some(s) = compose.and_then(|c| c.tracing_sampling()) {
        tracing.sampling_percent = s;
    }
    let mut provider = compose
        .and_then(|c| c.default_tracing_provider())
        .map(str::to_string);
    let mut metrics = MetricsConfig {
        workload: WorkloadLabels {
            name: me.compose_name.clone(),
            namespace: me.namespace.clone(),
            app: me.labels.get("app").cloned().unwrap_or_default(),
            version: me.labels.get("version").cloned().unwrap_or_default(),
            service: me.service.clone(),
        },
        overrides: Vec::new(),
    };
    for tel in telemetries_for(mesh, me) {
        let s = &tel.spec;
        if let Some(tr) = s.tracing.first() {
            if let Some(p) = tr.random_sampling_percentage {
                tracing.sampling_percent = p.value();
            }
            if let Some(p) = tr.providers.first() {
                provider = Some(p.name.clone());
            }
            if tr.disable_span_reporting == Some(true) {
                provider = None;
            }
            for (name, tag) in &tr.custom_tags {
                if let Some(c) = custom_tag(tag) {
                    tracing.custom_tags.insert(name.clone(), c);
                }
            }
        }
        if let Some(a) = s.access_logging.first() {
            access_log.enabled = a.disabled != Some(true);
        }
        for m in &s.metrics {
            for o in &m.overrides {
                let sel = o.match_.as_ref();
                let mut out = MetricOverride {
                    metric: sel
                        .and_then(|m| m.metric)
                        .and_then(|m| m.served())
                        .unwrap_or(MetricName::AllMetrics),
                    mode: reporter(sel.and_then(|m| m.mode)),
                    disabled: o.disabled,
                    remove_tags: Vec::new(),
                    tags: Default::default(),
                };
                for (tag, op) in &o.tag_overrides {
                    match op.operation.unwrap_or(TagOperation::Upsert) {
                        TagOperation::Remove => out.remove_tags.push(tag.clone()),
                        TagOperation::Upsert => {
                            if let Some(v) = op.value.as_deref().and_then(t::string_literal) {
                                out.tags.insert(tag.clone(), v.to_string());
                            }
                        }
                    }
                }
                metrics.overrides.push(out);
            }
        }
    }
    if let Some(name) = provider {
        let p = compose
            .and_then(|c| c.extension_provider(&name))
            .ok_or_else(|| CompileError::Telemetry {
                workload: me.compose_name.clone(),
                message: format!("tracing provider {name:?} is not in x-mesh.extensionProviders"),
            })?;
        tracing.collector = p.otlp_http_url();
    }
    Ok(TelemetryConfig {
        metrics,
        access_log,
        tracing,
    })
}
