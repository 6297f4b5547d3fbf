//! The short summary of what a reload changed, like `kubectl diff`: one line per added (`+`),
//! removed (`-`) or changed (`~`) compose service or Istio resource, and for a changed one the
//! first few changed fields as `path: old -> new`, from the normalized model.

use std::collections::BTreeMap;

use meshmodel::model::Mesh;
use serde_json::Value;

/// Changed fields shown per changed item.
const MAX_FIELDS: usize = 5;

/// The normalized model, one JSON value per service (`service/<name>`) and per resource
/// (`<Kind>/<name>.<namespace>`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model(BTreeMap<String, Value>);

impl Model {
    /// The model of a loaded mesh.
    pub fn of(mesh: &Mesh) -> Model {
        let mut out = BTreeMap::new();
        if let Some(compose) = &mesh.compose {
            for (name, svc) in &compose.services {
                if let Ok(v) = serde_json::to_value(svc) {
                    out.insert(format!("service/{name}"), v);
                }
            }
        }
        for r in &mesh.resources {
            if let Ok(v) = serde_json::to_value(&r.resource) {
                out.insert(r.id.to_string(), v);
            }
        }
        Model(out)
    }
}

fn flatten(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(v, p, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(v, format!("{path}[{i}]"), out);
            }
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

/// The lines describing `old` -> `new`.
pub fn diff(old: &Model, new: &Model) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, v) in &new.0 {
        match old.0.get(key) {
            None => lines.push(format!("+ {key}")),
            Some(o) if o != v => {
                lines.push(format!("~ {key}"));
                let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
                flatten(o, String::new(), &mut a);
                flatten(v, String::new(), &mut b);
                let mut fields: Vec<String> = Vec::new();
                for (p, nv) in &b {
                    match a.get(p) {
                        Some(ov) if ov == nv => {}
                        Some(ov) => fields.push(format!("    {p}: {ov} -> {nv}")),
                        None => fields.push(format!("    {p}: + {nv}")),
                    }
                }
                for (p, ov) in &a {
                    if !b.contains_key(p) {
                        fields.push(format!("    {p}: - {ov}"));
                    }
                }
                let more = fields.len().saturating_sub(MAX_FIELDS);
                lines.extend(fields.into_iter().take(MAX_FIELDS));
                if more > 0 {
                    lines.push(format!("    ... and {more} more field(s)"));
                }
            }
            Some(_) => {}
        }
    }
    for key in old.0.keys() {
        if !new.0.contains_key(key) {
            lines.push(format!("- {key}"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_removed_and_changed_fields() {
        let old = Model(BTreeMap::from([
            ("a".to_string(), serde_json::json!({"x": 1, "y": [1, 2]})),
            ("gone".to_string(), serde_json::json!({})),
        ]));
        let new = Model(BTreeMap::from([
            ("a".to_string(), serde_json::json!({"x": 2, "y": [1]})),
            ("b".to_string(), serde_json::json!({})),
        ]));
        assert_eq!(
            diff(&old, &new),
            ["~ a", "    x: 1 -> 2", "    y[1]: - 2", "+ b", "- gone"]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
