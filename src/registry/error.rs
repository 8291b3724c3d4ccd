//! The registry client's errors: one variant per outcome a caller branches on (not found,
//! not authorized, corrupt content, missing platform, unexpected HTTP answer, unreachable
//! registry), each naming the registry, repository or digest it is about.

use crate::oci::Digest;
use crate::store::StoreError;

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such repository, tag or digest (the CLI's "image not found").
    #[error("image not found: `{reference}` (the registry has no such repository, tag or digest)")]
    NotFound {
        /// The reference that was asked for, in full.
        reference: String,
    },
    /// The registry (or its token service) refused access.
    #[error("registry {registry}: not authorized for `{repository}`: {detail}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// True when credentials were sent and refused (wrong user or password), false when
        /// none were found or they do not grant the access needed.
        rejected: bool,
        /// What happened and what to do about it.
        detail: String,
    },
    /// Content did not hash to the digest it was asked for or described with.
    #[error(
        "registry {registry}: {what} in `{repository}` does not match its digest: expected {expected}, got {actual}"
    )]
    DigestMismatch {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// What it was ("blob", "manifest", "manifest for tag `v1`").
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest of what arrived (or what the registry claims).
        actual: Digest,
    },
    /// Content had another length than its descriptor says.
    #[error(
        "registry {registry}: blob {digest} in `{repository}` has {actual} bytes, its descriptor says {expected}"
    )]
    SizeMismatch {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// The blob.
        digest: Digest,
        /// Bytes the descriptor promises.
        expected: u64,
        /// Bytes that arrived (at least; the download stops at the first byte too many).
        actual: u64,
    },
    /// The image has no manifest for a platform that was asked for.
    #[error("image `{reference}` has no {wanted} variant (it has: {available})")]
    NoSuchPlatform {
        /// The image.
        reference: String,
        /// The platform asked for (`linux/arm/v7`).
        wanted: String,
        /// The platforms it has, comma-separated.
        available: String,
    },
    /// The registry answered with a status we do not handle there.
    #[error("{method} {url} answered {status}{}", excerpt(body_excerpt))]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The request method.
        method: String,
        /// The request URL (it names the registry, repository and digest or tag).
        url: String,
        /// The start of the response body (registries explain errors there as JSON).
        body_excerpt: String,
    },
    /// The registry could not be reached, or the connection broke.
    #[error("cannot talk to registry {registry} ({url}): {message}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Transport {
        /// The registry host.
        registry: String,
        /// The URL that was being requested.
        url: String,
        /// The error chain, outermost first.
        message: String,
        /// What to try, when we can guess (e.g. `--insecure` for a plain-HTTP lab registry).
        hint: Option<String>,
    },
    /// The registry broke the protocol (a malformed manifest, a missing `Location` header…).
    #[error("registry {registry}: `{repository}`: {reason}")]
    Protocol {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// What was wrong.
        reason: String,
    },
    /// The HTTP client could not be set up.
    #[error("cannot set up the registry client: {reason}")]
    Setup {
        /// Why.
        reason: String,
    },
    /// The local store failed (a missing blob when pushing, a full disk when pulling…).
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn excerpt(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// The registry client's result type.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
