//! The generic YAML value every reader in the workspace shares: what a document holds before
//! it is typed. Mappings keep their order and may have non-string keys (as compose allows);
//! numbers keep whether they were integers. `Value` is a serde `Deserializer`, so typed reads
//! go through `serde_path_to_error` and a failing field path can be placed with
//! [`Node::locate`](super::Node::locate).

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

use indexmap::IndexMap;
use serde::de::value::{MapDeserializer, SeqDeserializer, StringDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, Unexpected, VariantAccess,
    Visitor,
};
use serde::{Deserialize, Serialize};

/// Why a value could not be typed, or a type not written as a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// A YAML value (YAML 1.2 core schema; tags are not kept).
#[derive(Debug, Clone, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Sequence(Vec<Value>),
    Mapping(Mapping),
}

/// An integer or a float, as the plain scalar was written.
#[derive(Clone, Copy)]
pub struct Number(N);

#[derive(Clone, Copy)]
enum N {
    PosInt(u64),
    /// Always below zero.
    NegInt(i64),
    Float(f64),
}

/// A mapping in document order. Keys are any value; lookups by `&str` find string keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    map: IndexMap<Value, Value>,
}

static NULL: Value = Value::Null;

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(n.as_f64()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Value::String(_))
    }

    pub fn as_sequence(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Sequence(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_sequence_mut(&mut self) -> Option<&mut Vec<Value>> {
        match self {
            Value::Sequence(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_sequence(&self) -> bool {
        matches!(self, Value::Sequence(_))
    }

    pub fn as_mapping(&self) -> Option<&Mapping> {
        match self {
            Value::Mapping(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_mapping_mut(&mut self) -> Option<&mut Mapping> {
        match self {
            Value::Mapping(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_mapping(&self) -> bool {
        matches!(self, Value::Mapping(_))
    }

    /// The item at a sequence index or the value under a mapping key.
    pub fn get<I: Index>(&self, index: I) -> Option<&Value> {
        match (self, index.position()) {
            (Value::Sequence(s), Some(i)) => s.get(i),
            (Value::Mapping(m), _) => m.map.get(index.key().as_ref()),
            _ => None,
        }
    }

    pub fn get_mut<I: Index>(&mut self, index: I) -> Option<&mut Value> {
        match (self, index.position()) {
            (Value::Sequence(s), Some(i)) => s.get_mut(i),
            (Value::Mapping(m), _) => m.map.get_mut(index.key().as_ref()),
            _ => None,
        }
    }

    /// Resolves YAML merge keys (`<<: *defaults`, or a sequence of them) at any depth; keys
    /// already present win. A merge of anything but mappings is an error.
    pub fn apply_merge(&mut self) -> Result<(), Error> {
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            match node {
                Value::Mapping(mapping) => {
                    match mapping.remove("<<") {
                        None => {}
                        Some(Value::Mapping(merge)) => mapping.merge_missing(merge),
                        Some(Value::Sequence(sources)) => {
                            for source in sources {
                                let Value::Mapping(merge) = source else {
                                    return Err(Error(
                                        "expected a mapping in the merged sequence".into(),
                                    ));
                                };
                                mapping.merge_missing(merge);
                            }
                        }
                        Some(_) => {
                            return Err(Error(
                                "expected a mapping or a sequence of mappings to merge".into(),
                            ));
                        }
                    }
                    stack.extend(mapping.values_mut());
                }
                Value::Sequence(items) => stack.extend(items),
                _ => {}
            }
        }
        Ok(())
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(n) => match n.0 {
                N::PosInt(u) => Unexpected::Unsigned(u),
                N::NegInt(i) => Unexpected::Signed(i),
                N::Float(f) => Unexpected::Float(f),
            },
            Value::String(s) => Unexpected::Str(s),
            Value::Sequence(_) => Unexpected::Seq,
            Value::Mapping(_) => Unexpected::Map,
        }
    }

    fn invalid_type(&self, exp: &dyn de::Expected) -> Error {
        de::Error::invalid_type(self.unexpected(), exp)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Number(a), Value::Number(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Sequence(a), Value::Sequence(b)) => a == b,
            (Value::Mapping(a), Value::Mapping(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Number(n) => n.hash(state),
            Value::String(s) => s.hash(state),
            Value::Sequence(s) => s.hash(state),
            Value::Mapping(m) => m.hash(state),
        }
    }
}

impl PartialEq<str> for Value {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}

impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl PartialEq<String> for Value {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == Some(other.as_str())
    }
}

impl PartialEq<bool> for Value {
    fn eq(&self, other: &bool) -> bool {
        self.as_bool() == Some(*other)
    }
}

macro_rules! from_number {
    ($($t:ty),*) => {$(
        impl From<$t> for Number {
            fn from(n: $t) -> Number {
                Number::from_i128(n as i128)
            }
        }
        impl From<$t> for Value {
            fn from(n: $t) -> Value {
                Value::Number(n.into())
            }
        }
        impl PartialEq<$t> for Value {
            fn eq(&self, other: &$t) -> bool {
                matches!(self, Value::Number(n) if *n == Number::from(*other))
            }
        }
    )*};
}

from_number!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl From<f64> for Number {
    fn from(f: f64) -> Number {
        Number(N::Float(f))
    }
}

impl From<f32> for Number {
    fn from(f: f32) -> Number {
        Number(N::Float(f.into()))
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Number(f.into())
    }
}

impl From<f32> for Value {
    fn from(f: f32) -> Value {
        Value::Number(f.into())
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}

impl From<Mapping> for Value {
    fn from(m: Mapping) -> Value {
        Value::Mapping(m)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Value {
        Value::Sequence(v.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> FromIterator<T> for Value {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Value {
        Value::Sequence(iter.into_iter().map(Into::into).collect())
    }
}

/// What indexes a [`Value`]: a sequence position (`usize`) or a mapping key (`&str`,
/// `String`, `Value`).
pub trait Index {
    /// The key this index stands for in a mapping.
    fn key(&self) -> Cow<'_, Value>;
    /// The position this index stands for in a sequence.
    fn position(&self) -> Option<usize> {
        None
    }
}

impl Index for usize {
    fn key(&self) -> Cow<'_, Value> {
        Cow::Owned(Value::from(*self))
    }
    fn position(&self) -> Option<usize> {
        Some(*self)
    }
}

impl Index for str {
    fn key(&self) -> Cow<'_, Value> {
        Cow::Owned(Value::String(self.to_string()))
    }
}

impl Index for String {
    fn key(&self) -> Cow<'_, Value> {
        Cow::Owned(Value::String(self.clone()))
    }
}

impl Index for Value {
    fn key(&self) -> Cow<'_, Value> {
        Cow::Borrowed(self)
    }
}

impl<T: Index + ?Sized> Index for &T {
    fn key(&self) -> Cow<'_, Value> {
        (**self).key()
    }
    fn position(&self) -> Option<usize> {
        (**self).position()
    }
}

impl<I: Index> std::ops::Index<I> for Value {
    type Output = Value;
    /// The indexed value, or null when there is none.
    fn index(&self, index: I) -> &Value {
        self.get(index).unwrap_or(&NULL)
    }
}

impl<I: Index> std::ops::IndexMut<I> for Value {
    /// The indexed value; a missing mapping key is inserted as null, and null becomes a
    /// mapping. Panics on a sequence index out of bounds or on a scalar, as `Vec` does.
    fn index_mut(&mut self, index: I) -> &mut Value {
        if self.is_null() {
            *self = Value::Mapping(Mapping::new());
        }
        match (self, index.position()) {
            (Value::Sequence(s), Some(i)) => &mut s[i],
            (Value::Mapping(m), _) => m.map.entry(index.key().into_owned()).or_default(),
            (other, _) => panic!("cannot index into {:?}", other.unexpected()),
        }
    }
}

impl Number {
    fn from_i128(n: i128) -> Number {
        if let Ok(u) = u64::try_from(n) {
            Number(N::PosInt(u))
        } else if let Ok(i) = i64::try_from(n) {
            Number(N::NegInt(i))
        } else {
            Number(N::Float(n as f64))
        }
    }

    pub fn is_f64(&self) -> bool {
        matches!(self.0, N::Float(_))
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self.0 {
            N::PosInt(u) => Some(u),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.0 {
            N::PosInt(u) => i64::try_from(u).ok(),
            N::NegInt(i) => Some(i),
            N::Float(_) => None,
        }
    }

    pub fn as_f64(&self) -> f64 {
        match self.0 {
            N::PosInt(u) => u as f64,
            N::NegInt(i) => i as f64,
            N::Float(f) => f,
        }
    }
}

impl PartialEq for Number {
    fn eq(&self, other: &Number) -> bool {
        match (self.0, other.0) {
            (N::PosInt(a), N::PosInt(b)) => a == b,
            (N::NegInt(a), N::NegInt(b)) => a == b,
            // NaN equals itself here so a value can be a mapping key.
            (N::Float(a), N::Float(b)) => a == b || (a.is_nan() && b.is_nan()),
            _ => false,
        }
    }
}

impl Eq for Number {}

impl Hash for Number {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self.0 {
            N::PosInt(u) => u.hash(state),
            N::NegInt(i) => i.hash(state),
            // 0.0 == -0.0 and every NaN is equal: hash them alike.
            N::Float(0.0) => 0u64.hash(state),
            N::Float(f) if f.is_nan() => u64::MAX.hash(state),
            N::Float(f) => f.to_bits().hash(state),
        }
    }
}

/// How the YAML writer spells the number, which the reader resolves back to the same number.
impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            N::PosInt(u) => write!(f, "{u}"),
            N::NegInt(i) => write!(f, "{i}"),
            N::Float(x) if x.is_nan() => f.write_str(".nan"),
            N::Float(x) if x.is_infinite() => f.write_str(if x > 0.0 { ".inf" } else { "-.inf" }),
            // Debug keeps a `.0` or an exponent, so `1.0` does not read back as the integer 1.
            N::Float(x) => write!(f, "{x:?}"),
        }
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Number({self})")
    }
}

impl Mapping {
    pub fn new() -> Mapping {
        Mapping::default()
    }

    pub fn with_capacity(capacity: usize) -> Mapping {
        Mapping {
            map: IndexMap::with_capacity(capacity),
        }
    }

    /// Inserts or replaces (keeping the key's place); returns the old value.
    pub fn insert(&mut self, key: Value, value: Value) -> Option<Value> {
        self.map.insert(key, value)
    }

    pub fn get<I: Index>(&self, key: I) -> Option<&Value> {
        self.map.get(key.key().as_ref())
    }

    pub fn get_mut<I: Index>(&mut self, key: I) -> Option<&mut Value> {
        self.map.get_mut(key.key().as_ref())
    }

    pub fn contains_key<I: Index>(&self, key: I) -> bool {
        self.map.contains_key(key.key().as_ref())
    }

    /// Removes a key, keeping the order of the others.
    pub fn remove<I: Index>(&mut self, key: I) -> Option<Value> {
        self.map.shift_remove(key.key().as_ref())
    }

    pub fn entry(&mut self, key: Value) -> indexmap::map::Entry<'_, Value, Value> {
        self.map.entry(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> indexmap::map::Iter<'_, Value, Value> {
        self.map.iter()
    }

    pub fn iter_mut(&mut self) -> indexmap::map::IterMut<'_, Value, Value> {
        self.map.iter_mut()
    }

    pub fn keys(&self) -> indexmap::map::Keys<'_, Value, Value> {
        self.map.keys()
    }

    pub fn values(&self) -> indexmap::map::Values<'_, Value, Value> {
        self.map.values()
    }

    pub fn values_mut(&mut self) -> indexmap::map::ValuesMut<'_, Value, Value> {
        self.map.values_mut()
    }

    /// Adds the entries of `other` whose keys are not here yet (a YAML merge).
    fn merge_missing(&mut self, other: Mapping) {
        for (k, v) in other {
            self.map.entry(k).or_insert(v);
        }
    }
}

impl Hash for Mapping {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Order-independent, like equality.
        let mut sum = 0u64;
        for (k, v) in &self.map {
            let mut h = std::hash::DefaultHasher::new();
            k.hash(&mut h);
            v.hash(&mut h);
            sum = sum.wrapping_add(h.finish());
        }
        sum.hash(state);
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.map.iter()).finish()
    }
}

impl IntoIterator for Mapping {
    type Item = (Value, Value);
    type IntoIter = indexmap::map::IntoIter<Value, Value>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.into_iter()
    }
}

impl<'a> IntoIterator for &'a Mapping {
    type Item = (&'a Value, &'a Value);
    type IntoIter = indexmap::map::Iter<'a, Value, Value>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<'a> IntoIterator for &'a mut Mapping {
    type Item = (&'a Value, &'a mut Value);
    type IntoIter = indexmap::map::IterMut<'a, Value, Value>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter_mut()
    }
}

impl FromIterator<(Value, Value)> for Mapping {
    fn from_iter<I: IntoIterator<Item = (Value, Value)>>(iter: I) -> Mapping {
        Mapping {
            map: iter.into_iter().collect(),
        }
    }
}

impl Extend<(Value, Value)> for Mapping {
    fn extend<I: IntoIterator<Item = (Value, Value)>>(&mut self, iter: I) {
        self.map.extend(iter);
    }
}

// ---- serde: writing a value ----

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => n.serialize(s),
            Value::String(v) => s.serialize_str(v),
            Value::Sequence(v) => s.collect_seq(v),
            Value::Mapping(m) => m.serialize(s),
        }
    }
}

impl Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            N::PosInt(u) => s.serialize_u64(u),
            N::NegInt(i) => s.serialize_i64(i),
            N::Float(f) => s.serialize_f64(f),
        }
    }
}

impl Serialize for Mapping {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(&self.map)
    }
}

// ---- serde: reading into a value ----

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::from(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::from(u))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::from(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Mapping::new();
        while let Some((k, v)) = map.next_entry()? {
            out.insert(k, v);
        }
        Ok(Value::Mapping(out))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

impl<'de> Deserialize<'de> for Mapping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mapping, D::Error> {
        match d.deserialize_map(ValueVisitor)? {
            Value::Mapping(m) => Ok(m),
            _ => Ok(Mapping::new()),
        }
    }
}

// ---- serde: a value as the source of a typed read ----

impl<'de> IntoDeserializer<'de, Error> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

fn visit_sequence<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, Error> {
    let mut de = SeqDeserializer::new(items.into_iter());
    let out = visitor.visit_seq(&mut de)?;
    de.end()?;
    Ok(out)
}

fn visit_mapping<'de, V: Visitor<'de>>(map: Mapping, visitor: V) -> Result<V::Value, Error> {
    let mut de = MapDeserializer::new(map.into_iter());
    let out = visitor.visit_map(&mut de)?;
    de.end()?;
    Ok(out)
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_any(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for Value {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => match n.0 {
                N::PosInt(u) => visitor.visit_u64(u),
                N::NegInt(i) => visitor.visit_i64(i),
                N::Float(f) => visitor.visit_f64(f),
            },
            Value::String(s) => visitor.visit_string(s),
            Value::Sequence(items) => visit_sequence(items, visitor),
            Value::Mapping(m) => visit_mapping(m, visitor),
        }
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::String(s) => visitor.visit_string(s),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_byte_buf(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::String(s) => visitor.visit_string(s),
            Value::Sequence(items) => visit_sequence(items, visitor),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Null => visitor.visit_unit(),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// Null reads as an empty sequence (`ports:` with nothing after it).
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Sequence(items) => visit_sequence(items, visitor),
            Value::Null => visit_sequence(Vec::new(), visitor),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    /// Null reads as an empty mapping (`labels:` with nothing after it).
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Mapping(m) => visit_mapping(m, visitor),
            Value::Null => visit_mapping(Mapping::new(), visitor),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    /// A unit variant is a string (`mode: STRICT`); any variant may be a one-key mapping
    /// (`{principal: [...]}`), as JSON writes enums.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Value::String(variant) => visitor.visit_enum(Variant {
                variant,
                value: None,
            }),
            Value::Mapping(m) if m.len() == 1 => {
                let mut entries = m.into_iter();
                match entries.next() {
                    Some((Value::String(variant), value)) => visitor.visit_enum(Variant {
                        variant,
                        value: Some(value),
                    }),
                    Some((key, _)) => {
                        Err(de::Error::invalid_type(key.unexpected(), &"a variant name"))
                    }
                    None => Err(de::Error::invalid_length(0, &"one variant")),
                }
            }
            other => Err(de::Error::invalid_type(
                other.unexpected(),
                &"a variant name or a mapping with one key",
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct Variant {
    variant: String,
    value: Option<Value>,
}

impl<'de> EnumAccess<'de> for Variant {
    type Error = Error;
    type Variant = VariantValue;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantValue), Error> {
        let name: StringDeserializer<Error> = self.variant.into_deserializer();
        Ok((seed.deserialize(name)?, VariantValue(self.value)))
    }
}

struct VariantValue(Option<Value>);

impl<'de> VariantAccess<'de> for VariantValue {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None | Some(Value::Null) => Ok(()),
            Some(other) => Err(other.invalid_type(&"a unit variant")),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        match self.0 {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"a newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Sequence(items)) => visit_sequence(items, visitor),
            Some(other) => Err(other.invalid_type(&visitor)),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &visitor)),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Mapping(m)) => visit_mapping(m, visitor),
            Some(other) => Err(other.invalid_type(&visitor)),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &visitor)),
        }
    }
}

/// Types a value (`T::deserialize`, with this module's error).
pub fn from_value<T: de::DeserializeOwned>(value: Value) -> Result<T, Error> {
    T::deserialize(value)
}
