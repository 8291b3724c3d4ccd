//! A service's `security_opt` and `read_only`, as compose reads them: `seccomp=unconfined`,
//! `seccomp=PATH` (a Docker-format profile, relative to the stack file, read here and carried
//! in the release so the robot needs no copy), `no-new-privileges[:true|false]`, and a
//! read-only root file system.

use std::path::Path;

use serde_yaml_ng::Value;

use crate::api::seccomp::Security;
use crate::profile::ProfileError;
use crate::profile::yaml::{Doc, Map, index, kind};

/// The service's [`Security`]; Docker's defaults when it sets neither key.
pub(super) fn parse_security(doc: Doc<'_>, m: &Map<'_>) -> Result<Security, ProfileError> {
    let mut security = Security::default();
    if let Some(v) = m.get("read_only") {
        security.read_only = doc.bool(&m.at("read_only"), v)?;
    }
    let Some(v) = m.get("security_opt") else {
        return Ok(security);
    };
    let at = m.at("security_opt");
    let Value::Sequence(items) = v else {
        return Err(doc.err(&at, format!("expected a list, found {}", kind(v))));
    };
    let dir = Path::new(doc.file).parent().unwrap_or(Path::new(""));
    for (i, item) in items.iter().enumerate() {
        let iat = index(&at, i);
        let opt = doc.string(&iat, item)?;
        security
            .apply_opt(&opt, |p| {
                let path = dir.join(p);
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
            })
            .map_err(|e| doc.err(&iat, e.0))?;
    }
    Ok(security)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::api::seccomp::Seccomp;
    use crate::profile::stack::Stack;

    fn stack(dir: &std::path::Path, service: &str) -> Result<Stack, String> {
        let file = dir.join("stack.yaml");
        let text = format!("services:\n  s:\n    image: busybox\n{service}");
        std::fs::write(&file, &text).unwrap();
        Stack::load(&file, &BTreeMap::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn security_opt_and_read_only_are_read_as_compose_reads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let s = stack(tmp.path(), "").unwrap();
        assert!(s.services["s"].security.is_default());

        let s = stack(
            tmp.path(),
            "    read_only: true\n    security_opt: [\"seccomp=unconfined\", \"no-new-privileges:true\"]\n",
        )
        .unwrap();
        let sec = &s.services["s"].security;
        assert!(sec.read_only && sec.no_new_privileges);
        assert_eq!(sec.seccomp, Seccomp::Unconfined);

        // A profile next to the stack file: read, checked, carried.
        let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#;
        std::fs::write(tmp.path().join("mine.json"), profile).unwrap();
        let s = stack(tmp.path(), "    security_opt: [seccomp=mine.json]\n").unwrap();
        assert_eq!(
            s.services["s"].security.seccomp,
            Seccomp::Profile(profile.into())
        );
        let c = s.services["s"]
            .container("s", &crate::oci::Digest::of(b"m"))
            .unwrap();
        assert_eq!(c.security.seccomp, Seccomp::Profile(profile.into()));

        for (bad, says) in [
            (
                "    security_opt: [seccomp=absent.json]\n",
                "cannot read seccomp profile `absent.json`",
            ),
            (
                "    security_opt: [label=disable]\n",
                "unsupported security option `label=disable`",
            ),
            ("    security_opt: seccomp=unconfined\n", "expected a list"),
            ("    read_only: maybe\n", "read_only"),
        ] {
            let e = stack(tmp.path(), bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
