//! Writing YAML: any `Serialize` type to a [`Value`] (enum variants as one-key mappings, as
//! JSON has them), and a value to block-style YAML text that [`super::parse`] reads back to
//! the same value: strings that would resolve to something else (`"true"`, `"8080"`, `"~"`)
//! or hold YAML syntax are double-quoted, everything else is written plain.

use std::fmt::Write as _;

use serde::ser::{self, Serialize};

use super::resolve_plain;
use super::value::{Error, Mapping, Number, Value};

/// Converts any serializable value to a [`Value`].
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, Error> {
    value.serialize(ValueSerializer)
}

/// Writes a serializable value as block-style YAML (one document, no `---`).
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    Ok(emit(&to_value(value)?))
}

/// Writes a value as block-style YAML (one document, no `---`), ending in a newline.
pub fn emit(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Mapping(m) if !m.is_empty() => block_map(&mut out, m, 0, false),
        Value::Sequence(s) if !s.is_empty() => block_seq(&mut out, s, 0, false),
        other => {
            out.push_str(&flow(other));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// The entries of a non-empty mapping at `level`; `inline` when the first entry continues a
/// line already started (`- key: value`).
fn block_map(out: &mut String, m: &Mapping, level: usize, inline: bool) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !inline {
            indent(out, level);
        }
        match k {
            Value::Mapping(_) | Value::Sequence(_) => {
                // A complex key: the explicit `? key` form.
                out.push_str("? ");
                out.push_str(&flow(k));
                out.push('\n');
                indent(out, level);
                out.push(':');
            }
            _ => {
                out.push_str(&flow(k));
                out.push(':');
            }
        }
        after_key(out, v, level);
    }
}

/// A mapping value after `key:`.
fn after_key(out: &mut String, v: &Value, level: usize) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            out.push('\n');
            block_map(out, m, level + 2, false);
        }
        Value::Sequence(s) if !s.is_empty() => {
            // Sequence items at the key's own indentation, as kubectl and compose files do.
            out.push('\n');
            block_seq(out, s, level, false);
        }
        Value::String(s) if literal_ok(s) => literal(out, s, level + 2),
        _ => {
            out.push(' ');
            out.push_str(&flow(v));
            out.push('\n');
        }
    }
}

fn block_seq(out: &mut String, items: &[Value], level: usize, inline: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !inline {
            indent(out, level);
        }
        out.push('-');
        match item {
            Value::Mapping(m) if !m.is_empty() => {
                out.push(' ');
                block_map(out, m, level + 2, true);
            }
            Value::Sequence(s) if !s.is_empty() => {
                out.push(' ');
                block_seq(out, s, level + 2, true);
            }
            Value::String(s) if literal_ok(s) => literal(out, s, level + 2),
            _ => {
                out.push(' ');
                out.push_str(&flow(item));
                out.push('\n');
            }
        }
    }
}

/// Whether a multi-line string can be a literal block (`|`, `|-`) and read back the same:
/// printable, no tabs or carriage returns, at most one final newline, no line ending in a
/// space, and a first line that does not start with a space (which would need an indentation
/// indicator).
fn literal_ok(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    body.contains('\n')
        && !body.ends_with('\n')
        && !s.starts_with([' ', '\n'])
        && s.chars()
            .all(|c| c == '\n' || !(needs_escape(c) || c == '\t'))
        && body.split('\n').all(|line| !line.ends_with(' '))
}

fn literal(out: &mut String, s: &str, level: usize) {
    let (body, chomp) = match s.strip_suffix('\n') {
        Some(body) => (body, ""),
        None => (s, "-"),
    };
    out.push_str(" |");
    out.push_str(chomp);
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            indent(out, level);
            out.push_str(line);
        }
        out.push('\n');
    }
}

/// A value in flow style: scalars, and collections as `[a, b]` / `{k: v}`.
fn flow(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Sequence(items) => {
            let items: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Mapping(m) => {
            let entries: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// A string as a plain scalar when it reads back as the same string, else double-quoted.
fn string(s: &str) -> String {
    if plain_ok(s) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters that are not printable in YAML, or break lines in some readers.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// Conservative: a plain scalar starts with a letter, digit, `_`, `.`, `/` or `$`, holds no
/// flow or comment indicators, no `: ` and no quotes, and does not resolve to a non-string.
fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_alphanumeric() || matches!(first, '_' | '.' | '/' | '$'))
        && !s.starts_with("...")
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.chars().any(|c| {
            needs_escape(c) || matches!(c, ',' | '[' | ']' | '{' | '}' | '#' | '"' | '\'' | '\\')
        })
        && matches!(resolve_plain(s), Value::String(_))
}

/// serde's data model into [`Value`]s.
struct ValueSerializer;

macro_rules! ser_number {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<Value, Error> {
            Ok(Value::Number(Number::from(v)))
        }
    )*};
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = SeqWriter;
    type SerializeTuple = SeqWriter;
    type SerializeTupleStruct = SeqWriter;
    type SerializeTupleVariant = VariantWriter<SeqWriter>;
    type SerializeMap = MapWriter;
    type SerializeStruct = MapWriter;
    type SerializeStructVariant = VariantWriter<MapWriter>;

    ser_number!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64,
        serialize_f32: f32, serialize_f64: f64
    );

    fn serialize_i128(self, v: i128) -> Result<Value, Error> {
        i64::try_from(v)
            .map(Value::from)
            .map_err(|_| Error::custom_msg(format!("{v} does not fit in 64 bits")))
    }

    fn serialize_u128(self, v: u128) -> Result<Value, Error> {
        u64::try_from(v)
            .map(Value::from)
            .map_err(|_| Error::custom_msg(format!("{v} does not fit in 64 bits")))
    }

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }

    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::String(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::String(v.to_string()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(v.iter().copied().collect())
    }

    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, Error> {
        Ok(Value::String(variant.to_string()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        Ok(one_key(variant, to_value(value)?))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<SeqWriter, Error> {
        Ok(SeqWriter(Vec::with_capacity(len.unwrap_or(0))))
    }

    fn serialize_tuple(self, len: usize) -> Result<SeqWriter, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<SeqWriter, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantWriter<SeqWriter>, Error> {
        Ok(VariantWriter {
            variant,
            inner: SeqWriter(Vec::with_capacity(len)),
        })
    }

    fn serialize_map(self, len: Option<usize>) -> Result<MapWriter, Error> {
        Ok(MapWriter {
            map: Mapping::with_capacity(len.unwrap_or(0)),
            key: None,
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapWriter, Error> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantWriter<MapWriter>, Error> {
        Ok(VariantWriter {
            variant,
            inner: self.serialize_map(Some(len))?,
        })
    }
}

impl Error {
    fn custom_msg(msg: String) -> Error {
        ser::Error::custom(msg)
    }
}

fn one_key(key: &str, value: Value) -> Value {
    let mut m = Mapping::with_capacity(1);
    m.insert(Value::String(key.to_string()), value);
    Value::Mapping(m)
}

struct SeqWriter(Vec<Value>);

impl ser::SerializeSeq for SeqWriter {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.0.push(to_value(value)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Sequence(self.0))
    }
}

impl ser::SerializeTuple for SeqWriter {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, Error> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqWriter {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, Error> {
        ser::SerializeSeq::end(self)
    }
}

struct MapWriter {
    map: Mapping,
    key: Option<Value>,
}

impl ser::SerializeMap for MapWriter {
    type Ok = Value;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(to_value(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error::custom_msg("a map value without a key".into()))?;
        self.map.insert(key, to_value(value)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Mapping(self.map))
    }
}

impl ser::SerializeStruct for MapWriter {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.map
            .insert(Value::String(key.to_string()), to_value(value)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Mapping(self.map))
    }
}

struct VariantWriter<W> {
    variant: &'static str,
    inner: W,
}

impl ser::SerializeTupleVariant for VariantWriter<SeqWriter> {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        ser::SerializeSeq::serialize_element(&mut self.inner, value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(one_key(self.variant, ser::SerializeSeq::end(self.inner)?))
    }
}

impl ser::SerializeStructVariant for VariantWriter<MapWriter> {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        ser::SerializeStruct::serialize_field(&mut self.inner, key, value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(one_key(
            self.variant,
            ser::SerializeStruct::end(self.inner)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{Limits, parse};

    fn read_back(text: &str) -> Value {
        let docs = parse(text, Limits::default()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        docs.first().map_or(Value::Null, |d| d.root.to_value())
    }

    #[test]
    fn tricky_values_read_back_the_same() {
        let strings = [
            "",
            " ",
            "true",
            "True",
            "null",
            "~",
            "8080",
            "0x10",
            "1.5",
            "1e3",
            ".inf",
            "<<",
            "a: b",
            "a:",
            "a #b",
            "- x",
            "[x]",
            "{x}",
            "x, y",
            "'q'",
            "\"q\"",
            "tab\there",
            "line\nbreak",
            "a\n  \nb",
            "a\n\n  b\n",
            "x \ny",
            "two\nlines\n",
            "ends\n\n",
            " lead",
            "trail ",
            "...",
            "---",
            "*a",
            "&a",
            "!t",
            "|",
            ">",
            "%x",
            "@x",
            "`x",
            "?",
            "? x",
            "é",
            "\u{7f}",
            "\u{2028}",
            "http://x:80/p?q=1",
            "1.2.3",
            "10s",
            "v1",
            "app.kubernetes.io/name",
            "$HOME",
        ];
        let mut m = Mapping::new();
        for (i, s) in strings.iter().enumerate() {
            m.insert(Value::from(*s), Value::from(*s));
            m.insert(Value::from(format!("k{i}")), Value::from(vec![*s]));
        }
        m.insert(Value::from(7), Value::from(-3));
        m.insert(Value::from(true), Value::from(1.0));
        m.insert(
            Value::from("f"),
            Value::from(vec![0.5, -0.0, 1e300, 2.5e-8]),
        );
        m.insert(Value::from("inf"), Value::from(f64::INFINITY));
        m.insert(Value::from("empty"), Value::Mapping(Mapping::new()));
        m.insert(Value::from("none"), Value::Sequence(Vec::new()));
        m.insert(Value::from("null"), Value::Null);
        let nested: Value = vec![
            Value::from(vec![Value::from(1), Value::from(vec![Value::from("x")])]),
            Value::Mapping(m.clone()),
        ]
        .into();
        m.insert(nested.clone(), nested.clone());
        m.insert(Value::from("nested"), nested);
        let value = Value::Mapping(m);
        let text = emit(&value);
        assert_eq!(read_back(&text), value, "{text}");
        for scalar in [
            Value::Null,
            Value::from("x"),
            Value::from(3),
            Value::from(""),
        ] {
            assert_eq!(read_back(&emit(&scalar)), scalar);
        }
    }

    #[test]
    fn block_style_is_what_a_person_writes() {
        let value = read_back("a:\n  b: 1\n  c:\n  - x\n  - y: 2\n    z: [3]\nd: []\ne: 'true'\n");
        assert_eq!(
            emit(&value),
            "a:\n  b: 1\n  c:\n  - x\n  - y: 2\n    z:\n    - 3\nd: []\ne: \"true\"\n"
        );
        let pem = Value::from("-----BEGIN-----\nAAA\n-----END-----\n");
        assert_eq!(
            to_string(
                &[("cert", pem)]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>()
            )
            .unwrap(),
            "cert: |\n  -----BEGIN-----\n  AAA\n  -----END-----\n"
        );
    }

    #[test]
    fn enums_are_one_key_mappings() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, String),
            Struct { a: Option<u8> },
        }
        let all = vec![
            E::Unit,
            E::New(1),
            E::Tuple(2, "x".into()),
            E::Struct { a: None },
        ];
        let text = to_string(&all).unwrap();
        assert_eq!(
            text,
            "- Unit\n- New: 1\n- Tuple:\n  - 2\n  - x\n- Struct:\n    a: null\n"
        );
        let back: Vec<E> = super::super::from_str(&text).unwrap();
        assert_eq!(back, all);
    }
}
