//! The per-connection index of a [`WorkloadPolicy`](super::WorkloadPolicy): the rules whose
//! connection-level conditions hold for one connection ([`ConnectionFilter`]), each with a
//! request-level guard computed once per connection, so that most rules are ruled out per
//! request by a few integer operations instead of a walk over their terms:
//!
//! - the methods a rule can match (a bit per well-known method, one bit for any other);
//! - the request headers a rule's `when` requires to be present (a bit per header name the
//!   connection's rules use; each name is looked up once per request, not once per rule);
//! - the literal path prefixes one of which the request path must start with (the text before
//!   the first `*`, `{*}` or `{**}` of each `paths` entry).
//!
//! A guard is a necessary condition only: a rule that passes it is still evaluated in full, so
//! the decision is exactly the full evaluation's (meshapi/tests/authz_filter.rs checks that).

use super::matcher::{PathMatch, Peer, StrMatch, TemplateSegment};
use super::rule::{CompiledRule, Cond, Mode, Term};
use super::{CompiledPolicy, HttpAttributes, MatchedPolicy, RequestAttributes};

/// The methods with a bit of their own; any other method shares [`OTHER_METHOD`].
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];
const OTHER_METHOD: u16 = 1 << METHODS.len();
const ANY_METHOD: u16 = u16::MAX;
/// `paths.0` of a candidate without a path guard.
const ANY_PATH: u32 = u32::MAX;

fn method_bit(method: &str) -> u16 {
    METHODS
        .iter()
        .position(|m| *m == method)
        .map_or(OTHER_METHOD, |i| 1 << i)
}

/// One rule left on a connection, with its request-level guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    policy: u32,
    rule: u32,
    /// Methods the rule can match, a bit each ([`method_bit`]).
    methods: u16,
    /// Headers (bits of [`ConnectionFilter::headers`]) the rule requires to be present.
    headers: u64,
    /// The range of [`ConnectionFilter::prefixes`] one of which the path must start with;
    /// `(ANY_PATH, _)`: any path.
    paths: (u32, u32),
}

/// The rules of a [`WorkloadPolicy`](super::WorkloadPolicy) that can still match HTTP requests
/// on one connection: those whose connection-level conditions (peer identity, source and
/// destination address, port, SNI) hold for it, each with a request-level guard (see the
/// module documentation). Built once per connection and policy revision with
/// [`WorkloadPolicy::connection_filter`](super::WorkloadPolicy::connection_filter);
/// [`WorkloadPolicy::evaluate_on`](super::WorkloadPolicy::evaluate_on) then only looks at
/// these rules and decides exactly as [`WorkloadPolicy::evaluate`](super::WorkloadPolicy::evaluate)
/// does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionFilter {
    pub(super) deny: Vec<Candidate>,
    pub(super) allow: Vec<Candidate>,
    pub(super) audit: Vec<Candidate>,
    pub(super) dry_run_deny: Vec<Candidate>,
    pub(super) dry_run_allow: Vec<Candidate>,
    /// Lower-case names of the headers some rule requires, at most 64 (bit `i` is name `i`).
    headers: Vec<String>,
    /// Path prefixes, as ranges of `prefix_text`.
    prefixes: Vec<(u32, u32)>,
    prefix_text: String,
}

impl ConnectionFilter {
    /// How many rules are left to evaluate per request.
    pub fn len(&self) -> usize {
        self.deny.len()
            + self.allow.len()
            + self.audit.len()
            + self.dry_run_deny.len()
            + self.dry_run_allow.len()
    }

    /// Whether no rule can match on the connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rules of `policies` that may match on the connection `conn` describes.
    pub(super) fn candidates(
        &mut self,
        policies: &[CompiledPolicy],
        conn: &RequestAttributes<'_>,
        peer: &Peer<'_>,
    ) -> Vec<Candidate> {
        let mut out = Vec::new();
        for (pi, p) in policies.iter().enumerate() {
            for (ri, r) in p.rules.iter().enumerate() {
                if r.may_match_on(conn, peer)
                    && let (Ok(policy), Ok(rule)) = (u32::try_from(pi), u32::try_from(ri))
                {
                    let paths = self.path_guard(r);
                    out.push(Candidate {
                        policy,
                        rule,
                        methods: method_guard(r),
                        headers: self.header_guard(r),
                        paths,
                    });
                }
            }
        }
        out
    }

    /// The headers `rule`'s `when` requires (a positive `request.headers[...]` term matches
    /// only a present header); pseudo-headers and `host` are answered from the request line.
    fn header_guard(&mut self, rule: &CompiledRule) -> u64 {
        let mut mask = 0;
        for t in &rule.when {
            let Cond::Header { name, .. } = &t.cond else {
                continue;
            };
            if t.negate || name.starts_with(':') || name == "host" {
                continue;
            }
            let i = match self.headers.iter().position(|h| h == name) {
                Some(i) => i,
                None if self.headers.len() < 64 => {
                    self.headers.push(name.clone());
                    self.headers.len() - 1
                }
                None => continue,
            };
            mask |= 1 << i;
        }
        mask
    }

    /// The literal prefixes of `rule`'s `paths`: when every `to` operation has `paths`, a
    /// request path must start with one of their prefixes.
    fn path_guard(&mut self, rule: &CompiledRule) -> (u32, u32) {
        const ANY: (u32, u32) = (ANY_PATH, 0);
        let guarded = |p: &PathMatch| match p {
            PathMatch::Str(StrMatch::Exact(s) | StrMatch::Prefix(s)) => !s.is_empty(),
            PathMatch::Str(_) => false,
            PathMatch::Template(segs) => matches!(segs.first(), Some(TemplateSegment::Literal(_))),
        };
        // Every operation must have `paths`, each with a literal prefix.
        let all_guarded = rule.to.iter().all(|op| {
            positive_paths(op).is_some_and(|ps| !ps.is_empty() && ps.iter().all(guarded))
        });
        if rule.to.is_empty() || !all_guarded {
            return ANY;
        }
        let all = rule.to.iter().filter_map(|op| positive_paths(op)).flatten();
        let start = self.prefixes.len();
        for p in all {
            let from = self.prefix_text.len();
            match p {
                PathMatch::Str(m) => {
                    if let StrMatch::Exact(s) | StrMatch::Prefix(s) = m {
                        self.prefix_text.push_str(s);
                    }
                }
                // The literal segments before the first operator, each followed by `/`.
                PathMatch::Template(segs) => {
                    for seg in segs {
                        let TemplateSegment::Literal(l) = seg else {
                            break;
                        };
                        self.prefix_text.push_str(l);
                        self.prefix_text.push('/');
                    }
                }
            }
            let (Ok(from), Ok(to)) = (u32::try_from(from), u32::try_from(self.prefix_text.len()))
            else {
                return ANY;
            };
            self.prefixes.push((from, to));
        }
        match (u32::try_from(start), u32::try_from(self.prefixes.len())) {
            (Ok(s), Ok(e)) if s != ANY_PATH => (s, e),
            _ => ANY,
        }
    }

    /// What a request shows the guards: its method's bit and the headers it has.
    pub(super) fn request_key(&self, http: &HttpAttributes<'_>) -> RequestKey {
        let mut present = 0u64;
        for (i, name) in self.headers.iter().enumerate() {
            if http.headers.get(name).is_some() {
                present |= 1 << i;
            }
        }
        RequestKey {
            method: method_bit(http.method),
            present,
        }
    }

    fn passes(&self, c: &Candidate, key: &RequestKey, path: &str) -> bool {
        if c.methods & key.method == 0 || c.headers & !key.present != 0 {
            return false;
        }
        if c.paths.0 == ANY_PATH {
            return true;
        }
        let ranges = self
            .prefixes
            .get(c.paths.0 as usize..c.paths.1 as usize)
            .unwrap_or_default();
        ranges.iter().any(|&(from, to)| {
            self.prefix_text
                .get(from as usize..to as usize)
                .is_some_and(|p| path.starts_with(p))
        })
    }
}

/// The `paths` of an operation's positive path term, if it has one.
fn positive_paths(op: &[Term]) -> Option<&[PathMatch]> {
    op.iter().find_map(|t| match &t.cond {
        Cond::Path(ps) if !t.negate => Some(ps.as_slice()),
        _ => None,
    })
}

/// The methods `rule` can match: the union over its `to` operations of each one's `methods`
/// when they are all exact; any method when an operation has none or a pattern.
fn method_guard(rule: &CompiledRule) -> u16 {
    if rule.to.is_empty() {
        return ANY_METHOD;
    }
    let mut mask = 0;
    for op in &rule.to {
        let methods = op.iter().find_map(|t| match &t.cond {
            Cond::Method(ms) if !t.negate => Some(ms),
            _ => None,
        });
        let Some(ms) = methods else {
            return ANY_METHOD;
        };
        for m in ms {
            match m {
                StrMatch::Exact(s) => mask |= method_bit(s),
                _ => return ANY_METHOD,
            }
        }
    }
    mask
}

/// The per-request input of the guards.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestKey {
    method: u16,
    present: u64,
}

/// The first of `candidates` (in policy, rule order) that passes its guard and matches.
pub(super) fn first_candidate_match<'p>(
    policies: &'p [CompiledPolicy],
    candidates: &[Candidate],
    filter: &ConnectionFilter,
    key: &RequestKey,
    req: &RequestAttributes<'_>,
    peer: &Peer<'_>,
    mode: Mode,
) -> Option<MatchedPolicy<'p>> {
    let path = peer.path.unwrap_or("");
    candidates.iter().find_map(|c| {
        if !filter.passes(c, key, path) {
            return None;
        }
        let p = policies.get(c.policy as usize)?;
        let r = p.rules.get(c.rule as usize)?;
        r.matches(req, peer, mode).then(|| MatchedPolicy {
            namespace: &p.namespace,
            name: &p.name,
            rule: c.rule as usize,
            id: &r.id,
        })
    })
}
