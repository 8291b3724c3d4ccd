//! Names that become paths or command-line arguments on the robot, each a type that checks
//! itself (issue 17): container and service names (`containers/<name>/`, runc ids), volume
//! names (`volumes/<name>/`), image references, device roles, CDI device names and signals
//! (`runc kill ID SIGNAL`).
//!
//! Every type here is made only through its check: [`new`](ContainerName::new) and `FromStr`
//! run it, and so does serde (`#[serde(try_from = "String", into = "String")]`), so a daemon
//! request, a release spec or a wire message carrying `../../x` fails to *decode*, before any
//! code could join it to a path. The wire form stays a plain JSON string. The rules are the
//! ones the agent, the stack parser and the CDI parser already applied, in one place each:
//! [`is_valid_name`], [`check_role_name`], [`parse_signal`], `cdi::QualifiedName::parse`,
//! `oci::Reference`/`oci::Digest`.

use std::path::Path;

use super::container::SpecError;
use crate::oci::{Digest, Reference};

/// Whether `name` may name a container or a volume (runc's id rules, Docker's name rules):
/// letters, digits, `_`, `.`, `-`, starting with a letter or digit, at most 64 characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A newtype over `String` whose every value passed `$check` (`fn(&str) -> Result<String,
/// SpecError>`, which returns the value to keep: the input, or its normal form).
macro_rules! checked_name {
    ($(#[$meta:meta])* $name:ident, $check:expr) => {
        $(#[$meta])*
        #[derive(
            Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `value`; the error says what the rule is.
            pub fn new(value: impl Into<String>) -> Result<$name, SpecError> {
                let value = value.into();
                let check: fn(&str) -> Result<String, SpecError> = $check;
                Ok($name(check(&value)?))
            }

            /// The value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                // serde's error is a string: the same message as `new`.
                $name::new(value).map_err(|e| e.to_string())
            }
        }

        impl TryFrom<&str> for $name {
            type Error = SpecError;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                $name::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<Path> for $name {
            fn as_ref(&self) -> &Path {
                Path::new(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == &other.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }
    };
}

checked_name!(
    /// A container's name, which is also a service's (a release names each container after
    /// its service key): `containers/<name>/` and the runtime's id on the robot, so it follows
    /// [`is_valid_name`].
    ///
    /// `Default` is the empty name of a [`ContainerConfig`](super::ContainerConfig) not yet
    /// named: decoding never yields it (a config without `name` does not decode) and the agent
    /// refuses to create a container with it.
    #[derive(Default)]
    ContainerName,
    |s| {
        if is_valid_name(s) {
            Ok(s.to_string())
        } else {
            Err(SpecError(format!(
                "invalid container name `{s}`: use letters, digits, `_`, `.` and `-`, starting with a letter or digit, at most 64 characters"
            )))
        }
    }
);

checked_name!(
    /// A named volume's name: a directory under the agent's `volumes/`, created as root, so
    /// it follows [`is_valid_name`]. A derived `Deserialize` of a plain `String` once let a
    /// daemon request carry `../../x` past the check `-v` does and create directories
    /// anywhere.
    VolumeName,
    |s| {
        if is_valid_name(s) {
            Ok(s.to_string())
        } else {
            Err(SpecError(format!(
                "invalid volume name `{s}`: use letters, digits, `_`, `.` and `-`, starting with a letter or digit, at most 64 characters"
            )))
        }
    }
);

checked_name!(
    /// An image as a container names it: a manifest digest (`sha256:…`) or a reference
    /// (`duckietown/dt-core:daffy`, Docker's grammar, [`Reference`]). Kept as given; the robot
    /// normalises a reference when it looks it up.
    ///
    /// `Default` is the empty image of a [`ContainerConfig`](super::ContainerConfig) not yet
    /// filled in: decoding never yields it.
    #[derive(Default)]
    ImageRef,
    |s| {
        if s.parse::<Digest>().is_ok() {
            return Ok(s.to_string());
        }
        Reference::parse(s)
            .map(|_| s.to_string())
            .map_err(|e| SpecError(format!("image `{s}`: {e}")))
    }
);

impl ImageRef {
    /// A manifest digest as an image.
    pub fn digest(d: &Digest) -> ImageRef {
        ImageRef(d.to_string())
    }
}

/// Role names are what robot profiles, stack files and `--device-role` say: lowercase words
/// joined by `-`.
pub fn check_role_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "role name `{name}` must be lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

checked_name!(
    /// A device role a container asks for ([`check_role_name`]).
    RoleName,
    |s| {
        check_role_name(s)
            .map(|()| s.to_string())
            .map_err(SpecError)
    }
);

checked_name!(
    /// A CDI device a container asks for, fully qualified: `vendor.com/class=name`, each part
    /// by CDI's rules (`cdi::QualifiedName::parse`).
    CdiDevice,
    |s| {
        crate::cdi::QualifiedName::parse(s)
            .map(|_| s.to_string())
            .map_err(SpecError)
    }
);

/// The signals a stop may send, by name without `SIG` (Linux's numbers 1–31; real-time
/// signals go by number).
const SIGNALS: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// A signal as Docker accepts it, in the form `runc kill` takes: `SIGTERM`, `term`, `15`
/// become `TERM`, `TERM`, `15`.
pub fn parse_signal(s: &str) -> Result<String, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n.to_string());
        }
        return Err(format!("`{s}` is not a signal number (1–64)"));
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if SIGNALS.contains(&name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{s}` is not a signal (e.g. `SIGTERM`, `SIGINT`, `SIGQUIT` or a number)"
        ))
    }
}

checked_name!(
    /// A signal, an argument of `runc kill`: held in [`parse_signal`]'s form (`TERM`, `15`),
    /// whatever spelling it came in (`SIGTERM`, `term`).
    Signal,
    |s| parse_signal(s).map_err(SpecError)
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Path-like values every name type refuses, from a flag and from JSON alike.
    const HOSTILE: &[&str] = &[
        "../../x",
        "..",
        ".",
        "a/b",
        "/abs",
        "",
        "a\0b",
        "x/../../y",
        "ü",
        "a b",
        "-x",
    ];

    #[test]
    fn every_name_type_refuses_path_like_values_when_decoded() {
        fn check<T: serde::de::DeserializeOwned + std::str::FromStr + std::fmt::Debug>(what: &str) {
            for bad in HOSTILE {
                let json = serde_json::to_string(bad).unwrap();
                let e = serde_json::from_str::<T>(&json);
                assert!(e.is_err(), "{what} decoded `{bad}`: {e:?}");
                assert!(bad.parse::<T>().is_err(), "{what} parsed `{bad}`");
            }
        }
        check::<ContainerName>("container");
        check::<VolumeName>("volume");
        check::<RoleName>("role");
        check::<CdiDevice>("cdi");
        check::<Signal>("signal");
        for bad in ["../../x", "a/../b", "", "a\0b", "/abs", "a b"] {
            let json = serde_json::to_string(bad).unwrap();
            assert!(serde_json::from_str::<ImageRef>(&json).is_err(), "{bad}");
        }
        let long = "a".repeat(65);
        assert!(ContainerName::new(&*long).is_err());
        assert!(ContainerName::new(&long[..64]).is_ok());
    }

    #[test]
    fn good_names_keep_their_json_shape() {
        let n: ContainerName = serde_json::from_str(r#""core.1_a-b""#).unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""core.1_a-b""#);
        assert_eq!(n, "core.1_a-b");
        let i: ImageRef = serde_json::from_str(r#""duckietown/dt-core:daffy""#).unwrap();
        assert_eq!(i.as_str(), "duckietown/dt-core:daffy");
        let d = Digest::of(b"x");
        assert_eq!(ImageRef::new(d.to_string()).unwrap(), ImageRef::digest(&d));
        assert!(RoleName::new("camera-2").is_ok());
        assert!(CdiDevice::new("nvidia.com/gpu=l4t").is_ok());
        let s: Signal = serde_json::from_str(r#""SIGKILL""#).unwrap();
        assert_eq!(s.as_str(), "KILL");
        assert_eq!(Signal::new("9").unwrap().as_str(), "9");
        let e = VolumeName::new("../x").unwrap_err().to_string();
        assert!(e.contains("invalid volume name `../x`"), "{e}");
    }
}
