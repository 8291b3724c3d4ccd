//! How a service stops, compose's keys with Docker's meaning: `stop_signal` (a signal name,
//! `SIGTERM` or `TERM`, or its number; default the image's `StopSignal`, else SIGTERM),
//! `stop_grace_period` (a duration; default 10 s, then SIGKILL) and `init` (a minimal init as
//! PID 1 that forwards signals and reaps zombies).

use super::parse::parse_duration;
use super::*;

/// A signal as Docker accepts it, in the form `runc kill` takes: the contract's rule, which a
/// container's `api::Signal` checks too.
pub use crate::api::names::parse_signal;

/// A service's `stop_signal`, `stop_grace_period` and `init`, in that order.
type StopKeys = (Option<String>, Option<Duration>, Option<bool>);

/// A service's `stop_signal`, `stop_grace_period` and `init`.
pub(super) fn parse_stop(doc: Doc<'_>, m: &Map<'_>) -> Result<StopKeys, ProfileError> {
    let signal = match m.get("stop_signal") {
        None => None,
        Some(v) => {
            let at = m.at("stop_signal");
            Some(parse_signal(&doc.scalar(&at, v)?).map_err(|e| doc.err(&at, e))?)
        }
    };
    let grace = match m.get("stop_grace_period") {
        None => None,
        Some(v) => {
            let at = m.at("stop_grace_period");
            Some(parse_duration(&doc.scalar(&at, v)?).map_err(|e| doc.err(&at, e))?)
        }
    };
    let init = match m.get("init") {
        None => None,
        Some(v) => Some(doc.bool(&m.at("init"), v)?),
    };
    Ok((signal, grace, init))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_as_docker_spells_them() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), "TERM");
        assert_eq!(parse_signal("sigint").unwrap(), "INT");
        assert_eq!(parse_signal("QUIT").unwrap(), "QUIT");
        assert_eq!(parse_signal("9").unwrap(), "9");
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
    }
}
