//! Compose's `.env` / `env_file` syntax.
//!
//! One `KEY=VALUE` per line, as compose-go's dotenv reads it: blank lines and `#` comments are
//! skipped, an `export ` prefix is allowed, unquoted values are trimmed and end at ` #` (an
//! inline comment), single-quoted values are literal, double-quoted values understand `\n`,
//! `\r`, `\t`, `\\`, `\"` and `\$`, and both kinds of quotes may span lines. `KEY` alone (no
//! `=`) means "take KEY from the environment" and is returned as `(KEY, None)`.
//! [`parse_env_file_with`] also expands `${VAR}` inside values, as compose does for `.env`.

use std::collections::BTreeMap;

use crate::compose::{EnvLookup, Layered, substitute};

/// A line of an env file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct EnvFileError {
    /// 1-based line where the bad entry starts.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses an env file into `(key, value)` pairs in file order; `None` is a bare `KEY`. Values
/// are returned as written (no `${VAR}` expansion); see [`parse_env_file_with`].
pub fn parse_env_file(text: &str) -> Result<Vec<(String, Option<String>)>, EnvFileError> {
    Ok(entries(text)?
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect())
}

/// Like [`parse_env_file`], and expands `$VAR`/`${VAR:-default}` in unquoted and double-quoted
/// values as compose does: from `env` first (the process environment), then from the entries
/// above in the same file. Single-quoted values stay literal.
pub fn parse_env_file_with(
    text: &str,
    env: &dyn EnvLookup,
) -> Result<Vec<(String, Option<String>)>, EnvFileError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for entry in entries(text)? {
        let value = match entry.value {
            Some(v) if !entry.literal && v.contains('$') => {
                let lookup = Layered {
                    over: EnvRef(env),
                    under: &seen,
                };
                Some(
                    substitute(&v, &lookup, &mut Vec::new()).map_err(|message| EnvFileError {
                        line: entry.line,
                        message,
                    })?,
                )
            }
            other => other,
        };
        if let Some(v) = &value {
            seen.insert(entry.key.clone(), v.clone());
        }
        out.push((entry.key, value));
    }
    Ok(out)
}

struct EnvRef<'a>(&'a dyn EnvLookup);

impl EnvLookup for EnvRef<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name)
    }
}

impl EnvLookup for &BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

/// One parsed line.
struct Entry {
    key: String,
    value: Option<String>,
    /// Single-quoted: never expanded.
    literal: bool,
    line: usize,
}

fn entries(text: &str) -> Result<Vec<Entry>, EnvFileError> {
    let mut parser = Parser {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    };
    let mut out = Vec::new();
    while let Some(entry) = parser.entry()? {
        out.push(entry);
    }
    Ok(out)
}

/// Resolves bare `KEY` entries from `env` (dropping those it does not have), as compose does.
pub fn resolve_env_entries(
    entries: Vec<(String, Option<String>)>,
    env: &dyn EnvLookup,
) -> Vec<(String, String)> {
    entries
        .into_iter()
        .filter_map(|(k, v)| match v {
            Some(v) => Some((k, v)),
            None => env.get(&k).map(|v| (k, v)),
        })
        .collect()
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err(&self, line: usize, message: impl Into<String>) -> EnvFileError {
        EnvFileError {
            line,
            message: message.into(),
        }
    }

    fn skip_inline_space(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
    }

    fn skip_to_eol(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    /// The next entry, skipping blank and comment lines; `None` at end of input.
    fn entry(&mut self) -> Result<Option<Entry>, EnvFileError> {
        loop {
            while matches!(self.peek(), Some(' ' | '\t' | '\r' | '\n')) {
                self.bump();
            }
            match self.peek() {
                None => return Ok(None),
                Some('#') => self.skip_to_eol(),
                Some(_) => break,
            }
        }
        let line = self.line;
        let mut key = self.key();
        if key == "export" && matches!(self.peek(), Some(' ' | '\t')) {
            self.skip_inline_space();
            key = self.key();
        }
        if key.is_empty() {
            let c = self.peek().unwrap_or(' ');
            return Err(self.err(line, format!("expected a variable name, found {c:?}")));
        }
        self.skip_inline_space();
        match self.peek() {
            None | Some('\n' | '\r' | '#') => {
                self.skip_to_eol();
                return Ok(Some(Entry {
                    key,
                    value: None,
                    literal: false,
                    line,
                }));
            }
            Some('=') => {
                self.bump();
            }
            Some(c) => {
                return Err(self.err(
                    line,
                    format!("unexpected character {c:?} in variable name {key:?}"),
                ));
            }
        }
        self.skip_inline_space();
        let literal = self.peek() == Some('\'');
        let value = match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let value = self.quoted(q, line)?;
                self.skip_inline_space();
                match self.peek() {
                    None | Some('\n' | '\r' | '#') => self.skip_to_eol(),
                    Some(c) => {
                        return Err(self.err(
                            self.line,
                            format!("unexpected {c:?} after the closing quote of {key}"),
                        ));
                    }
                }
                value
            }
            _ => self.unquoted(),
        };
        Ok(Some(Entry {
            key,
            value: Some(value),
            literal,
            line,
        }))
    }

    fn key(&mut self) -> String {
        let mut key = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                key.push(c);
                self.bump();
            } else {
                break;
            }
        }
        key
    }

    fn quoted(&mut self, quote: char, line: usize) -> Result<String, EnvFileError> {
        let mut value = String::new();
        loop {
            let c = self
                .bump()
                .ok_or_else(|| self.err(line, format!("unterminated {quote} quote")))?;
            match c {
                c if c == quote => return Ok(value),
                '\\' if quote == '"' => {
                    let e = self
                        .bump()
                        .ok_or_else(|| self.err(line, format!("unterminated {quote} quote")))?;
                    match e {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        '\\' | '"' | '$' => value.push(e),
                        other => {
                            value.push('\\');
                            value.push(other);
                        }
                    }
                }
                c => value.push(c),
            }
        }
    }

    fn unquoted(&mut self) -> String {
        let mut value = String::new();
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            if c == '#' && (value.is_empty() || value.ends_with([' ', '\t'])) {
                self.skip_to_eol();
                break;
            }
            value.push(c);
            self.bump();
        }
        value.trim().to_string()
    }
}
