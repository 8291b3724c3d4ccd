//! Image references with Docker's normalisation (`distribution/reference`): `ubuntu` is
//! `docker.io/library/ubuntu:latest`, `host:5000/x/y@sha256:…` keeps its registry and digest.
//!
//! The grammar is checked by hand rather than with a regex crate: it is small, and hand-written
//! checks let each error say exactly which part is wrong.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

/// The registry Docker Hub names are normalised to.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A normalised image reference: registry, repository, and a tag and/or a digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not a valid image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid reference `{input}`: {reason}")]
pub struct ReferenceError {
    /// The text that was rejected.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// Parses and normalises `s` (Docker's `ParseNormalizedNamed` + `TagNameOnly`): a reference
    /// with neither tag nor digest gets `latest`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        s.parse()
    }

    /// The registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry, e.g. `library/ubuntu`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The host to talk to for the registry API (Docker Hub's API is not at `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The tag or digest a registry's manifest endpoint takes (digest wins).
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Docker's short form: `ubuntu:latest` for `docker.io/library/ubuntu:latest`,
    /// `duckietown/dt-core:daffy`, and the full form for other registries.
    pub fn familiar(&self) -> String {
        let mut name = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            name.push(':');
            name.push_str(t);
        }
        if let Some(d) = &self.digest {
            name.push('@');
            name.push_str(&d.to_string());
        }
        name
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Reference, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("the name is empty".into()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|e| err(e.reason.to_string()))?),
            ),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/', so `host:5000/x` has no tag.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (n, t) = rest.split_at(last_slash + i);
                (n, Some(t[1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(t) = &tag {
            check_tag(t).map_err(err)?;
        }
        if name.is_empty() {
            return Err(err("the repository name is empty".into()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(err(format!(
                "the repository name is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let (registry, path) = split_registry(name);
        if let Some(r) = &registry {
            check_registry(r).map_err(err)?;
        }
        let mut repository = path.to_string();
        for component in path.split('/') {
            check_component(component).map_err(err)?;
        }
        let registry = match registry.as_deref() {
            None | Some("index.docker.io") | Some("registry-1.docker.io") => DOCKER_HUB.to_string(),
            Some(r) => r.to_string(),
        };
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Docker's `splitDockerDomain`: the first component is a registry if it has a `.` or `:`, is
/// `localhost`, or has upper-case letters (which a repository may not).
fn split_registry(name: &str) -> (Option<String>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first.to_string()), rest)
        }
        _ => (None, name),
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag `{tag}` must be 1-128 characters of [A-Za-z0-9_.-], not starting with `.` or `-`"
        ))
    }
}

fn check_registry(host: &str) -> Result<(), String> {
    let (h, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || host.starts_with('[') => {
            if h.starts_with('[') && !h.ends_with(']') {
                (host, None)
            } else {
                (h, Some(p))
            }
        }
        _ => (host, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("registry port `{p}` is not a number"));
    }
    if let Some(v6) = h.strip_prefix('[') {
        return if v6.ends_with(']') && v6.len() > 1 {
            Ok(())
        } else {
            Err(format!("registry `{host}` is not a valid IPv6 address"))
        };
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("registry host `{h}` is not a valid host name"))
    }
}

/// A path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or runs of `-`.
fn check_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("the repository name has an empty path component".into());
    }
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Err(format!(
            "repository name must be lowercase (`{c}` has upper-case letters)"
        ));
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!(
            "path component `{c}` must start and end with a lowercase letter or digit"
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let valid = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !valid {
            return Err(format!(
                "path component `{c}` has an invalid separator `{sep}` (allowed: `.`, `_`, `__`, `-`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("ubuntu", "docker.io/library/ubuntu:latest"),
            ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
            ("afdaniele/compose:0.9", "docker.io/afdaniele/compose:0.9"),
            (
                "duckietown/dt-core:daffy-arm64v8",
                "docker.io/duckietown/dt-core:daffy-arm64v8",
            ),
            ("docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
            (
                "index.docker.io/library/ubuntu:x",
                "docker.io/library/ubuntu:x",
            ),
            ("localhost/foo", "localhost/foo:latest"),
            ("localhost:5000/foo/bar:1", "localhost:5000/foo/bar:1"),
            ("127.0.0.1:5000/x/y:t", "127.0.0.1:5000/x/y:t"),
            ("[::1]:5000/x:t", "[::1]:5000/x:t"),
            ("a__b/c-d---e/f.g_h", "docker.io/a__b/c-d---e/f.g_h:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = Reference::parse(&format!("host:5000/x/y@{d}")).unwrap();
        assert_eq!(r.registry(), "host:5000");
        assert_eq!(r.repository(), "x/y");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), d);
        let r = Reference::parse(&format!("x:t@{d}")).unwrap();
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.manifest_ref(), d);
    }

    #[test]
    fn familiar_names() {
        for (input, want) in [
            ("ubuntu", "ubuntu:latest"),
            ("duckietown/dt-core:daffy", "duckietown/dt-core:daffy"),
            ("host:5000/x:1", "host:5000/x:1"),
        ] {
            assert_eq!(Reference::parse(input).unwrap().familiar(), want);
        }
    }

    #[test]
    fn rejects_invalid() {
        for (input, needle) in [
            ("", "empty"),
            ("Ubuntu", "lowercase"),
            ("duckietown/DT-core", "lowercase"),
            ("ubuntu:", "tag"),
            ("ubuntu:-x", "tag"),
            ("a//b", "empty path component"),
            ("-a/b", "start and end"),
            ("a/b-", "start and end"),
            ("a..b", "separator"),
            ("a/b@sha256:123", "64 hex"),
            ("a@md5:x", "sha256"),
            ("host:x/y", "port"),
            ("a:b:c", "separator"),
        ] {
            let e = Reference::parse(input).unwrap_err();
            assert!(e.to_string().contains(needle), "{input}: {e}");
        }
        let long = "a".repeat(300);
        assert!(Reference::parse(&long).is_err());
    }

    #[test]
    fn api_host_for_docker_hub() {
        assert_eq!(
            Reference::parse("ubuntu").unwrap().api_host(),
            DOCKER_HUB_API
        );
        assert_eq!(Reference::parse("h:1/u").unwrap().api_host(), "h:1");
    }
}
