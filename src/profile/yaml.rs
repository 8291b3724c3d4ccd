//! Reading a parsed YAML tree by hand, so that every error names the dotted key path of the
//! value at fault. serde's `deny_unknown_fields` names the field but not where it sits, and
//! `devices.motors.nodez` is what a person needs to find the typo in a 60-line file.

use serde_yaml_ng::Value;

use super::ProfileError;

/// One document being read: the file name every error carries.
#[derive(Clone, Copy)]
pub(crate) struct Doc<'f> {
    pub file: &'f str,
}

/// `parent.key`, or `key` at the top.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A mapping whose keys have been checked against what the reader understands.
pub(crate) struct Map<'v> {
    pub path: String,
    pub entries: Vec<(String, &'v Value)>,
}

impl<'v> Map<'v> {
    /// The value of `key`; an explicit `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'v Value> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_null())
    }

    /// Key path of `key` inside this mapping.
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

/// What YAML calls a value, for "expected a list, found a mapping".
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl<'f> Doc<'f> {
    /// Parses text into a tree with `<<` merge keys applied (compose files use anchors).
    pub fn parse(&self, text: &str) -> Result<Value, ProfileError> {
        let mut v: Value = serde_yaml_ng::from_str(text).map_err(|e| ProfileError::Syntax {
            file: self.file.to_string(),
            message: e.to_string(),
        })?;
        v.apply_merge().map_err(|e| ProfileError::Syntax {
            file: self.file.to_string(),
            message: e.to_string(),
        })?;
        Ok(v)
    }

    pub fn err(&self, path: &str, message: impl Into<String>) -> ProfileError {
        ProfileError::invalid(self.file, path, message)
    }

    fn expected(&self, path: &str, what: &str, v: &Value) -> ProfileError {
        self.err(path, format!("expected {what}, found {}", kind(v)))
    }

    /// A mapping with string keys, each of which `allowed` accepts; the first other key is
    /// `PATH.KEY: unknown key`.
    pub fn map<'v>(
        &self,
        path: &str,
        v: &'v Value,
        allowed: impl Fn(&str) -> bool,
    ) -> Result<Map<'v>, ProfileError> {
        let m = match v {
            Value::Mapping(m) => m,
            Value::Null => {
                return Ok(Map {
                    path: path.to_string(),
                    entries: Vec::new(),
                });
            }
            other => return Err(self.expected(path, "a mapping", other)),
        };
        let mut entries = Vec::with_capacity(m.len());
        for (k, val) in m {
            let key = match k {
                Value::String(s) => s.clone(),
                other => {
                    return Err(
                        self.err(path, format!("keys must be strings, found {}", kind(other)))
                    );
                }
            };
            if !allowed(&key) {
                return Err(self.err(&join(path, &key), "unknown key"));
            }
            entries.push((key, val));
        }
        Ok(Map {
            path: path.to_string(),
            entries,
        })
    }

    /// A string (numbers and booleans are not silently stringified here).
    pub fn string(&self, path: &str, v: &Value) -> Result<String, ProfileError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.expected(path, "a string", other)),
        }
    }

    /// A scalar as text: compose lets `environment` values and the like be numbers or booleans.
    pub fn scalar(&self, path: &str, v: &Value) -> Result<String, ProfileError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Null => Ok(String::new()),
            other => Err(self.expected(path, "a string, number or boolean", other)),
        }
    }

    /// A list of strings.
    pub fn strings(&self, path: &str, v: &Value) -> Result<Vec<String>, ProfileError> {
        match v {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.string(&index(path, i), item))
                .collect(),
            other => Err(self.expected(path, "a list of strings", other)),
        }
    }

    /// A boolean.
    pub fn bool(&self, path: &str, v: &Value) -> Result<bool, ProfileError> {
        match v {
            Value::Bool(b) => Ok(*b),
            other => Err(self.expected(path, "true or false", other)),
        }
    }

    /// A non-negative integer, given as a number or (after interpolation) as digits.
    pub fn u32(&self, path: &str, v: &Value) -> Result<u32, ProfileError> {
        let bad = || {
            self.err(
                path,
                format!("expected a non-negative integer, found {}", show(v)),
            )
        };
        match v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad),
            Value::String(s) => s.trim().parse().map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// A number, given as a number or (after interpolation) as text.
    pub fn f64(&self, path: &str, v: &Value) -> Result<f64, ProfileError> {
        let bad = || self.err(path, format!("expected a number, found {}", show(v)));
        match v {
            Value::Number(n) => n.as_f64().ok_or_else(bad),
            Value::String(s) => s.trim().parse().map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// A value as the user wrote it, for messages: scalars in backticks, containers by kind.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::Bool(b) => format!("`{b}`"),
        other => kind(other).to_string(),
    }
}
