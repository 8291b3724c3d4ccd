//! Progress events. The library reports what it is doing through a [`Reporter`]; the CLI decides
//! how to show it (bars on a TTY, plain lines or JSON lines otherwise). Nothing here prints.

use std::sync::Arc;

/// One thing that happened during a long operation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A unit of work (a blob, a layer, a step) started. `total` is its size in bytes if known.
    Start {
        /// Stable identifier, e.g. a short digest.
        id: String,
        /// What to show, e.g. "pull layer 3/7".
        label: String,
        /// Bytes expected, if known.
        total: Option<u64>,
    },
    /// Bytes done so far for `id` (absolute, not a delta).
    Advance {
        /// The unit.
        id: String,
        /// Bytes done.
        done: u64,
    },
    /// The unit finished; `outcome` says how ("done", "exists", "mounted", "cached"…).
    Finish {
        /// The unit.
        id: String,
        /// How it ended.
        outcome: String,
    },
    /// What unit `id` does now, replacing its label (`dts fleet`: one line per robot whose
    /// phase changes).
    Status {
        /// The unit.
        id: String,
        /// Its new label.
        message: String,
    },
    /// A one-off message worth showing.
    Note {
        /// The message.
        message: String,
    },
}

/// Receives progress events. Implementations must be cheap: events can come per chunk.
pub trait Reporter: Send + Sync {
    /// Handles one event.
    fn event(&self, event: Event);
}

/// Discards everything.
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: Event) {}
}

/// A shareable reporter handle.
pub type SharedReporter = Arc<dyn Reporter>;

/// Convenience constructors.
impl Event {
    /// A `Start`.
    pub fn start(id: impl Into<String>, label: impl Into<String>, total: Option<u64>) -> Event {
        Event::Start {
            id: id.into(),
            label: label.into(),
            total,
        }
    }
    /// An `Advance`.
    pub fn advance(id: impl Into<String>, done: u64) -> Event {
        Event::Advance {
            id: id.into(),
            done,
        }
    }
    /// A `Finish`.
    pub fn finish(id: impl Into<String>, outcome: impl Into<String>) -> Event {
        Event::Finish {
            id: id.into(),
            outcome: outcome.into(),
        }
    }
    /// A `Note`.
    pub fn note(message: impl Into<String>) -> Event {
        Event::Note {
            message: message.into(),
        }
    }
}
