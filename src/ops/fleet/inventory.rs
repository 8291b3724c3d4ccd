//! Choosing a fleet's robots: names as given, `--match GLOB` over the names an inventory
//! lists (else over running sims and what discovery hears), `--group G`, and the inventory
//! file itself (`fleet.yaml`, docs/formats.md) with its per-robot variables. Parsing is
//! strict: an unknown key, a group naming a robot `robots:` does not list, or a bad value is
//! bad input naming `FILE:LINE:COL`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What an inventory says about one robot (or, under `defaults:`, about every robot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotVars {
    /// Where to reach it, when not at its name (`host`, `user`, `port`).
    pub host: Option<String>,
    /// Login name.
    pub user: Option<String>,
    /// SSH port.
    pub port: Option<u16>,
    /// The stack (`-f/--stack`): a file, a directory, or a shipped name.
    pub stack: Option<String>,
    /// `--set SERVICE=IMAGE`, applied after the command line's.
    #[serde(default)]
    pub set: Vec<String>,
}

/// `fleet.yaml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Every robot's variables unless it says otherwise.
    #[serde(default)]
    pub defaults: RobotVars,
    /// The robots, by name, in file order.
    #[serde(default)]
    pub robots: indexmap_lite::Ordered<RobotVars>,
    /// Named lists of robots.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// The lab hub `fleet deploy` goes through when no `--via` is given.
    #[serde(default)]
    pub hub: Option<HubEntry>,
}

/// `hub:` of `fleet.yaml`: `deploy --via`'s flags, written down once for the lab.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubEntry {
    /// The registry, `HOST[:PORT]` (as `--via`).
    pub via: String,
    /// Plain HTTP (as `--insecure`).
    #[serde(default)]
    pub insecure: bool,
    /// A read-only Basic-auth user for robots (as `--hub-user`; its password never in the
    /// file: `DTS_HUB_PASSWORD` or `--hub-password-stdin`).
    pub user: Option<String>,
}

/// A robot chosen for a fleet command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetRobot {
    /// Its name, as tables and records show it.
    pub name: String,
    /// What to connect to: `[user@]host[:port]`, or the name itself.
    pub target: String,
    /// The inventory's variables for it (defaults merged in).
    pub vars: RobotVars,
}

/// Bad input in choosing robots: the command exits 2 and nothing is deployed.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// The inventory cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The inventory is not what docs/formats.md describes.
    #[error("{0}")]
    Syntax(String),
    /// A flag that cannot be honoured.
    #[error("{0}")]
    Usage(String),
    /// Nothing matched.
    #[error("no robot chosen: {0}")]
    Empty(String),
}

impl Inventory {
    /// Parses `text`, read from `file` (which every error names, with line and column).
    pub fn parse(file: &str, text: &str) -> Result<Inventory, SelectError> {
        let inv: Inventory = if text.trim().is_empty() {
            Inventory::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!("{}:{}", l.line(), l.column()))
                    .unwrap_or_else(|| "1:1".into());
                SelectError::Syntax(format!("{file}:{at}: {e}"))
            })?
        };
        for (group, members) in &inv.groups {
            for m in members {
                if !inv.robots.contains(m) {
                    return Err(SelectError::Syntax(format!(
                        "{file}:{}: group `{group}` names robot `{m}`, which `robots:` does not list",
                        line_of(text, m)
                    )));
                }
            }
        }
        for (name, vars) in inv.robots.iter() {
            check_name(file, text, name)?;
            for s in inv.defaults.set.iter().chain(&vars.set) {
                if !s.contains('=') {
                    return Err(SelectError::Syntax(format!(
                        "{file}:{}: robot `{name}`: `set: {s}` is not SERVICE=IMAGE",
                        line_of(text, s)
                    )));
                }
            }
        }
        Ok(inv)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Inventory, SelectError> {
        let text = std::fs::read_to_string(path).map_err(|source| SelectError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Inventory::parse(&path.display().to_string(), &text)
    }

    /// Robot `name` as the inventory has it (defaults merged), or as given if not listed.
    pub fn robot(&self, name: &str) -> FleetRobot {
        let own = self.robots.get(name).cloned().unwrap_or_default();
        let d = &self.defaults;
        let vars = RobotVars {
            host: own.host.or_else(|| d.host.clone()),
            user: own.user.or_else(|| d.user.clone()),
            port: own.port.or(d.port),
            stack: own.stack.or_else(|| d.stack.clone()),
            set: d.set.iter().chain(&own.set).cloned().collect(),
        };
        let host = vars.host.clone().unwrap_or_else(|| name.to_string());
        let mut target = match &vars.user {
            Some(u) => format!("{u}@{host}"),
            None => host,
        };
        if let Some(p) = vars.port {
            target = format!("{target}:{p}");
        }
        FleetRobot {
            name: name.to_string(),
            target,
            vars,
        }
    }
}

/// A robot name must be one host label's worth of safe characters: it names record entries
/// and table rows.
fn check_name(file: &str, text: &str, name: &str) -> Result<(), SelectError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'));
    if ok {
        Ok(())
    } else {
        Err(SelectError::Syntax(format!(
            "{file}:{}: `{name}` is not a robot name (letters, digits, `-`, `_`, `.`)",
            line_of(text, name)
        )))
    }
}

/// The first line (1-based) mentioning `word`, for errors serde cannot place.
fn line_of(text: &str, word: &str) -> usize {
    text.lines()
        .position(|l| l.contains(word))
        .map_or(1, |i| i + 1)
}

/// What the command line chose.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Robots by name.
    pub names: Vec<String>,
    /// `--match GLOB`.
    pub pattern: Option<String>,
    /// `--group G`.
    pub group: Option<String>,
}

impl Selection {
    /// Whether the command line named no robot at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.pattern.is_none() && self.group.is_none()
    }
}

/// The robots `sel` chooses, in order (names, then the group's, then matches), each once.
/// `known` lists the names `--match` runs over when there is no inventory (running sims and
/// what discovery heard); it is called only when needed. With an inventory and no selection,
/// every robot it lists.
pub fn choose(
    sel: &Selection,
    inventory: Option<&Inventory>,
    known: impl FnOnce() -> Vec<String>,
) -> Result<Vec<FleetRobot>, SelectError> {
    let empty = Inventory::default();
    let inv = inventory.unwrap_or(&empty);
    let mut names: Vec<String> = sel.names.clone();
    if let Some(g) = &sel.group {
        let Some(members) = inv.groups.get(g) else {
            return Err(SelectError::Usage(if inventory.is_none() {
                format!("--group {g}: no inventory (`-i fleet.yaml`, or ./fleet.yaml)")
            } else {
                format!(
                    "--group {g}: the inventory has no such group (it has: {})",
                    inv.groups.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }));
        };
        names.extend(members.iter().cloned());
    }
    if let Some(p) = &sel.pattern {
        check_glob(p)?;
        let candidates: Vec<String> = match inventory {
            Some(i) => i.robots.keys().cloned().collect(),
            None => known(),
        };
        let matched: Vec<String> = candidates
            .into_iter()
            .filter(|n| crate::util::glob::wildcard_match(p, n))
            .collect();
        if matched.is_empty() {
            return Err(SelectError::Empty(format!(
                "--match `{p}` matched no robot{}",
                if inventory.is_some() {
                    " of the inventory"
                } else {
                    " that is running as a sim or was heard on the network (`dts fleet discover`)"
                }
            )));
        }
        names.extend(matched);
    }
    if sel.is_empty() {
        match inventory {
            Some(i) => names.extend(i.robots.keys().cloned()),
            None => {
                return Err(SelectError::Empty(
                    "name robots, or use --match GLOB, --group G or an inventory (-i fleet.yaml)"
                        .into(),
                ));
            }
        }
    }
    let mut out: Vec<FleetRobot> = Vec::new();
    for n in names {
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SelectError::Usage(format!("`{n}` is not a robot")));
        }
        if !out.iter().any(|r| r.name == n) {
            out.push(inv.robot(&n));
        }
    }
    if out.is_empty() {
        return Err(SelectError::Empty("the inventory lists no robot".into()));
    }
    Ok(out)
}

/// `--match` takes `*` and `?` only: a bracket or brace is a mistake, not a literal.
fn check_glob(p: &str) -> Result<(), SelectError> {
    if p.is_empty() || p.contains(['[', ']', '{', '}', '/']) {
        return Err(SelectError::Usage(format!(
            "--match `{p}`: a pattern of robot names with `*` and `?` only"
        )));
    }
    Ok(())
}

/// A name → value map that keeps file order (serde_yaml_ng reads mappings in order) and
/// refuses a name given twice.
pub mod indexmap_lite {
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

    /// Entries in file order.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Ordered<V>(pub Vec<(String, V)>);

    impl<V> Default for Ordered<V> {
        fn default() -> Self {
            Ordered(Vec::new())
        }
    }

    impl<V> Ordered<V> {
        /// Entry `k`.
        pub fn get(&self, k: &str) -> Option<&V> {
            self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v)
        }
        /// Whether `k` is there.
        pub fn contains(&self, k: &str) -> bool {
            self.get(k).is_some()
        }
        /// Names, in order.
        pub fn keys(&self) -> impl Iterator<Item = &String> {
            self.0.iter().map(|(k, _)| k)
        }
        /// Entries, in order.
        pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
            self.0.iter().map(|(k, v)| (k, v))
        }
    }

    impl<'de, V: Deserialize<'de> + Default> Deserialize<'de> for Ordered<V> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V_<V>(std::marker::PhantomData<V>);
            impl<'de, V: Deserialize<'de> + Default> Visitor<'de> for V_<V> {
                type Value = Ordered<V>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a mapping of robot names")
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(Ordered::default())
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                    let mut out: Vec<(String, V)> = Vec::new();
                    while let Some(k) = m.next_key::<String>()? {
                        // `bot1:` with nothing after it is a robot with no variables.
                        let v: Option<V> = m.next_value()?;
                        if out.iter().any(|(n, _)| *n == k) {
                            return Err(serde::de::Error::custom(format!(
                                "robot `{k}` is listed twice"
                            )));
                        }
                        out.push((k, v.unwrap_or_default()));
                    }
                    Ok(Ordered(out))
                }
            }
            d.deserialize_any(V_(std::marker::PhantomData))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = "defaults:\n  user: duckie\n  set: [core=dt-core:exp]\nrobots:\n  bot1:\n  bot2:\n    host: 10.0.0.2\n    port: 2222\n    set: [core=dt-core:canary]\n  class-a-3:\n    stack: ./other.yaml\ngroups:\n  canary: [bot2]\n  all: [bot1, bot2, class-a-3]\n";

    #[test]
    fn an_inventory_with_defaults_groups_and_overrides() {
        let inv = Inventory::parse("fleet.yaml", FLEET).unwrap();
        assert_eq!(
            inv.robots.keys().collect::<Vec<_>>(),
            ["bot1", "bot2", "class-a-3"]
        );
        let b2 = inv.robot("bot2");
        assert_eq!(b2.target, "duckie@10.0.0.2:2222");
        assert_eq!(b2.vars.set, ["core=dt-core:exp", "core=dt-core:canary"]);
        assert_eq!(inv.robot("bot1").target, "duckie@bot1");
        assert_eq!(
            inv.robot("class-a-3").vars.stack.as_deref(),
            Some("./other.yaml")
        );
        // A name the inventory does not list is taken as given.
        assert_eq!(inv.robot("elsewhere").target, "duckie@elsewhere");
    }

    #[test]
    fn inventory_errors_name_file_line_and_what() {
        let e = |t: &str| Inventory::parse("fleet.yaml", t).unwrap_err().to_string();
        let typo = e("robots:\n  bot1:\n    hots: x\n");
        assert!(
            typo.starts_with("fleet.yaml:3:") && typo.contains("hots"),
            "{typo}"
        );
        let unknown = e("robots:\n  bot1:\ngroups:\n  a: [bot1, bot9]\n");
        assert!(
            unknown.starts_with("fleet.yaml:4:") && unknown.contains("`bot9`"),
            "{unknown}"
        );
        let top = e("robot:\n  bot1:\n");
        assert!(top.starts_with("fleet.yaml:1:"), "{top}");
        let twice = e("robots:\n  bot1:\n  bot1:\n");
        assert!(twice.contains("twice"), "{twice}");
        let set = e("robots:\n  bot1:\n    set: [core]\n");
        assert!(set.contains("SERVICE=IMAGE"), "{set}");
        let port = e("robots:\n  bot1:\n    port: 70000\n");
        assert!(port.starts_with("fleet.yaml:3:"), "{port}");
        assert_eq!(Inventory::parse("f", "").unwrap(), Inventory::default());
        let password = e("hub:\n  via: hub:5000\n  password: x\n");
        assert!(
            password.starts_with("fleet.yaml:3:") && password.contains("password"),
            "{password}"
        );
    }

    #[test]
    fn an_inventory_names_its_lab_hub() {
        let inv = Inventory::parse(
            "fleet.yaml",
            "robots:\n  bot1:\nhub:\n  via: 10.0.0.2:5000\n  insecure: true\n  user: robots\n",
        )
        .unwrap();
        let hub = inv.hub.unwrap();
        assert_eq!(
            (hub.via.as_str(), hub.insecure, hub.user.as_deref()),
            ("10.0.0.2:5000", true, Some("robots"))
        );
    }

    #[test]
    fn choosing_by_name_group_and_glob() {
        let inv = Inventory::parse("fleet.yaml", FLEET).unwrap();
        let names = |sel: &Selection, inv: Option<&Inventory>| {
            choose(sel, inv, || {
                vec!["sim-a".into(), "sim-b".into(), "other".into()]
            })
            .map(|v| v.into_iter().map(|r| r.name).collect::<Vec<_>>())
        };
        let all = names(&Selection::default(), Some(&inv)).unwrap();
        assert_eq!(all, ["bot1", "bot2", "class-a-3"]);
        let sel = Selection {
            pattern: Some("class-a-*".into()),
            group: Some("canary".into()),
            ..Selection::default()
        };
        assert_eq!(names(&sel, Some(&inv)).unwrap(), ["bot2", "class-a-3"]);
        let sel = Selection {
            names: vec!["x".into(), "sim-b".into()],
            pattern: Some("sim-?".into()),
            ..Selection::default()
        };
        assert_eq!(names(&sel, None).unwrap(), ["x", "sim-b", "sim-a"]);
        for bad in ["bot[12]", "", "a/b"] {
            let sel = Selection {
                pattern: Some(bad.into()),
                ..Selection::default()
            };
            assert!(
                matches!(names(&sel, None), Err(SelectError::Usage(_))),
                "{bad}"
            );
        }
        let none = Selection {
            pattern: Some("nothing-*".into()),
            ..Selection::default()
        };
        assert!(matches!(names(&none, None), Err(SelectError::Empty(_))));
        assert!(matches!(
            names(&Selection::default(), None),
            Err(SelectError::Empty(_))
        ));
        let group = Selection {
            group: Some("nope".into()),
            ..Selection::default()
        };
        assert!(matches!(
            names(&group, Some(&inv)),
            Err(SelectError::Usage(_))
        ));
    }
}
