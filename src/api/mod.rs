//! The contract between laptop and robot: every value that crosses between `dts` and
//! `dt-agent` (or between `dt-agent`'s commands and its daemon), and the robot's records that
//! embed them. Pure data, like `oci`: no I/O, no async, nothing of either side's machinery.
//!
//! - [`container`]: what a container is made of and what `ps`, `logs`, `diff`, `volume`
//!   answer.
//! - [`names`]: every name that becomes a path or a command-line argument on the robot
//!   ([`ContainerName`], [`VolumeName`], [`ImageRef`], [`RoleName`], [`CdiDevice`],
//!   [`Signal`]), each checked when made and when deserialized.
//! - [`release`]: a release's spec, its record on the robot, a deploy's outcome.
//! - [`daemon`]: the daemon's requests, their typed answers, and [`RemoteError`], which carries
//!   its class and cause chain across.
//! - [`seccomp`]: `--security-opt` and `--read-only`, and Docker's seccomp profile format.
//! - [`transfer`]: what a transfer names (objects, the built image).
//! - [`held`]: images the robot already holds, as its store resolves a name for the laptop.
//!
//! Serde shapes here are wire formats (docs/wire.md) and, for records, on-disk formats
//! (docs/formats.md): fields are only added, optional, so old robots and old records parse.

pub mod container;
pub mod daemon;
pub mod held;
pub mod names;
pub mod release;
pub mod seccomp;
pub mod transfer;

pub use container::{
    Change, ContainerConfig, ContainerInfo, LogConfig, LogLine, NetworkMode, PortMapping,
    PortSpecError, Proto, RestartPolicy, SpecError, Ulimit, VolumeInfo, VolumeSource, VolumeSpec,
};
pub use daemon::{
    Answer, AnswerError, ErrorClass, ExecReply, ExecSpec, RemoteError, Request, RuntimeInfo, decode,
};
pub use held::{HeldImage, ResolveQuery};
pub use names::{CdiDevice, ContainerName, ImageRef, RoleName, Signal, VolumeName, is_valid_name};
pub use release::{
    DeployOutcome, HealthSpec, ReleaseRecord, ReleaseSpec, ReleaseState, ServiceAction,
    ServiceOutcome, ServiceSpec,
};
pub use transfer::{BuiltImage, Fetched, FreshCredential, HubBlob, HubFetch, HubPart, ObjectSpec};
