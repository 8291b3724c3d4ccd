//! Strict JSON in, canonical JSON out.
//!
//! Manifests and configs are content-addressed, so two rules matter: a document with duplicate
//! keys is refused (parsers disagree on which value wins, which lets one digest mean two things —
//! the class of bug behind CVE-2021-41190), and every document we write has sorted keys and no
//! insignificant whitespace, so the same value always has the same digest.

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// A JSON document that could not be accepted.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct JsonError {
    /// Which document (e.g. "manifest sha256:…", "manifest.json").
    pub what: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses `bytes` as `T`, refusing duplicate object keys anywhere in the document.
pub fn parse_strict<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, JsonError> {
    let fail = |reason: String| JsonError {
        what: what.to_string(),
        reason,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    NoDuplicates::deserialize(&mut de).map_err(|e| fail(e.to_string()))?;
    de.end().map_err(|e| fail(e.to_string()))?;
    serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))
}

/// Serialises `value` with sorted keys and no whitespace.
pub fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    // Going through `Value` sorts object keys (serde_json's map is a BTreeMap unless the
    // `preserve_order` feature is on, which this crate does not enable).
    let v = serde_json::to_value(value).expect("in-memory JSON values always serialise");
    serde_json::to_vec(&v).expect("in-memory JSON values always serialise")
}

/// Walks a document, failing on the first duplicate key.
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        for doc in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":[{"b":1,"c":2,"b":3}]}"#,
            r#"{"o":{"k":{"k":1,"k":1}}}"#,
        ] {
            let e = parse_strict::<Value>("doc", doc.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("duplicate key"), "{doc}: {e}");
        }
        assert!(parse_strict::<Value>("doc", br#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#).is_ok());
        assert!(parse_strict::<Value>("doc", br#"{"a":1} x"#).is_err());
    }

    #[test]
    fn canonical_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"z":[1,2],"c":null}}"#).unwrap();
        assert_eq!(canonical(&v), br#"{"a":{"c":null,"z":[1,2]},"b":1}"#);
    }
}
