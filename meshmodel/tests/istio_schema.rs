//! The model against Istio's CRD schema itself (`$MESHCTL_CONFORMANCE_DIR/istio/crd-all.gen.yaml`):
//! for each served kind and version, a document with every field of the schema set is
//! synthesized from the openAPIV3Schema. It must load (every field exists with a compatible
//! type), serialize back with every field kept, and an unknown key injected into any object of it
//! must be refused with that key's path (no struct lets unknown fields through).

use meshapi::yaml::{Mapping, Value};
use meshmodel::istio::{IstioKind, IstioResource};

/// (kind, version, schema) for each served kind and version in the CRD file.
/// `None` (the test returns) when the corpus is not there.
fn schemas() -> Option<Vec<(IstioKind, String, Value)>> {
    let crds = meshtest::conformance_dir()?.join("crd-all.gen.yaml");
    let text = std::fs::read_to_string(crds).expect("read crd-all.gen.yaml");
    let mut out = Vec::new();
    for crd in meshapi::yaml::documents(&text).expect("crd yaml") {
        let Some(kind) = crd
            .get("spec")
            .and_then(|s| s.get("names"))
            .and_then(|n| n.get("kind"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(k) = IstioKind::ALL.into_iter().find(|k| k.name() == kind) else {
            continue;
        };
        for v in crd["spec"]["versions"].as_sequence().expect("versions") {
            let name = v["name"].as_str().expect("version name").to_string();
            out.push((k, name, v["schema"]["openAPIV3Schema"].clone()));
        }
    }
    Some(out)
}

/// A valid sample value for a schema node named `name`.
fn sample(name: &str, schema: &Value) -> Value {
    let cel = schema
        .get("x-kubernetes-validations")
        .map(|v| meshapi::yaml::to_string(v).expect("cel"))
        .unwrap_or_default();
    if let Some(e) = schema.get("enum").and_then(Value::as_sequence) {
        return e.last().cloned().expect("enum value");
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut m = Mapping::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_mapping) {
                for (k, v) in props {
                    let k = k.as_str().expect("property name");
                    // An alias of mirrorPercent: both at once would be a duplicate field.
                    if k == "mirror_percent" {
                        continue;
                    }
                    m.insert(k.into(), sample(k, v));
                }
            } else if let Some(ap) = schema.get("additionalProperties") {
                let key = if name == "portLevelMtls" {
                    "8080"
                } else {
                    "app"
                };
                m.insert(key.into(), sample(key, ap));
            }
            Value::Mapping(m)
        }
        Some("array") => Value::Sequence(vec![sample(name, &schema["items"])]),
        Some("boolean") => Value::Bool(true),
        Some("integer") => {
            let min = schema
                .get("minimum")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            Value::Number(min.into())
        }
        Some("number") => Value::Number(1.5.into()),
        Some("string") => {
            let s = if cel.contains("duration(") {
                "1s"
            } else if schema.get("format").and_then(Value::as_str) == Some("byte") {
                "aGVsbG8="
            } else {
                match name {
                    "idleTimeout"
                    | "ttl"
                    | "budgetInterval"
                    | "weightExpirationPeriod"
                    | "weightStabilizationPeriod"
                    | "weightUpdatePeriod" => "1s",
                    "retryOn" => "5xx,503",
                    "principals" | "notPrincipals" => "cluster.local/ns/default/sa/frontend",
                    "serviceAccounts" | "notServiceAccounts" => "default/frontend",
                    "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                        "10.0.0.0/8"
                    }
                    "ports" | "notPorts" => "8080",
                    "group" => "",
                    "namespace" => "",
                    _ => "v1",
                }
            };
            Value::String(s.into())
        }
        _ => Value::Null,
    }
}

fn document(kind: IstioKind, version: &str, schema: &Value) -> Value {
    let mut doc = Mapping::new();
    doc.insert(
        "apiVersion".into(),
        format!("{}/{version}", kind.group()).into(),
    );
    doc.insert("kind".into(), kind.name().into());
    let mut meta = Mapping::new();
    meta.insert("name".into(), "everything".into());
    doc.insert("metadata".into(), Value::Mapping(meta));
    doc.insert("spec".into(), sample("spec", &schema["properties"]["spec"]));
    Value::Mapping(doc)
}

/// Paths (in the loader's `a.b[0].c` form) of every object in `v` that has fixed properties in
/// `schema`, with the node's value.
fn object_paths(path: &str, v: &Value, schema: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            let props = schema.get("properties").and_then(Value::as_mapping);
            if props.is_some() {
                out.push(path.to_string());
            }
            for (k, child) in m {
                let k = k.as_str().expect("key");
                let child_schema = match props {
                    Some(p) => p.get(k).cloned().unwrap_or(Value::Null),
                    None => schema
                        .get("additionalProperties")
                        .cloned()
                        .unwrap_or(Value::Null),
                };
                let p = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                object_paths(&p, child, &child_schema, out);
            }
        }
        Value::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                object_paths(&format!("{path}[{i}]"), child, &schema["items"], out);
            }
        }
        _ => {}
    }
}

/// The schema node of the object at `path` (`spec.http[0].route[0]`).
fn schema_at(root: &Value, path: &str) -> Value {
    let mut cur = root.clone();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexed) = match part.split_once('[') {
            Some((k, _)) => (k, true),
            None => (part, false),
        };
        cur = match cur.get("properties").and_then(|p| p.get(key)) {
            Some(s) => s.clone(),
            None => cur
                .get("additionalProperties")
                .cloned()
                .unwrap_or(Value::Null),
        };
        if indexed {
            cur = cur["items"].clone();
        }
    }
    cur
}

fn node_mut<'a>(v: &'a mut Value, path: &str) -> &'a mut Value {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, idx) = match part.split_once('[') {
            Some((k, rest)) => (
                k,
                Some(rest.trim_end_matches(']').parse::<usize>().expect("index")),
            ),
            None => (part, None),
        };
        cur = cur.get_mut(key).expect("path exists");
        if let Some(i) = idx {
            cur = cur.get_mut(i).expect("index exists");
        }
    }
    cur
}

/// Every key path in `v` (`spec.http[0].route`), leaves and objects alike.
fn key_paths(path: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let p = format!("{path}.{}", k.as_str().unwrap_or("?"));
                out.push(p.clone());
                key_paths(&p, child, out);
            }
        }
        Value::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                key_paths(&format!("{path}[{i}]"), child, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_schema_field_of_every_served_version_loads_and_serializes() {
    let Some(schemas) = schemas() else {
        return;
    };
    // VirtualService, DestinationRule, ServiceEntry and Sidecar: 3 versions each; the security
    // kinds (PeerAuthentication, AuthorizationPolicy, RequestAuthentication) and Telemetry: 2
    // each.
    assert_eq!(schemas.len(), 20);
    for (kind, version, schema) in &schemas {
        let doc = document(*kind, version, schema);
        let r = IstioResource::from_value(
            &format!("{}/{version}", kind.group()),
            kind.name(),
            doc.clone(),
        )
        .unwrap_or_else(|e| panic!("{kind} {version}: {}: {}", e.path, e.message));
        assert_eq!(r.kind(), *kind);
        // Serialized back, every field written is still there.
        let out = meshapi::yaml::to_value(&r).expect("serialize");
        let (mut want, mut got) = (Vec::new(), Vec::new());
        key_paths("", &doc, &mut want);
        key_paths("", &out, &mut got);
        let missing: Vec<_> = want.iter().filter(|p| !got.contains(p)).collect();
        assert!(
            missing.is_empty(),
            "{kind} {version}: fields lost on serialization: {missing:?}"
        );
    }
}

#[test]
fn an_unknown_key_in_any_object_is_refused_with_its_path() {
    let Some(schemas) = schemas() else {
        return;
    };
    for (kind, version, schema) in schemas {
        let api_version = format!("{}/{version}", kind.group());
        let doc = document(kind, &version, &schema);
        let mut objects = Vec::new();
        object_paths(
            "spec",
            &doc["spec"],
            &schema["properties"]["spec"],
            &mut objects,
        );
        assert!(objects.len() >= 4, "{kind}: {objects:?}");
        objects.push(String::new());
        objects.push("metadata".into());
        for obj in objects {
            let mut bad = doc.clone();
            node_mut(&mut bad, &obj)
                .as_mapping_mut()
                .unwrap_or_else(|| panic!("{kind} {obj} is an object"))
                .insert("zzUnknownField".into(), Value::Number(1.into()));
            let err = IstioResource::from_value(&api_version, kind.name(), bad)
                .err()
                .unwrap_or_else(|| panic!("{kind} {version}: unknown key accepted at {obj:?}"));
            let want = if obj.is_empty() {
                "zzUnknownField".to_string()
            } else {
                format!("{obj}.zzUnknownField")
            };
            assert_eq!(err.path, want, "{kind} {version}");
            assert!(
                err.message
                    .starts_with("unknown field `zzUnknownField`, expected"),
                "{}",
                err.message
            );
            // The fields the model accepts there are exactly the schema's.
            let node_schema = schema_at(&schema, &obj);
            if let Some(props) = node_schema
                .get("properties")
                .and_then(Value::as_mapping)
                .filter(|_| obj.starts_with("spec"))
            {
                let mut want: Vec<&str> = props.keys().filter_map(Value::as_str).collect();
                let mut got: Vec<&str> = err.message.split('`').skip(3).step_by(2).collect();
                want.sort();
                got.sort();
                assert_eq!(
                    got, want,
                    "{kind} {version} {obj}: model fields vs schema properties"
                );
            }
        }
    }
}

#[test]
fn all_versions_of_a_kind_share_one_schema() {
    let Some(schemas) = schemas() else {
        return;
    };
    for kind in IstioKind::ALL {
        let of_kind: Vec<_> = schemas.iter().filter(|(k, _, _)| *k == kind).collect();
        let mut versions: Vec<&str> = of_kind.iter().map(|(_, v, _)| v.as_str()).collect();
        versions.sort();
        let mut served: Vec<&str> = kind.versions().to_vec();
        served.sort();
        assert_eq!(versions, served, "{kind}: served versions match the CRD");
        for (_, v, s) in &of_kind {
            assert_eq!(s, &of_kind[0].2, "{kind} {v} differs from {}", of_kind[0].1);
        }
    }
}
