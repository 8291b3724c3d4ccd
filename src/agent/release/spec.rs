//! What a deploy asks the robot to run: the wire format of a release, shared by the laptop
//! (which resolves a stack file into it) and the daemon (which applies it). Content is referred
//! to by manifest digest only — by the time a release arrives, every image is in the store.
//! Also the spec's canonical form (`normalize`), in which the daemon compares releases.

use std::collections::BTreeSet;

use super::ReleaseError;
use crate::agent::container::check_name;
pub use crate::api::release::{HealthSpec, ReleaseSpec, ServiceSpec};

/// Whether two service specs run the same container (the release label aside).
pub(super) fn same_service(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    let strip = |s: &ServiceSpec| {
        let mut s = s.clone();
        s.container.release = None;
        s
    };
    strip(a) == strip(b)
}

/// Checks a spec and puts it in its canonical form: services sorted by stage, order and name;
/// each container named after its service, running its manifest, with no release label yet.
pub(super) fn normalize(mut spec: ReleaseSpec) -> Result<ReleaseSpec, ReleaseError> {
    if spec.stack.trim().is_empty() {
        return Err(ReleaseError::BadSpec("the stack has no name".into()));
    }
    if spec.services.is_empty() {
        return Err(ReleaseError::BadSpec(format!(
            "stack `{}` has no services",
            spec.stack
        )));
    }
    let mut seen = BTreeSet::new();
    for s in &mut spec.services {
        check_name(&s.name)
            .map_err(|_| ReleaseError::BadSpec(format!("invalid service name `{}`: use letters, digits, `_`, `.` and `-` (it names the container)", s.name)))?;
        if !seen.insert(s.name.clone()) {
            return Err(ReleaseError::BadSpec(format!(
                "service `{}` appears twice",
                s.name
            )));
        }
        if s.container.auto_remove {
            return Err(ReleaseError::BadSpec(format!(
                "service `{}`: a release's containers cannot remove themselves (auto_remove)",
                s.name
            )));
        }
        s.container.name = s.name.clone();
        s.container.service = Some(s.name.clone());
        s.container.release = None;
        s.container.image = crate::api::ImageRef::digest(&s.manifest);
    }
    spec.services
        .sort_by(|a, b| (a.stage, a.order, &a.name).cmp(&(b.stage, b.order, &b.name)));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::ContainerConfig;
    use crate::oci::Digest;

    fn svc(name: &str, stage: u32) -> ServiceSpec {
        ServiceSpec {
            name: name.parse().unwrap(),
            stage,
            order: 0,
            image_name: "busybox".into(),
            manifest: Digest::of(name.as_bytes()),
            container: ContainerConfig::default(),
            healthcheck: None,
        }
    }

    #[test]
    fn normalizing_sorts_names_and_labels() {
        let spec = ReleaseSpec {
            stack: "duckiebot".into(),
            services: vec![svc("core", 2), svc("interface", 0), svc("car", 1)],
            probation: Duration::from_secs(1),
        };
        let n = normalize(spec.clone()).unwrap();
        let names: Vec<&str> = n.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["interface", "car", "core"]);
        assert_eq!(n.services[0].container.name, "interface");
        assert_eq!(
            n.services[0].container.service.as_deref(),
            Some("interface")
        );
        assert_eq!(
            n.services[0].container.image,
            n.services[0].manifest.to_string()
        );
        // Order of the input does not matter; labels do not.
        let mut again = spec.clone();
        again.services.reverse();
        again.services[0].container.release = Some(7);
        assert_eq!(normalize(again).unwrap(), n);

        let mut dup = spec.clone();
        dup.services.push(svc("core", 0));
        assert!(matches!(normalize(dup), Err(ReleaseError::BadSpec(m)) if m.contains("twice")));
        let mut bad = spec.clone();
        // Decoding never yields an unchecked name; the one a `Default` leaves is refused.
        bad.services[0].name = crate::api::ContainerName::default();
        assert!(normalize(bad).unwrap_err().is_bad_input());
        let mut empty = spec;
        empty.services.clear();
        assert!(normalize(empty).is_err());
    }
}
