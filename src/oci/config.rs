//! The image configuration (OCI image-spec `config.md` plus Docker's extensions from
//! `moby/docker-image-spec`): every field Docker writes is typed — `Healthcheck`, `OnBuild`,
//! `Shell`, `ArgsEscaped` among them — and anything else is kept in `extra`, so reading then
//! writing a config loses nothing. Maps are `BTreeMap`s and [`ImageConfig::to_canonical_json`]
//! sorts keys, so the same config always has the same digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::digest::Digest;
use super::json::{JsonError, canonical, parse_strict};
use super::platform::Platform;

/// An image configuration blob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author (Dockerfile `MAINTAINER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// OS version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Defaults for containers run from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// The layers' diff_ids.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per Dockerfile instruction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields we do not model (`container`, `docker_version`, `container_config`, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `rootfs` of an image config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests, base first.
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Container defaults (`config` in the image config), in Docker's capitalised spelling.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `EXPOSE` (`"80/tcp": {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// `ENV`, `KEY=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME` (`"/data": {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Windows-only escaping flag Docker still writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    /// `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// `SHELL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Unmodelled fields (`Hostname`, `AttachStdin`, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `HEALTHCHECK` as Docker stores it (durations in nanoseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", cmd]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    /// Between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// Per check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Grace period at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    /// Between checks during the start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    /// Failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

impl ImageConfig {
    /// Parses a config blob strictly (duplicate keys refused).
    pub fn parse(what: &str, bytes: &[u8]) -> Result<ImageConfig, JsonError> {
        parse_strict(what, bytes)
    }

    /// Canonical bytes: sorted keys, no whitespace. Same config, same digest.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        canonical(self)
    }

    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
            variant: self.variant.clone(),
            features: None,
        }
        .normalized()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_docker_field_and_is_canonical() {
        let docker = r#"{"architecture":"arm64","config":{"Hostname":"","User":"duckie","Env":["PATH=/usr/bin"],"Cmd":null,"Entrypoint":["/entrypoint.sh"],"Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":30000000000,"Retries":3},"OnBuild":["RUN echo hi"],"Shell":["/bin/bash","-c"],"ArgsEscaped":true,"Labels":{"b":"2","a":"1"},"ExposedPorts":{"8080/tcp":{}},"StopSignal":"SIGINT"},"container":"abc","created":"2024-01-01T00:00:00Z","docker_version":"24.0.0","history":[{"created_by":"RUN x","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},"variant":"v8"}"#;
        let c = ImageConfig::parse("config", docker.as_bytes()).unwrap();
        let cc = c.config.as_ref().unwrap();
        assert_eq!(cc.healthcheck.as_ref().unwrap().retries, Some(3));
        assert_eq!(
            cc.on_build.as_deref(),
            Some(&["RUN echo hi".to_string()][..])
        );
        assert_eq!(cc.args_escaped, Some(true));
        assert!(cc.extra.contains_key("Hostname"));
        assert!(c.extra.contains_key("docker_version"));
        let out = c.to_canonical_json();
        let again = ImageConfig::parse("again", &out).unwrap();
        assert_eq!(again, c);
        assert_eq!(again.to_canonical_json(), out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.find("\"a\":\"1\"").unwrap() < s.find("\"b\":\"2\"").unwrap());
        assert_eq!(c.platform(), Platform::arm64());
    }
}
