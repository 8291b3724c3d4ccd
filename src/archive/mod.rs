//! Image archives: what `docker save` writes and `docker load` reads (docker-archive), OCI
//! archives (a tar of an OCI image layout) and OCI layout directories, in both directions.
//!
//! [`visit`] streams an archive's entries to a visitor without staging anything (the robot's
//! `dt-agent image import`, which consumes `docker save`'s layers as they arrive).
//! Loading (`dts image load`) stages every file of the archive in the store's ingest area, checks the whole image
//! graph (every digest, every size, every layer's diff_id against its config, every document
//! strictly parsed, every name valid), and only then publishes blobs and names. Bad input
//! therefore leaves the store exactly as it was. Saving writes a deterministic tar (sorted
//! entries, zero mtimes, numeric owners) to a temp file renamed over the output at the end.

mod load;
mod save;
mod stream;

pub use load::{LoadReport, StageOptions, StagedArchive, StagedImage, load, stage};
pub use save::{SaveFormat, SaveReport, save};
pub use stream::{Entry, Interrupted, visit};

use crate::oci::json::JsonError;
use crate::store::StoreError;
use crate::util::fs::PathError;

/// Why an archive could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive's content is wrong: the user's input is at fault (exit 2).
    #[error("{path}: {reason}")]
    Invalid {
        /// The archive.
        path: String,
        /// What is wrong, naming the entry.
        reason: String,
    },
    /// The archive names no image and no `-t` was given.
    #[error("{path}: the archive does not name its image; name it with `-t NAME`")]
    Unnamed {
        /// The archive.
        path: String,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ArchiveError {
    /// Whether the user's input is at fault (exit 2) rather than the operation (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            ArchiveError::Invalid { .. } | ArchiveError::Unnamed { .. } => true,
            ArchiveError::Store(e) => e.is_bad_input(),
            ArchiveError::Io(_) => false,
        }
    }

    /// Bad content in the archive at `path`.
    pub fn invalid(path: &std::path::Path, reason: impl Into<String>) -> ArchiveError {
        ArchiveError::Invalid {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }

    fn json(path: &std::path::Path, e: JsonError) -> ArchiveError {
        ArchiveError::invalid(path, e.to_string())
    }
}
