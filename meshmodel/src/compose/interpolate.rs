//! Compose's variable interpolation (`$VAR`, `${VAR:-default}`, `${VAR:?error}`, ...) on the
//! scalar values of a parsed YAML document, and the environments it reads from.
//!
//! Behaviour follows compose-go's `template` package: keys are never interpolated, `$$` is a
//! literal `$`, defaults and alternatives are themselves interpolated (`${A:-${B}}`), and a `$`
//! that starts no valid `$VAR` or `${...}` is an error (escape it as `$$`), as in compose. An unset variable with no default becomes the empty string plus a warning.

use std::collections::{BTreeMap, HashMap};

use meshapi::yaml::Value;

use meshapi::diag::{FieldError, join_path};

/// Where interpolation looks variables up. A trait so tests never touch the process
/// environment.
pub trait EnvLookup {
    /// The value of `name`, or `None` when it is unset (set-but-empty is `Some("")`).
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvLookup for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl EnvLookup for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// Two environments, `over` winning over `under`: compose's process environment over the
/// project's `.env` file is `Layered { over: ProcessEnv, under: dotenv_map }`.
#[derive(Debug, Clone, Default)]
pub struct Layered<A, B> {
    /// Looked up first.
    pub over: A,
    /// Looked up when `over` does not have the variable.
    pub under: B,
}

impl<A: EnvLookup, B: EnvLookup> EnvLookup for Layered<A, B> {
    fn get(&self, name: &str) -> Option<String> {
        self.over.get(name).or_else(|| self.under.get(name))
    }
}

/// What interpolation found: errors (`${VAR:?msg}` on an unset variable, malformed templates)
/// and warnings (unset variables without a default, which become empty strings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interpolation {
    /// Stop loading: the value could not be computed.
    pub errors: Vec<FieldError>,
    /// Worth showing: the value was computed but probably not as meant.
    pub warnings: Vec<FieldError>,
}

/// Interpolates every string scalar in `value` (mapping values and sequence items, including
/// `x-*` extension fields; never mapping keys), in place. Paths in the findings are relative
/// to `value`.
pub fn interpolate(value: &mut Value, env: &dyn EnvLookup) -> Interpolation {
    let mut out = Interpolation::default();
    walk(value, env, "", &mut out);
    out
}

fn walk(value: &mut Value, env: &dyn EnvLookup, path: &str, out: &mut Interpolation) {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                let mut warnings = Vec::new();
                match substitute(s, env, &mut warnings) {
                    Ok(new) => *s = new,
                    Err(message) => out.errors.push(FieldError::new(path, message)),
                }
                warnings.sort();
                warnings.dedup();
                out.warnings
                    .extend(warnings.into_iter().map(|m| FieldError::new(path, m)));
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, env, &format!("{path}[{i}]"), out);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = match key {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => "?".to_string(),
                };
                walk(item, env, &join_path(path, &key), out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Interpolates one string. Warnings (unset variables) are pushed to `warnings`; the error is
/// the message of the first `?` form that fired or the malformed template.
pub fn substitute(
    input: &str,
    env: &dyn EnvLookup,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    substitute_at(input, env, warnings, 0)
}

/// How deep `${A:-${B:-...}}` may nest; deeper input is refused instead of exhausting the stack.
pub const MAX_NESTING: usize = 16;

fn substitute_at(
    input: &str,
    env: &dyn EnvLookup,
    warnings: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = matching_brace(tail).ok_or_else(|| {
                format!("invalid interpolation format for {input:?}: unterminated \"${{\"")
            })?;
            out.push_str(&braced(&tail[..end], input, env, warnings, depth)?);
            rest = &tail[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(format!(
                    "invalid interpolation format for {input:?}: a '$' must start $VAR or ${{VAR}}, or be escaped as '$$'"
                ));
            } else {
                let name = &after[..len];
                out.push_str(&lookup_or_warn(name, env, warnings));
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Length of the variable name at the start of `s`: `[_A-Za-z][_A-Za-z0-9]*`.
fn name_len(s: &str) -> usize {
    let mut len = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        len = i + c.len_utf8();
    }
    len
}

/// Index of the `}` closing a `${` whose body starts `s`, counting nested `${`.
fn matching_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn lookup_or_warn(name: &str, env: &dyn EnvLookup, warnings: &mut Vec<String>) -> String {
    env.get(name).unwrap_or_else(|| {
        warnings.push(format!(
            "the {name:?} variable is not set; defaulting to a blank string"
        ));
        String::new()
    })
}

/// One `${...}` body: a name, optionally followed by `:-`, `-`, `:?`, `?`, `:+` or `+` and a
/// word that is itself interpolated.
fn braced(
    body: &str,
    input: &str,
    env: &dyn EnvLookup,
    warnings: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    if depth >= MAX_NESTING {
        return Err(format!(
            "interpolation nested more than {MAX_NESTING} levels deep"
        ));
    }
    let nested =
        |word: &str, warnings: &mut Vec<String>| substitute_at(word, env, warnings, depth + 1);
    let len = name_len(body);
    let invalid = || format!("invalid interpolation format for {input:?}: \"${{{body}}}\"");
    if len == 0 {
        return Err(invalid());
    }
    let name = &body[..len];
    let op = &body[len..];
    if op.is_empty() {
        return Ok(lookup_or_warn(name, env, warnings));
    }
    let (colon, op) = match op.strip_prefix(':') {
        Some(op) => (true, op),
        None => (false, op),
    };
    let mut chars = op.chars();
    let kind = chars.next().ok_or_else(invalid)?;
    let word = chars.as_str();
    let value = env.get(name);
    // With a colon, set-but-empty counts as unset.
    let set = match &value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    match kind {
        '-' if set => Ok(value.unwrap_or_default()),
        '-' => nested(word, warnings),
        '+' if set => nested(word, warnings),
        '+' => Ok(String::new()),
        '?' if set => Ok(value.unwrap_or_default()),
        '?' => {
            let reason = nested(word, warnings)?;
            Err(if reason.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {reason}")
            })
        }
        _ => Err(invalid()),
    }
}
