//! The one YAML reader and writer of the workspace. A file is parsed once into documents of
//! marked nodes, which convert to [`Value`] for typed deserialization and keep every node's
//! line and column so any field path (`spec.http[0].retries`) can be placed in the file
//! afterwards. [`from_str`] does both for a single-document file (proxy configs, DNS
//! records); [`to_string`] writes block-style YAML that reads back to the same value.
//!
//! Hostile input is bounded here, before anything else sees it: file size, nesting depth, the
//! size of one scalar and the number of nodes after alias expansion (alias bombs) all have
//! limits, checked while parsing so memory stays bounded.

use std::collections::HashMap;

use thiserror::Error;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

mod value;
mod write;

pub use value::{Error, Index, Mapping, Number, Value, from_value};
pub use write::{emit, to_string, to_value};

/// Limits applied while parsing; the defaults are far above any real mesh file.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest input accepted, in bytes. Default 8 MiB.
    pub max_bytes: usize,
    /// Deepest nesting of sequences and mappings. Default 64.
    pub max_depth: usize,
    /// Most nodes in one document once aliases are expanded. Default 1,000,000.
    pub max_nodes: usize,
    /// Longest single scalar, in bytes. Default 1 MiB.
    pub max_scalar: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 8 << 20,
            max_depth: 64,
            max_nodes: 1_000_000,
            max_scalar: 1 << 20,
        }
    }
}

/// A 1-based position in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: &Marker) -> Pos {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar and whether it was plain (unquoted, so subject to type resolution).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// One YAML document of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Position of the document's first node.
    pub pos: Pos,
    pub root: Node,
}

/// Why a YAML text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum YamlError {
    #[error("YAML syntax error: {message}")]
    Syntax {
        pos: Pos,
        message: String,
        /// What usually causes it and how to fix it, when the message alone does not say.
        hint: Option<String>,
    },
    #[error("refused: {message}")]
    Limit { pos: Pos, message: String },
}

impl YamlError {
    pub fn pos(&self) -> Pos {
        match self {
            YamlError::Syntax { pos, .. } | YamlError::Limit { pos, .. } => *pos,
        }
    }

    /// How to fix a syntax error, when there is more to say than the message.
    pub fn hint(&self) -> Option<&str> {
        match self {
            YamlError::Syntax { hint, .. } => hint.as_deref(),
            YamlError::Limit { .. } => None,
        }
    }
}

/// Where the mistake behind a scanner error most likely is, and a hint. The scanner notices
/// some mistakes only at the next token, a line or more late: a key without its `:` reads
/// as a plain scalar that goes on over the next line until a `:` there is "not allowed";
/// an unclosed `[` or `{` is noticed at the first token that cannot continue it.
fn culprit(text: &str, pos: Pos, message: &str) -> (Pos, Option<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let line_at = |n: usize| lines.get(n.wrapping_sub(1)).copied().unwrap_or("");
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let content = |l: &str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    if message.contains("mapping values are not allowed") {
        let here = line_at(pos.line);
        let before = here
            .char_indices()
            .nth(pos.column.saturating_sub(1))
            .map_or(here, |(i, _)| &here[..i]);
        let prev = (1..pos.line).rev().find(|&n| content(line_at(n)));
        if let Some(p) = prev.filter(|_| !before.contains(": ")) {
            let l = line_at(p);
            // A key on `p` without its `:` (the scalar ran on into this line), or this line
            // indented deeper than `p`'s value allows.
            if !l.trim_end().ends_with(':') && !l.contains(": ") && indent(here) > indent(l) {
                return (
                    Pos {
                        line: p,
                        column: l.trim_end().chars().count() + 1,
                    },
                    Some(format!(
                        "`{}` has no `:` after it, so line {} reads as the rest of its text: add the `:` (`{}:`), or indent line {} like its siblings",
                        l.trim(),
                        pos.line,
                        l.trim(),
                        pos.line
                    )),
                );
            }
        }
        if before.contains(": ") {
            return (
                pos,
                Some("a value that contains `: ` must be quoted (`key: \"a: b\"`)".into()),
            );
        }
    }
    let flow = message.contains("expected ',' or ']'")
        || message.contains("expected ',' or '}'")
        || message.contains("illegal placement of ':'");
    if flow && let Some((open, bracket)) = unclosed_flow(&lines, pos) {
        let (close, kind) = if bracket == '[' {
            (']', "list")
        } else {
            ('}', "mapping")
        };
        return (
            open,
            Some(format!(
                "this flow {kind} is not closed before line {}: add `{close}` at its end (or `,` between its items)",
                pos.line
            )),
        );
    }
    if message.contains("mapping values are not allowed") {
        // A line indented deeper than the value above it allows.
        let here = line_at(pos.line);
        return (
            Pos {
                line: pos.line,
                column: indent(here) + 1,
            },
            Some("this line is indented deeper than its siblings, so it reads as the rest of the value above: indent it like the other keys of its mapping".into()),
        );
    }
    if message.contains("did not find expected key") {
        let here = line_at(pos.line);
        return (
            Pos {
                line: pos.line,
                column: indent(here) + 1,
            },
            Some("this line does not line up with the keys of its mapping: indent it like its siblings (spaces, not tabs), or make it a `- ` item of a list".into()),
        );
    }
    if message.contains("quoted scalar") {
        return (
            pos,
            Some("the quote opened here is not closed: close it on this line, or indent its continuation lines deeper than the key".into()),
        );
    }
    if message.contains("tab") {
        return (pos, Some("YAML indents with spaces, not tabs".into()));
    }
    (pos, None)
}

/// The position of the last `[` or `{` before `pos` that no bracket closes (outside quotes
/// and comments), and which it is.
fn unclosed_flow(lines: &[&str], pos: Pos) -> Option<(Pos, char)> {
    let mut open: Vec<(Pos, char)> = Vec::new();
    for (i, l) in lines.iter().enumerate().take(pos.line) {
        let mut quote: Option<char> = None;
        for (col, c) in l.chars().enumerate() {
            let here = Pos {
                line: i + 1,
                column: col + 1,
            };
            if here >= pos {
                break;
            }
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => open.push((here, c)),
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    open.pop()
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        items: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Parses every document of `text`. Empty documents (only comments) are skipped.
pub fn parse(text: &str, limits: Limits) -> Result<Vec<Document>, YamlError> {
    if text.len() > limits.max_bytes {
        return Err(YamlError::Limit {
            pos: Pos { line: 1, column: 1 },
            message: format!(
                "file is {} bytes, more than the {} allowed",
                text.len(),
                limits.max_bytes
            ),
        });
    }
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    loop {
        let (event, marker) = parser.next_token().map_err(|e| {
            let (pos, hint) = culprit(text, Pos::from_marker(e.marker()), e.info());
            YamlError::Syntax {
                pos,
                message: e.info().to_string(),
                hint,
            }
        })?;
        let pos = Pos::from_marker(&marker);
        let done: Option<Node> = match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                anchors.clear();
                nodes = 0;
                None
            }
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => None,
            Event::Scalar(text, style, anchor, tag) => {
                if text.len() > limits.max_scalar {
                    return Err(YamlError::Limit {
                        pos,
                        message: format!(
                            "a scalar of {} bytes exceeds the {} allowed",
                            text.len(),
                            limits.max_scalar
                        ),
                    });
                }
                nodes += 1;
                let node = Node {
                    pos,
                    kind: NodeKind::Scalar {
                        text,
                        // `!!str 8080` is the string, as if quoted; other tags are not kept.
                        plain: style == TScalarStyle::Plain
                            && !tag.is_some_and(|t| {
                                t.handle == "tag:yaml.org,2002:" && t.suffix == "str"
                            }),
                    },
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    return Err(YamlError::Syntax {
                        pos,
                        message: "alias to an unknown anchor".into(),
                        hint: Some(
                            "define the anchor (`&name`) before the alias (`*name`) that uses it"
                                .into(),
                        ),
                    });
                };
                nodes += count(target);
                if nodes > limits.max_nodes {
                    return Err(too_many(pos, limits));
                }
                let mut node = target.clone();
                node.pos = pos;
                Some(node)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= limits.max_depth {
                    return Err(YamlError::Limit {
                        pos,
                        message: format!("nesting deeper than {} levels", limits.max_depth),
                    });
                }
                nodes += 1;
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        pos,
                        anchor,
                        items: Vec::new(),
                        key: None,
                    }
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (
                        Node {
                            pos,
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    ),
                    // A block mapping's start mark sits at its first `:`; place it at its
                    // first key instead, where a person sees it begin.
                    Some(Frame::Map {
                        pos, anchor, items, ..
                    }) => {
                        let pos = items.first().map_or(pos, |(k, _)| {
                            if k.pos.line == pos.line {
                                k.pos.min(pos)
                            } else {
                                pos
                            }
                        });
                        (
                            Node {
                                pos,
                                kind: NodeKind::Map(items),
                            },
                            anchor,
                        )
                    }
                    None => {
                        return Err(YamlError::Syntax {
                            pos,
                            message: "unbalanced collection end".into(),
                            hint: None,
                        });
                    }
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
        };
        if nodes > limits.max_nodes {
            return Err(too_many(pos, limits));
        }
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => docs.push(Document {
                pos: node.pos,
                root: node,
            }),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { items, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => items.push((k, node)),
            },
        }
    }
    docs.retain(|d| !matches!(&d.root.kind, NodeKind::Scalar { text, plain: true } if text.is_empty() || text == "~" || text == "null"));
    Ok(docs)
}

fn too_many(pos: Pos, limits: Limits) -> YamlError {
    YamlError::Limit {
        pos,
        message: format!(
            "more than {} nodes after expanding aliases (an alias bomb?)",
            limits.max_nodes
        ),
    }
}

fn count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        NodeKind::Map(items) => {
            1 + items
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
    }
}

impl Node {
    /// Converts to a [`Value`] (YAML 1.2 core schema for plain scalars), applying merge keys
    /// (`<<: *defaults`, or a sequence of them) as compose files use them. A merge of anything
    /// but mappings stays a `<<` key, so the reader of the value refuses it.
    pub fn to_value(&self) -> Value {
        match &self.kind {
            NodeKind::Scalar { text, plain: true } => resolve_plain(text),
            NodeKind::Scalar { text, plain: false } => Value::String(text.clone()),
            NodeKind::Seq(items) => Value::Sequence(items.iter().map(Node::to_value).collect()),
            NodeKind::Map(items) => {
                let mut map = Mapping::new();
                let mut merges = Vec::new();
                for (k, v) in items {
                    if matches!(&k.kind, NodeKind::Scalar { text, plain: true } if text == "<<") {
                        merges.push(v);
                        continue;
                    }
                    map.insert(k.to_value(), v.to_value());
                }
                for merge in merges {
                    let value = merge.to_value();
                    let sources = match &value {
                        Value::Mapping(_) => vec![value],
                        Value::Sequence(items) if items.iter().all(Value::is_mapping) => {
                            items.clone()
                        }
                        _ => {
                            map.insert(Value::String("<<".into()), value);
                            continue;
                        }
                    };
                    for source in sources {
                        if let Value::Mapping(m) = source {
                            for (k, v) in m {
                                map.entry(k).or_insert(v);
                            }
                        }
                    }
                }
                Value::Mapping(map)
            }
        }
    }

    /// The scalar's text, when this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The value under `key` in a mapping, with the key node.
    pub fn get(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.kind {
            NodeKind::Map(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// Finds the position of a field path such as `spec.http[0].retries.timeout` (the form
    /// serde_path_to_error and [`crate::diag::FieldError`] use). A mapping entry is placed at
    /// its key; a missing tail is placed at the deepest node found, so a position is always
    /// given.
    pub fn locate(&self, path: &str) -> Pos {
        let mut node = self;
        let mut at = self.pos;
        let mut rest = path;
        while !rest.is_empty() {
            rest = rest.strip_prefix('.').unwrap_or(rest);
            if let Some(after) = rest.strip_prefix('[') {
                let Some(end) = after.find(']') else { break };
                let Ok(index) = after[..end].parse::<usize>() else {
                    break;
                };
                let NodeKind::Seq(items) = &node.kind else {
                    break;
                };
                let Some(item) = items.get(index) else { break };
                node = item;
                at = item.pos;
                rest = &after[end + 1..];
                continue;
            }
            let NodeKind::Map(items) = &node.kind else {
                break;
            };
            // Keys may hold dots (`app.kubernetes.io/name`): take the longest key that matches.
            let found =
                items
                    .iter()
                    .filter_map(|(k, v)| {
                        let key = k.as_str()?;
                        let tail = rest.strip_prefix(key)?;
                        (tail.is_empty() || tail.starts_with('.') || tail.starts_with('['))
                            .then_some((k, v, key.len()))
                    })
                    .max_by_key(|(_, _, len)| *len);
            let Some((k, v, len)) = found else { break };
            at = k.pos;
            node = v;
            rest = &rest[len..];
        }
        at
    }
}

/// YAML 1.2 core schema resolution for plain scalars.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Number(f64::INFINITY.into());
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Number(f64::NEG_INFINITY.into()),
        ".nan" | ".NaN" | ".NAN" => return Value::Number(f64::NAN.into()),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Value::Number(n);
    }
    let looks_numeric = text
        .trim_start_matches(['-', '+'])
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Number(f.into());
    }
    Value::String(text.to_string())
}

fn parse_int(text: &str) -> Option<Number> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    if neg {
        i64::from_str_radix(&format!("-{digits}"), radix)
            .ok()
            .map(Number::from)
    } else {
        u64::from_str_radix(digits, radix).ok().map(Number::from)
    }
}

/// Every document of `text` as a [`Value`], merge keys applied; empty documents are skipped.
pub fn documents(text: &str) -> Result<Vec<Value>, YamlError> {
    Ok(parse(text, Limits::default())?
        .iter()
        .map(|d| d.root.to_value())
        .collect())
}

/// Why a one-document YAML text could not be typed: where, at which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}:{}: {}{message}", .pos.line, .pos.column, if .path.is_empty() { String::new() } else { format!("{}: ", .path) })]
pub struct ReadError {
    /// Where the failing node (or the YAML syntax error) is.
    pub pos: Pos,
    /// Field path of the failing node (`services[1].vip`), empty at the top.
    pub path: String,
    pub message: String,
}

/// Reads a one-document YAML (or JSON) text as `T`. An error carries the line and column of
/// the failing node, found from serde's field path; an empty text reads as null.
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ReadError> {
    let docs = parse(text, Limits::default()).map_err(|e| ReadError {
        pos: e.pos(),
        path: String::new(),
        message: e.to_string(),
    })?;
    if let Some(extra) = docs.get(1) {
        return Err(ReadError {
            pos: extra.pos,
            path: String::new(),
            message: format!("expected one YAML document, found {}", docs.len()),
        });
    }
    let (value, root) = match docs.first() {
        Some(doc) => (doc.root.to_value(), Some(&doc.root)),
        None => (Value::Null, None),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ReadError {
            pos: root.map_or(Pos { line: 1, column: 1 }, |r| r.locate(&path)),
            path,
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_global_across_documents() {
        let text = "a: 1\n---\nkind: X\nspec:\n  http:\n  - retries:\n      attempts: 3\n";
        let docs = parse(text, Limits::default()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].root.locate("a"), Pos { line: 1, column: 1 });
        assert_eq!(
            docs[1].root.locate("spec.http[0].retries.attempts"),
            Pos { line: 7, column: 7 }
        );
        // A missing tail is placed at the deepest node found.
        assert_eq!(
            docs[1].root.locate("spec.http[0].retries.nope"),
            Pos { line: 6, column: 5 }
        );
    }

    #[test]
    fn plain_scalars_resolve_like_yaml_1_2() {
        let docs = parse(
            "a: 1\nb: '1'\nc: 1.5\nd: true\ne: ~\nf: 0x10\ng: 1.2.3\nh: 10s\n",
            Limits::default(),
        )
        .unwrap();
        let v = docs[0].root.to_value();
        assert_eq!(v["a"], Value::Number(1u64.into()));
        assert_eq!(v["b"], Value::String("1".into()));
        assert_eq!(v["c"], Value::Number(1.5f64.into()));
        assert_eq!(v["d"], Value::Bool(true));
        assert_eq!(v["e"], Value::Null);
        assert_eq!(v["f"], Value::Number(16u64.into()));
        assert_eq!(v["g"], Value::String("1.2.3".into()));
        assert_eq!(v["h"], Value::String("10s".into()));
        let v = &parse("a: !!str 8080\n", Limits::default()).unwrap()[0].root;
        assert_eq!(v.to_value()["a"], Value::String("8080".into()));
    }

    #[test]
    fn merge_keys_apply() {
        let docs = parse(
            "x: &d {a: 1, b: 2}\ny:\n  <<: *d\n  b: 3\n",
            Limits::default(),
        )
        .unwrap();
        let v = docs[0].root.to_value();
        assert_eq!(v["y"]["a"], Value::Number(1u64.into()));
        assert_eq!(v["y"]["b"], Value::Number(3u64.into()));
    }

    #[test]
    fn hostile_inputs_are_refused_quickly() {
        let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 1..12 {
            bomb.push_str(&format!(
                "{}: &{} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n",
                (b'a' + i) as char,
                (b'a' + i) as char,
                p = (b'a' + i - 1) as char
            ));
        }
        let err = parse(&bomb, Limits::default()).unwrap_err();
        assert!(err.to_string().contains("alias bomb"), "{err}");

        let deep = "[".repeat(10_000);
        let err = parse(&deep, Limits::default()).unwrap_err();
        assert!(
            err.to_string().contains("nesting") || err.to_string().contains("recursion"),
            "{err}"
        );

        let huge = format!("a: {}\n", "x".repeat(2 << 20));
        let err = parse(&huge, Limits::default()).unwrap_err();
        assert!(err.to_string().contains("scalar"), "{err}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n", Limits::default()).unwrap_err();
        assert!(matches!(err, YamlError::Syntax { .. }));
        assert!(err.pos().line >= 2, "{err:?}");
    }

    /// Syntax errors point at the line with the mistake (the scanner notices some a line
    /// late), each with a hint.
    #[test]
    fn syntax_errors_point_at_the_mistake_with_a_hint() {
        let cases: &[(&str, &str, (usize, usize), &str)] = &[
            (
                "a key without its colon",
                "services:\n  web\n    image: nginx\n",
                (2, 6),
                "has no `:`",
            ),
            (
                "an unclosed flow list",
                "a: 1\nb: [1, 2\nc: 3\n",
                (2, 4),
                "add `]`",
            ),
            (
                "an unclosed flow mapping",
                "a: {x: 1\nb: 2\n",
                (1, 4),
                "add `}`",
            ),
            (
                "a colon inside a plain value",
                "services:\n  web:\n    command: echo a: b\n",
                (3, 20),
                "must be quoted",
            ),
            (
                "a key indented less than its siblings",
                "services:\n  web:\n    image: x\n   ports: []\n",
                (4, 4),
                "line up",
            ),
            (
                "a key indented deeper than its siblings",
                "services:\n  web:\n    image: x\n      ports: []\n",
                (4, 7),
                "indented deeper",
            ),
            (
                "an unclosed quote",
                "a: \"abc\nb: 1\n",
                (1, 4),
                "not closed",
            ),
            ("a tab", "a:\n\tb: 1\n", (2, 2), "not tabs"),
        ];
        for (what, text, (line, column), hint) in cases {
            let err = parse(text, Limits::default()).unwrap_err();
            assert_eq!(
                (err.pos().line, err.pos().column),
                (*line, *column),
                "{what}: {err:?}"
            );
            assert!(
                err.hint().is_some_and(|h| h.contains(hint)),
                "{what}: {err:?}"
            );
        }
    }
}
