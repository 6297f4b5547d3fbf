//! The typed pieces of a compose service that have a short and a long syntax (ports, volumes,
//! build, env_file, command, healthcheck test, restart). Each reads both and serializes the
//! long one, as `docker compose config` prints it.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::syntax::{ShortForm, opt_bool, opt_text, port};

/// A published or exposed port, long syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Port the container listens on. Required.
    #[serde(deserialize_with = "port")]
    pub target: u16,
    /// Host port or range (`8080`, `8000-8010`); none: not published on the host.
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub published: Option<String>,
    /// Host address to bind; none: all addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// `tcp` or `udp`. Default `tcp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// `ingress` or `host`. Default `ingress`.
    #[serde(default = "ingress")]
    pub mode: String,
    /// A name for the port; its prefix (`http-`, `grpc-`) gives the mesh protocol as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Application protocol (`http`, `grpc`, ...); wins over the name prefix, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

fn tcp() -> String {
    "tcp".to_string()
}

fn ingress() -> String {
    "ingress".to_string()
}

/// `a` or `a-b` as an inclusive range.
fn port_range(text: &str, whole: &str) -> Result<(u16, u16), String> {
    let bad =
        || format!("invalid port {text:?} in {whole:?}: expected a number 0-65535 or a range");
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a, b),
        None => (text, text),
    };
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if b < a {
        return Err(bad());
    }
    Ok((a, b))
}

impl ShortForm for Port {
    /// `[[host_ip:]published:]target[/protocol]`, with ranges on either side; an IPv6 host
    /// address goes in brackets (`[::1]:8080:80`).
    fn from_short(whole: &str) -> Result<Vec<Self>, String> {
        let (spec, protocol) = match whole.rsplit_once('/') {
            Some((s, p)) => (s, p.to_string()),
            None => (whole, tcp()),
        };
        let (host_ip, rest) = if let Some(after) = spec.strip_prefix('[') {
            let (ip, rest) = after
                .split_once("]:")
                .ok_or_else(|| format!("invalid port {whole:?}: unclosed '['"))?;
            (Some(ip.to_string()), rest)
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.len() {
                1 | 2 => (None, spec),
                3 => (Some(parts[0].to_string()), &spec[parts[0].len() + 1..]),
                _ => return Err(format!("invalid port {whole:?}: too many ':'")),
            }
        };
        let (published, target) = match rest.rsplit_once(':') {
            Some((p, t)) => (Some(p), t),
            None => (None, rest),
        };
        let (t0, t1) = port_range(target, whole)?;
        let published = match published {
            Some("") | None => None,
            Some(p) => Some(port_range(p, whole)?),
        };
        let host_ip = host_ip.filter(|ip| !ip.is_empty());
        let count = t1 - t0;
        let mut out = Vec::new();
        for i in 0..=count {
            let published = match published {
                None => None,
                Some((p0, p1)) if p0 == p1 => Some(p0.to_string()),
                Some((p0, p1)) if p1 - p0 == count => Some((p0 + i).to_string()),
                Some((p0, p1)) if count == 0 => Some(format!("{p0}-{p1}")),
                Some(_) => {
                    return Err(format!(
                        "invalid port {whole:?}: host and container ranges differ in size"
                    ));
                }
            };
            out.push(Port {
                target: t0 + i,
                published,
                host_ip: host_ip.clone(),
                protocol: protocol.clone(),
                mode: ingress(),
                name: None,
                app_protocol: None,
            });
        }
        Ok(out)
    }
}

/// A service volume mount, long syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// `bind`, `volume`, `tmpfs`, `npipe` or `cluster`. Required in long syntax.
    #[serde(rename = "type")]
    pub kind: String,
    /// Host path (bind) or volume name (volume); none: an anonymous volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Path inside the container. Required.
    pub target: String,
    /// Mount read-only. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub read_only: Option<bool>,
    /// Bind options (`propagation`, `create_host_path`, `selinux`), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<meshapi::yaml::Value>,
    /// Volume options (`nocopy`, `subpath`), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<meshapi::yaml::Value>,
    /// tmpfs options (`size`, `mode`), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<meshapi::yaml::Value>,
    /// macOS consistency hint, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
}

impl ShortForm for Volume {
    /// `target`, `source:target` or `source:target:mode` (mode: `ro`, `rw`, `z`, `Z`, and
    /// comma-joined combinations). A source starting with `.`, `/` or `~` is a bind mount.
    fn from_short(whole: &str) -> Result<Vec<Self>, String> {
        let parts: Vec<&str> = whole.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [t] => (None, *t, None),
            [s, t] => (Some(*s), *t, None),
            [s, t, m] => (Some(*s), *t, Some(*m)),
            _ => {
                return Err(format!(
                    "invalid volume {whole:?}: expected [source:]target[:mode]"
                ));
            }
        };
        if target.is_empty() || source == Some("") {
            return Err(format!("invalid volume {whole:?}: empty source or target"));
        }
        let mut read_only = None;
        let mut bind = None;
        for m in mode.into_iter().flat_map(|m| m.split(',')) {
            match m {
                "ro" => read_only = Some(true),
                "rw" => read_only = Some(false),
                "z" | "Z" => {
                    let mut map = meshapi::yaml::Mapping::new();
                    map.insert("selinux".into(), m.into());
                    bind = Some(meshapi::yaml::Value::Mapping(map));
                }
                "nocopy" | "cached" | "delegated" | "consistent" | "shared" | "rshared"
                | "slave" | "rslave" | "private" | "rprivate" => {}
                other => return Err(format!("invalid volume mode {other:?} in {whole:?}")),
            }
        }
        let is_bind = source.is_some_and(|s| s.starts_with(['.', '/', '~']));
        Ok(vec![Volume {
            kind: if is_bind { "bind" } else { "volume" }.to_string(),
            source: source.map(str::to_string),
            target: target.to_string(),
            read_only,
            bind,
            volume: None,
            tmpfs: None,
            consistency: None,
        }])
    }
}

/// How to build the image, long syntax.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Build context directory or URL. Default `.`.
    #[serde(default = "dot")]
    pub context: String,
    /// Dockerfile path relative to the context. Default `Dockerfile` (left to the builder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Build arguments (map or `K=V` list); `None` takes the value from the environment.
    #[serde(
        default,
        deserialize_with = "super::syntax::map_or_list",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub args: std::collections::BTreeMap<String, Option<String>>,
    /// Multi-stage target. Default: the last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Labels for the built image.
    #[serde(
        default,
        deserialize_with = "super::syntax::labels",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn dot() -> String {
    ".".to_string()
}

impl ShortForm for Build {
    fn from_short(text: &str) -> Result<Vec<Self>, String> {
        Ok(vec![Build {
            context: text.to_string(),
            ..Build::default()
        }])
    }
}

/// An `env_file` entry, long syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvFileRef {
    /// Path relative to the project directory.
    pub path: String,
    /// A missing file is an error. Default true.
    #[serde(default = "yes", deserialize_with = "bool_or_default")]
    pub required: bool,
    /// `raw` reads values without interpolation or quote handling; none: compose's .env syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

fn yes() -> bool {
    true
}

fn bool_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(opt_bool(d)?.unwrap_or(true))
}

impl ShortForm for EnvFileRef {
    fn from_short(text: &str) -> Result<Vec<Self>, String> {
        Ok(vec![EnvFileRef {
            path: text.to_string(),
            required: true,
            format: None,
        }])
    }
}

/// `command` or `entrypoint`: a string run by a shell, or an exec-form argument list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    /// `command: npm start`: compose splits it shell-style into arguments (no shell is run).
    Shell(String),
    /// `command: ["npm", "start"]`: arguments as written.
    Exec(Vec<String>),
}

/// Healthcheck `test`, normalized to the list form: `["NONE"]`, `["CMD", args...]` or
/// `["CMD-SHELL", "script"]`. A plain string is `CMD-SHELL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthTest(pub Vec<String>);

impl<'de> Deserialize<'de> for HealthTest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = match string_or_list(d)? {
            Command::Shell(s) => return Ok(HealthTest(vec!["CMD-SHELL".to_string(), s])),
            Command::Exec(list) => list,
        };
        match list.first().map(String::as_str) {
            Some("NONE" | "CMD" | "CMD-SHELL") => Ok(HealthTest(list)),
            _ => Err(de::Error::custom(
                "a healthcheck test list must start with NONE, CMD or CMD-SHELL",
            )),
        }
    }
}

/// A string (shell form) or a list of strings (exec form).
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Command, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Command;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Command, E> {
            Ok(Command::Shell(v.to_string()))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<ArgText>()? {
                out.push(item.0);
            }
            Ok(Command::Exec(out))
        }
    }
    d.deserialize_any(V)
}

/// One argument; numbers and booleans are taken as text (`["sleep", 5]`).
struct ArgText(String);

impl<'de> Deserialize<'de> for ArgText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        opt_text(d)?
            .map(ArgText)
            .ok_or_else(|| de::Error::custom("an argument cannot be null"))
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_list(d)
    }
}

/// `restart` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Never restart. The default.
    #[default]
    No,
    /// Always restart, also after a daemon restart.
    Always,
    /// Restart on a non-zero exit, at most `N` times when given.
    OnFailure(Option<u32>),
    /// Like `always`, except after the container was stopped by hand.
    UnlessStopped,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Restart::No => f.write_str("no"),
            Restart::Always => f.write_str("always"),
            Restart::OnFailure(None) => f.write_str("on-failure"),
            Restart::OnFailure(Some(n)) => write!(f, "on-failure:{n}"),
            Restart::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

impl std::str::FromStr for Restart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" | "\"no\"" => Ok(Restart::No),
            "always" => Ok(Restart::Always),
            "unless-stopped" => Ok(Restart::UnlessStopped),
            "on-failure" => Ok(Restart::OnFailure(None)),
            _ => match s.strip_prefix("on-failure:").map(str::parse) {
                Some(Ok(n)) => Ok(Restart::OnFailure(Some(n))),
                _ => Err(format!(
                    "invalid restart policy {s:?}: expected no, always, on-failure[:N] or unless-stopped"
                )),
            },
        }
    }
}

impl Serialize for Restart {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Restart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML 1.1 reads a bare `no` as false.
        let t = opt_text(d)?.unwrap_or_else(|| "no".to_string());
        let t = if t == "false" { "no".to_string() } else { t };
        t.parse().map_err(de::Error::custom)
    }
}
