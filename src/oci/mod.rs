//! The image model: digests, references, platforms, manifests, indexes and image configs.
//!
//! Pure data and parsing: nothing here does I/O, so every rule is a table test.

pub mod config;
pub mod digest;
pub mod json;
pub mod manifest;
pub mod platform;
pub mod reference;

pub use config::ImageConfig;
pub use digest::Digest;
pub use manifest::{Compression, Descriptor, Document, Index, Manifest, media};
pub use platform::Platform;
pub use reference::Reference;
