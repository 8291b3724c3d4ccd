//! A transfer through a lab hub (`deploy --via`, docs/wire.md "Lab hub"): of the layers a plan
//! sends, the large ones the hub holds are fetched by the robot itself (`fetch`, wire 2.7);
//! the rest — documents, small changes — cross the SSH link as before.
//!
//! **The line** ([`via_hub`]). Per layer the robot lacks, the laptop compares what it would
//! send directly (the layer's compressed blob when it goes whole; else the files the robot
//! lacks, estimated compressed at half their size, patches at a sixteenth) with what the robot
//! would download (the blob, always whole). The robot's own link carries either, so for one
//! robot the smaller wins; but the laptop's uplink is shared by every robot of a rollout and
//! the hub sits on a wired link, so bytes from the hub are cheaper than bytes from the laptop.
//! A layer goes via the hub when the direct bytes are at least [`HUB_MIN_DIRECT`] (below that
//! a hub round trip and a whole-blob download cost more than they save: a one-file edit stays
//! on SSH) and the blob is at most [`HUB_MAX_RATIO`] times the direct bytes (a one-line change
//! in a 300 MB layer is not worth a 300 MB download, even from a fast hub).

use tokio::io::{AsyncRead, AsyncWrite};

use super::super::{FromRobot, ToRobot, WireError};
use super::plan::{Objects, PlannedLayer};
use super::{Connection, unexpected};
use crate::api::{Fetched, FreshCredential, HubFetch};
use crate::progress::{Event, Reporter};

/// Direct bytes below which a layer never goes via the hub.
pub const HUB_MIN_DIRECT: u64 = 1 << 20;
/// A layer goes via the hub only when its blob is at most this many times its direct bytes.
pub const HUB_MAX_RATIO: u64 = 4;

/// Whether a layer goes via the hub: `direct` (estimated bytes on the SSH link) against `blob`
/// (bytes the robot downloads from the hub). See the module doc for why.
pub fn via_hub(direct: u64, blob: u64) -> bool {
    direct >= HUB_MIN_DIRECT && blob <= direct.saturating_mul(HUB_MAX_RATIO)
}

/// The bytes a planned layer would take on the SSH link, estimated.
pub fn direct_estimate(layer: &PlannedLayer) -> u64 {
    match &layer.objects {
        // Whole: every file, compressed about as the blob is.
        Objects::Streamed => layer.blob.size,
        Objects::Listed { objects, patches } => objects
            .iter()
            .map(|o| {
                if patches.contains_key(&o.digest) {
                    o.size / 16
                } else {
                    o.size / 2
                }
            })
            .sum(),
    }
}

/// What a deploy through a hub says when the robot's agent cannot fetch (older than wire 2.8):
/// it then sends everything over SSH, as before.
pub fn older_robot_note(hello: &super::RobotHello) -> String {
    format!(
        "warning: the robot's dt-agent {} speaks wire protocol {}, the lab hub needs 2.8: \
         everything goes over SSH; `dts duckiebot provision` upgrades it",
        hello.agent_version, hello.protocol
    )
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Asks the robot to fetch `hub`'s blobs and waits for it, reporting its progress. The
    /// robot failing to use the hub ends the session with its error, which names the hub.
    /// With `hub.refresh` set, a robot whose hub refused the credential asks for another
    /// (2.9), which `fresh` makes; its failure ends the session.
    pub async fn fetch_from_hub<F, Fut>(
        &mut self,
        hub: HubFetch,
        reporter: &dyn Reporter,
        mut fresh: F,
    ) -> Result<Fetched, WireError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<Option<String>, WireError>> + Send,
    {
        let total: u64 = hub.blobs.iter().map(|b| b.size).sum();
        let id = match hub.blobs.as_slice() {
            [one] => format!("hub {}", one.digest.short()),
            _ => "hub fetch".to_string(),
        };
        reporter.event(Event::start(
            id.clone(),
            format!(
                "robot fetches {} layer(s) from {}",
                hub.blobs.len(),
                hub.url
            ),
            Some(total),
        ));
        let msg = ToRobot::Fetch { hub };
        let mut next = self.call(&msg).await?;
        loop {
            match next {
                FromRobot::FetchProgress { bytes } => reporter.event(Event::Advance {
                    id: id.clone(),
                    done: bytes,
                }),
                FromRobot::Fetched(f) => {
                    reporter.event(Event::finish(
                        id,
                        format!("{} layer(s), {} bytes from the hub", f.layers, f.bytes),
                    ));
                    return Ok(f);
                }
                FromRobot::NeedCredential => {
                    let authorization = fresh().await?;
                    let answer = ToRobot::Credential(FreshCredential { authorization });
                    next = self.call(&answer).await?;
                    continue;
                }
                other => return Err(unexpected(&other)),
            }
            next = self.answer().await?;
        }
    }

    /// Notes that the robot fetched layers: it has objects now, so the next plan asks it
    /// which (a robot that began empty is otherwise sent whole layers unasked).
    pub fn fetched_from_hub(&mut self) {
        self.hello.has_objects = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectSpec;
    use crate::oci::{Descriptor, Digest};
    use std::collections::BTreeMap;

    const MIB: u64 = 1 << 20;

    fn layer(blob: u64, objects: Option<Vec<u64>>) -> PlannedLayer {
        PlannedLayer {
            diff_id: Digest::of(b"d"),
            blob: Descriptor::new(crate::oci::media::OCI_LAYER_GZIP, Digest::of(b"b"), blob),
            image: "x".into(),
            position: 0,
            of: 1,
            how: super::super::LayerHow::Whole,
            objects: match objects {
                None => Objects::Streamed,
                Some(sizes) => Objects::Listed {
                    objects: sizes
                        .iter()
                        .enumerate()
                        .map(|(i, s)| ObjectSpec {
                            digest: Digest::of(i.to_string().as_bytes()),
                            size: *s,
                            mode: 0o644,
                            uid: 0,
                            gid: 0,
                            mtime: 0,
                            xattrs: Vec::new(),
                        })
                        .collect(),
                    patches: BTreeMap::new(),
                },
            },
        }
    }

    #[test]
    fn whole_layers_go_via_the_hub_small_changes_go_direct() {
        // A cold robot's whole layer: its blob either way, and the laptop's uplink is shared.
        assert!(via_hub(direct_estimate(&layer(300 * MIB, None)), 300 * MIB));
        // A one-file edit: a few KB direct, never a whole blob download.
        let edit = layer(300 * MIB, Some(vec![4096]));
        assert!(!via_hub(direct_estimate(&edit), 300 * MIB));
        // Small whole layers stay on SSH: a hub round trip costs more than it saves.
        assert!(!via_hub(direct_estimate(&layer(MIB / 2, None)), MIB / 2));
        // Half a layer changed: still via the hub (the blob is 2x the direct bytes, estimated).
        let half = layer(100 * MIB, Some(vec![100 * MIB]));
        assert_eq!(direct_estimate(&half), 50 * MIB);
        assert!(via_hub(direct_estimate(&half), 100 * MIB));
        // A tenth of it: 10 MB direct against a 100 MB download: direct.
        let tenth = layer(100 * MIB, Some(vec![20 * MIB]));
        assert!(!via_hub(direct_estimate(&tenth), 100 * MIB));
        // The edges.
        assert!(via_hub(HUB_MIN_DIRECT, HUB_MIN_DIRECT * HUB_MAX_RATIO));
        assert!(!via_hub(HUB_MIN_DIRECT, HUB_MIN_DIRECT * HUB_MAX_RATIO + 1));
        assert!(!via_hub(HUB_MIN_DIRECT - 1, 1));
        assert!(via_hub(u64::MAX, u64::MAX));
    }

    /// A robot below 2.8 is never sent `fetch` (it would end the session on the unknown
    /// `op`): `transfer_via` checks `fetches()` and notes why it goes direct.
    #[test]
    fn an_older_robot_falls_back_to_ssh_with_a_note() {
        let json = r#"{"platform":{"architecture":"arm","os":"linux","variant":"v7"},
            "hostname":"old","agent_version":"0.1.0","free_bytes":1,"images":[]}"#;
        let mut hello: super::super::RobotHello = serde_json::from_str(json).unwrap();
        hello.protocol = "2.6".into();
        assert!(!hello.fetches());
        let note = older_robot_note(&hello);
        assert!(note.contains("2.6") && note.contains("over SSH"), "{note}");
        assert!(note.contains("dts duckiebot provision"), "{note}");
        hello.protocol = format!(
            "{}.{}",
            super::super::super::MAJOR,
            super::super::super::MINOR
        );
        assert!(hello.fetches());
    }
}
