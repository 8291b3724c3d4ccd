//! The direction of dependencies between the modules of `src/`, checked on the source text so a
//! wrong import fails here, with its file and line, rather than as a tangle found months later
//! or on a robot's build (issue 16; docs/architecture.md, "Direction of dependencies").
//!
//! [`TABLE`] is the rule: one row per top-level module of `src/`, listed bottom to top, saying
//! which other modules its code may name, and why. The checker reads every `.rs` file of `src/`,
//! strips comments and string literals, and collects every path that leaves the file's
//! top-level module: `crate::m…` (also inside `use crate::{a, b::c}` groups), `super::…` chains
//! that climb to the crate root, and `dts::m…` in `src/bin/`. A path to a module its row does
//! not list is a violation. Three more checks keep the table honest: it covers exactly the
//! modules `src/` has (a new module needs a row; a row for a module that does not exist, like
//! the `transfer` this file once checked, is an error), it is a layering (a row lists only
//! modules of earlier rows, so no cycle can be written down), and nothing the robot-side
//! `agent` may reach, even indirectly, is a laptop-only module (those `src/lib.rs` declares
//! under `#[cfg(feature = "workstation")]`).
//!
//! To change a direction, change its row and its reason in the same commit as the import.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `(module, the modules it may import, why)`, bottom to top. Every module may use itself.
const TABLE: &[(&str, &[&str], &str)] = &[
    // -- the bottom: depend on nothing of ours, so anything can use them without a cycle
    (
        "oci",
        &[],
        "the image model (references, digests, manifests, platforms) is pure data: no I/O",
    ),
    (
        "cdi",
        &[],
        "the Container Device Interface: spec model, names, spec directories, L4T CSV conversion; data plus file reads, read by profiles (names), `api` (a CDI device name checks itself) and the agent (injection)",
    ),
    (
        "api",
        &["cdi", "oci"],
        "the laptop<->robot contract (containers, releases, daemon requests, remote errors) is pure data: no I/O; `cdi` only for its device-name rules",
    ),
    (
        "util",
        &[],
        "helpers every module shares (path-naming fs errors, globs, time, cgroups)",
    ),
    (
        "progress",
        &[],
        "the events the library emits and `cli` draws; any layer may report progress",
    ),
    (
        "paths",
        &[],
        "where dts keeps laptop state (`$DTS_HOME`): read by layers that must not import `ops`",
    ),
    // -- parts: each owns one concern over the bottom
    (
        "profile",
        &["api", "cdi", "oci", "util"],
        "robot profiles and stack files: parsed data, read by both the laptop and the robot",
    ),
    (
        "layer",
        &["oci", "util"],
        "tar <-> file tree, the same on both sides; knows no store and no robot",
    ),
    (
        "store",
        &["oci", "util"],
        "the laptop content store holds digests: it knows nothing of robots, transfers or verbs",
    ),
    (
        "binfmt",
        &["oci", "util"],
        "QEMU user emulation in binfmt_misc, used by the builder, the runtime and sims",
    ),
    (
        "runtime",
        &["binfmt", "util"],
        "the runc/crun client runs what it is given and never fetches images",
    ),
    (
        "discover",
        &["progress", "util"],
        "mDNS and UDP browse (laptop) and advertise (robot): returns data, knows no robot store",
    ),
    (
        "ssh",
        &["util"],
        "the only code that speaks SSH; callers pass it dts's paths, it parses no frames",
    ),
    (
        "agents",
        &["oci"],
        "the laptop's catalogue of cross-built `dt-agent` binaries: files, no transport",
    ),
    (
        "archive",
        &["oci", "progress", "store", "util"],
        "image save/load through a store (the robot's `image import` stages with it too)",
    ),
    (
        "registry",
        &["oci", "progress", "store", "util"],
        "the registry client moves blobs between a registry and the laptop store, nothing else",
    ),
    // -- the two halves
    (
        "build",
        &[
            "binfmt", "layer", "oci", "progress", "registry", "runtime", "store", "util",
        ],
        "the laptop's builder writes images into the store: it never talks to robots",
    ),
    (
        "agent",
        &[
            "api", "archive", "binfmt", "cdi", "layer", "oci", "profile", "progress", "runtime",
            "store", "util",
        ],
        "the robot side: no laptop-only module (it is cross-built without them), no verbs, no CLI",
    ),
    // -- reaching robots
    (
        "sim",
        &[
            "agents", "binfmt", "discover", "oci", "paths", "profile", "ssh", "util",
        ],
        "a virtual robot is reached like a real one, over `ssh`: it needs no verb and no printer",
    ),
    (
        "wire",
        &[
            "agent", "api", "layer", "oci", "paths", "progress", "store", "util",
        ],
        "frames and the session over `api` types; `agent` only for `wire::serve`, the robot's end (it drives the robot store and relays to the daemon): the laptop's files are checked below",
    ),
    // -- the verbs, then the front ends
    (
        "ops",
        &[
            "agent", "agents", "api", "archive", "build", "discover", "oci", "paths", "profile",
            "progress", "registry", "runtime", "sim", "ssh", "store", "util", "wire",
        ],
        "one function per verb, composed from everything below; returns values, never prints; `agent` only for `local` (the robot's daemon client behind the verbs), checked below",
    ),
    (
        "cli",
        &[
            "agent", "agents", "api", "archive", "binfmt", "build", "cdi", "discover", "layer",
            "oci", "ops", "paths", "profile", "progress", "registry", "runtime", "sim", "ssh",
            "store", "util", "wire",
        ],
        "clap trees, printing and exit codes for both binaries: the only writer to stdout; `agent` only for `dt-agent`'s commands, the laptop's are checked below",
    ),
    (
        "bin",
        &["cli"],
        "the binaries are thin: `main` hands over to `cli` and returns its exit code",
    ),
];

/// The robot side: what these modules may reach, directly or through other rows, is built into
/// `dt-agent`, which is cross-built without the laptop-only modules.
const ROBOT_SIDE: &[&str] = &["agent"];

/// Crates only the `workstation` feature brings (Cargo.toml): robot-side code must not name them.
/// reqwest and rustls are in both features since the robot fetches layer blobs from a lab hub
/// (`agent::fetch`, `deploy --via`); the registry client (`registry/`) stays laptop-only.
const LAPTOP_ONLY_CRATES: &[&str] = &["futures_util", "indicatif", "ring", "russh"];

/// What the pure image model must not touch: files, sockets, processes, the async runtime.
const IO_PATHS: &[&[&str]] = &[
    &["std", "fs"],
    &["std", "net"],
    &["std", "process"],
    &["tokio"],
];

// ------------------------------------------------------------------------------------------------
// The checks on `src/`

#[test]
fn imports_follow_the_table() {
    let modules = src_modules();
    let mut bad = Vec::new();
    for f in src_files() {
        let rel = rel(&f);
        let text = std::fs::read_to_string(&f).unwrap();
        bad.extend(violations(&rel, &text, &modules, TABLE));
    }
    assert!(
        bad.is_empty(),
        "imports against the table of allowed directions (tests/architecture.rs):\n{}",
        bad.join("\n")
    );
}

/// Guards the checker against seeing nothing (a lexer bug would make every check above pass):
/// imports known to exist must be found.
#[test]
fn the_checker_sees_the_imports_src_has() {
    let modules = src_modules();
    let mut seen = BTreeSet::new();
    for f in src_files() {
        let rel = rel(&f);
        let text = std::fs::read_to_string(&f).unwrap();
        for (_, to, _) in edges(&rel, &text, &modules) {
            seen.insert((top_module(&rel), to));
        }
    }
    for (from, to) in [
        ("bin", "cli"),
        ("cli", "ops"),
        ("ops", "store"),
        ("agent", "store"),
        ("store", "oci"),
    ] {
        assert!(
            seen.contains(&(from.to_owned(), to.to_owned())),
            "no `{from} -> {to}` import found; the checker is blind: {seen:?}"
        );
    }
}

/// The robot-side files of the modules whose rows allow `agent` (`cli`, `wire`, `ops`):
/// `dt-agent`'s commands, `wire::serve` (the robot's end of a session) and `ops::local` (the
/// robot's daemon client behind the verbs). Every other file of those modules is laptop code,
/// which reaches the robot only through `api` types and the wire.
const ROBOT_FILES: &[&str] = &[
    "src/cli/agent.rs",
    "src/cli/cdi.rs",
    "src/cli/containers.rs",
    "src/cli/releases.rs",
    "src/wire/serve.rs",
    "src/ops/local.rs",
];

/// The modules whose rows allow `agent` only for their [`ROBOT_FILES`].
const MIXED_MODULES: &[&str] = &["cli", "wire", "ops"];

#[test]
fn laptop_files_do_not_import_the_robot() {
    let modules = src_modules();
    let mut bad = Vec::new();
    for f in ROBOT_FILES {
        if !Path::new(env!("CARGO_MANIFEST_DIR")).join(f).is_file() {
            // A file split or renamed since: the list must follow it.
            bad.push(format!("{f}: listed in ROBOT_FILES but missing"));
        }
    }
    let mut checked = 0;
    for f in src_files() {
        let rel = rel(&f);
        let in_mixed = MIXED_MODULES
            .iter()
            .any(|m| rel.starts_with(&format!("src/{m}/")) || rel == format!("src/{m}.rs"));
        if !in_mixed || ROBOT_FILES.contains(&rel.as_str()) {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, to, path) in edges(&rel, &text, &modules) {
            if to == "agent" {
                bad.push(format!("{rel}:{line}: `{}`", path.join("::")));
            }
        }
    }
    assert!(checked > 10, "the laptop files were not found ({checked})");
    assert!(
        bad.is_empty(),
        "laptop code imports the robot's `agent` (use `api`):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_table_names_every_module_of_src_once() {
    let modules = src_modules();
    let rows: Vec<&str> = TABLE.iter().map(|r| r.0).collect();
    let listed: BTreeSet<String> = rows.iter().map(|m| m.to_string()).collect();
    assert_eq!(listed.len(), rows.len(), "a module has two rows: {rows:?}");
    let missing: Vec<_> = modules.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&modules).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "modules of src/ without a row: {missing:?}; rows for modules src/ does not have: {stale:?}"
    );
}

#[test]
fn the_table_is_a_layering() {
    for (i, (m, allowed, why)) in TABLE.iter().enumerate() {
        assert!(!why.is_empty(), "`{m}` needs a reason");
        for a in *allowed {
            assert!(
                TABLE[..i].iter().any(|r| r.0 == *a),
                "`{m}` may import `{a}`, which is not listed before it: the table must read \
                 bottom to top, so that no cycle can be allowed"
            );
        }
    }
}

#[test]
fn the_robot_side_reaches_no_laptop_only_module() {
    let laptop_only = laptop_only_modules();
    assert!(
        laptop_only.contains("build") && laptop_only.contains("ssh"),
        "reading the `workstation` gates of src/lib.rs went wrong: {laptop_only:?}"
    );
    for robot in ROBOT_SIDE {
        let reach = reachable(robot);
        let bad: Vec<_> = reach.intersection(&laptop_only).collect();
        assert!(
            bad.is_empty(),
            "`{robot}` reaches laptop-only modules through the table: {bad:?}"
        );
    }
}

#[test]
fn robot_side_code_names_no_laptop_only_crate() {
    let mut bad = Vec::new();
    for f in src_files() {
        let rel = rel(&f);
        if !ROBOT_SIDE.contains(&top_module(&rel).as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, path) in paths(&text) {
            if LAPTOP_ONLY_CRATES.contains(&path[0].as_str()) {
                bad.push(format!("{rel}:{line}: `{}`", path.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "robot-side code names crates only the laptop build has:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_image_model_does_no_io() {
    let mut bad = Vec::new();
    for f in src_files() {
        let rel = rel(&f);
        if !matches!(top_module(&rel).as_str(), "oci" | "api") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, path) in paths(&text) {
            if IO_PATHS.iter().any(|p| path.starts_with_strs(p)) {
                bad.push(format!("{rel}:{line}: `{}`", path.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "src/oci and src/api must stay pure:\n{}",
        bad.join("\n")
    );
}

// ------------------------------------------------------------------------------------------------
// The checker checked, on synthetic source text

/// The modules the synthetic sources below live among.
fn synthetic_modules() -> BTreeSet<String> {
    [
        "oci", "util", "store", "ops", "cli", "sim", "wire", "agent", "build", "bin",
    ]
    .map(String::from)
    .into()
}

const SYNTHETIC_TABLE: &[(&str, &[&str], &str)] = &[
    ("oci", &[], ""),
    ("util", &[], ""),
    ("store", &["oci", "util"], ""),
    ("agent", &["store", "oci"], ""),
    ("wire", &["agent", "store"], ""),
    ("sim", &["util"], ""),
    ("ops", &["store", "wire", "sim"], ""),
    ("cli", &["ops", "sim", "store"], ""),
    ("bin", &["cli"], ""),
];

fn check(rel: &str, text: &str) -> Vec<String> {
    violations(rel, text, &synthetic_modules(), SYNTHETIC_TABLE)
}

#[test]
fn an_upward_import_is_reported() {
    let bad = check(
        "src/wire/client.rs",
        "use std::path::PathBuf;\nuse crate::store::Store;\n\nfn cache() -> PathBuf {\n    crate::ops::dts_home().join(\"cache\")\n}\n",
    );
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("src/wire/client.rs:5: "), "{bad:?}");
    assert!(bad[0].contains("wire -> ops"), "{bad:?}");
    assert!(bad[0].contains("`crate::ops::dts_home`"), "{bad:?}");
}

#[test]
fn grouped_nested_and_climbing_imports_are_reported() {
    let text = r#"
use crate::{
    util::glob,
    util::fs::{self, PathError},
    cli::{Exit, Printer},
};
use super::super::ops::dts_home as home;
mod tests {
    use super::super::super::cli::Printer;
    use super::super::SimError;
}
"#;
    let bad = check("src/sim/cli.rs", text);
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(
        bad.iter()
            .any(|b| b.contains(":5: ") && b.contains("sim -> cli")),
        "{bad:#?}"
    );
    assert!(
        bad.iter()
            .any(|b| b.contains(":7: ") && b.contains("sim -> ops")),
        "{bad:#?}"
    );
    assert!(
        bad.iter()
            .any(|b| b.contains(":9: ") && b.contains("sim -> cli")),
        "{bad:#?}"
    );
    let bad = check(
        "src/sim/cli.rs",
        "use crate::{oci::Digest, store::Store};\n",
    );
    assert_eq!(bad.len(), 2, "sim may use neither: {bad:#?}");
}

#[test]
fn comments_strings_and_local_paths_are_not_imports() {
    let text = r###"
//! Robots are reached through [`crate::cli`]; see `crate::ops::dts_home`.
/* a block /* nested */ crate::cli::Exit */
/// Returns [`crate::ops::deploy`]'s answer.
fn f<'a>(s: &'a str) -> char {
    let _ = "crate::cli::Printer";
    let _ = r#"use crate::ops;"#;
    let _ = b"crate::ops";
    let _ = super::Store::open(s); // crate::cli
    let _ = self::inner::g();
    let _ = std::fs::read(s);
    let _ = ['\'', '\\', '\u{2500}', '─'];
    let _ = "\"crate::cli\\";
    '"'
}
mod inner {
    use super::super::oci::Digest; // climbs to the crate root: store may use oci
    use super::f;
}
"###;
    assert_eq!(check("src/store/mod.rs", text), Vec::<String>::new());
}

#[test]
fn the_binaries_name_the_library_by_its_crate_name() {
    assert!(check("src/bin/dts.rs", "fn main() { dts::cli::dts::main() }").is_empty());
    let bad = check("src/bin/dts.rs", "fn main() { dts::ops::run(); }");
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("bin -> ops"), "{bad:?}");
}

#[test]
fn a_file_of_a_module_without_a_row_is_reported() {
    let bad = check("src/transfer/mod.rs", "use crate::oci::Digest;\n");
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("no row"), "{bad:?}");
}

// ------------------------------------------------------------------------------------------------
// The checker

/// Every violation of `table` in one source file: `"src/…:LINE: from -> to: `path`"`.
/// `rel` is the file's path from the repository root (`src/wire/client.rs`); `modules` are the
/// top-level modules of `src/` (paths to anything else, such as a crate-root item, are ignored).
fn violations(
    rel: &str,
    text: &str,
    modules: &BTreeSet<String>,
    table: &[(&str, &[&str], &str)],
) -> Vec<String> {
    let from = top_module(rel);
    let Some(row) = table.iter().find(|r| r.0 == from) else {
        return vec![format!(
            "{rel}: module `{from}` has no row in the table of allowed directions"
        )];
    };
    let mut out = Vec::new();
    // One report per line and target, not one per item of a `use crate::m::{a, b}` group.
    let mut seen = BTreeSet::new();
    for (line, to, path) in edges(rel, text, modules) {
        if row.1.contains(&to.as_str()) || !seen.insert((line, to.clone())) {
            continue;
        }
        out.push(format!(
            "{rel}:{line}: {from} -> {to}: `{}` (not in {from}'s row)",
            path.join("::")
        ));
    }
    out
}

/// Every path in one source file to another top-level module of `modules`:
/// `(line, that module, the path)`.
fn edges(rel: &str, text: &str, modules: &BTreeSet<String>) -> Vec<(usize, String, Vec<String>)> {
    let from = top_module(rel);
    let file_path = module_path(rel);
    let is_bin = from == "bin";
    let mut out = Vec::new();
    for (line, path, inline) in paths_in_modules(text) {
        let Some(to) = target_module(&path, &file_path, &inline, is_bin) else {
            continue;
        };
        if to != from && modules.contains(&to) {
            out.push((line, to, path));
        }
    }
    out
}

/// The top-level module `path` names, when it leaves its file's module for the crate root:
/// `crate::m…`, `dts::m…` in a binary, or `super::…` climbing past the top.
fn target_module(
    path: &[String],
    file_path: &[String],
    inline: &[String],
    is_bin: bool,
) -> Option<String> {
    let first = path[0].as_str();
    if first == "crate" || (is_bin && first == "dts") {
        return path.get(1).cloned();
    }
    if first == "super" {
        let ups = path.iter().take_while(|s| *s == "super").count();
        let depth = file_path.len() + inline.len();
        // Climbing exactly to the root names a top-level item; less stays in the module.
        if ups == depth {
            return path.get(ups).cloned();
        }
    }
    None
}

/// Module path of a file: `src/sim/cli.rs` → `[sim, cli]`, `src/sim/mod.rs` → `[sim]`.
fn module_path(rel: &str) -> Vec<String> {
    let inner = rel
        .strip_prefix("src/")
        .unwrap_or(rel)
        .trim_end_matches(".rs");
    let mut parts: Vec<String> = inner.split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The top-level module a file belongs to (`bin` for the binaries).
fn top_module(rel: &str) -> String {
    module_path(rel).into_iter().next().unwrap_or_default()
}

/// Every path in `text`, with its line: see [`paths_in_modules`].
fn paths(text: &str) -> Vec<(usize, Vec<String>)> {
    paths_in_modules(text)
        .into_iter()
        .map(|(l, p, _)| (l, p))
        .collect()
}

/// Every path of two or more segments in the code of `text` (`a::b…`, groups expanded:
/// `use a::{b, c::d}` gives `a::b` and `a::c::d`), with its line and the inline modules
/// (`mod tests { … }`) it sits in.
fn paths_in_modules(text: &str) -> Vec<(usize, Vec<String>, Vec<String>)> {
    let toks = lex(text);
    let mut out = Vec::new();
    let mut depth = 0usize;
    // (name, brace depth outside it)
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].kind {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|m| m.1 == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(s) if s == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Open)) = (
                    toks.get(i + 1).map(|t| &t.kind),
                    toks.get(i + 2).map(|t| &t.kind),
                ) {
                    inline.push((name.clone(), depth));
                }
            }
            Tok::Ident(_) => {
                let starts = i == 0 || toks[i - 1].kind != Tok::PathSep;
                let continues = toks.get(i + 1).is_some_and(|t| t.kind == Tok::PathSep);
                if starts && continues {
                    let line = toks[i].line;
                    let mut j = i;
                    let names: Vec<String> = inline.iter().map(|m| m.0.clone()).collect();
                    for p in tree(&toks, &mut j) {
                        if p.len() >= 2 {
                            out.push((line_of(&toks, i, &p).unwrap_or(line), p, names.clone()));
                        }
                    }
                    // Skip the path's own tokens, but keep counting its braces.
                    while i + 1 < j {
                        i += 1;
                        match toks[i].kind {
                            Tok::Open => depth += 1,
                            Tok::Close => depth = depth.saturating_sub(1),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The line of the token that completes `path`'s second segment, so an item of a multi-line
/// `use crate::{…}` group is reported on its own line.
fn line_of(toks: &[Token], start: usize, path: &[String]) -> Option<usize> {
    let second = path.get(1)?;
    let mut depth = 0i32;
    for t in &toks[start..] {
        match &t.kind {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            Tok::Ident(s) if s == second => return Some(t.line),
            Tok::Semi if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

/// The paths of a path tree starting at `toks[*i]`: `a::b::{c, d::{e, f}}` → `a::b::c`,
/// `a::b::d::e`, `a::b::d::f`. Leaves `*i` after the tree.
fn tree(toks: &[Token], i: &mut usize) -> Vec<Vec<String>> {
    match toks.get(*i).map(|t| &t.kind) {
        Some(Tok::Ident(s)) => {
            let s = s.clone();
            *i += 1;
            if toks.get(*i).is_some_and(|t| t.kind == Tok::PathSep) {
                *i += 1;
                let rest = tree(toks, i);
                if rest.is_empty() {
                    return vec![vec![s]];
                }
                rest.into_iter()
                    .map(|mut r| {
                        r.insert(0, s.clone());
                        r
                    })
                    .collect()
            } else {
                vec![vec![s]]
            }
        }
        Some(Tok::Open) => {
            *i += 1;
            let mut out = Vec::new();
            while let Some(t) = toks.get(*i) {
                match &t.kind {
                    Tok::Close => {
                        *i += 1;
                        break;
                    }
                    Tok::Comma => *i += 1,
                    Tok::Ident(s) if s == "as" => *i += 2,
                    Tok::Ident(_) | Tok::Open => out.extend(tree(toks, i)),
                    _ => *i += 1,
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Other,
}

struct Token {
    kind: Tok,
    line: usize,
}

/// Rust source → identifiers and the punctuation paths are made of, with line numbers; comments
/// (nested block comments too), string, byte-string, raw-string and char literals dropped.
fn lex(text: &str) -> Vec<Token> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let push = |out: &mut Vec<Token>, kind, line| out.push(Token { kind, line });
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut nest = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    nest += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    nest -= 1;
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_start(&c, i) {
            // r"…", r#"…"#, br##"…"##: ends at a quote followed by as many #.
            let hashes = len - 1 - usize::from(c[i] == 'b') - 1;
            i += len;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                if c[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
        } else if ch == '"' || (ch == 'b' && next == Some('"')) {
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if c.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{1F600}', '"') or a lifetime ('a): a lifetime has
            // no closing quote right after its first character.
            if next == Some('\\') {
                // The quote, the backslash and the escaped character (which may be a quote).
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // `r#ident` is an identifier, not a raw string (that case was taken above).
            push(&mut out, Tok::Ident(word), line);
        } else if ch == ':' && next == Some(':') {
            push(&mut out, Tok::PathSep, line);
            i += 2;
        } else {
            let kind = match ch {
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                ';' => Tok::Semi,
                c if c.is_whitespace() => {
                    i += 1;
                    continue;
                }
                _ => Tok::Other,
            };
            push(&mut out, kind, line);
            i += 1;
        }
    }
    out
}

/// The length of a raw string's opening (`r"`, `r#"`, `br##"`…) at `c[i]`, if one starts there
/// (and `c[i]` does not continue an identifier).
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some(j + 1 - i)
}

trait StartsWithStrs {
    fn starts_with_strs(&self, prefix: &[&str]) -> bool;
}

impl StartsWithStrs for Vec<String> {
    fn starts_with_strs(&self, prefix: &[&str]) -> bool {
        self.len() >= prefix.len() && self.iter().zip(prefix).all(|(a, b)| a == b)
    }
}

// ------------------------------------------------------------------------------------------------
// The tree of `src/`

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `src/…` for a file under `src/`.
fn rel(f: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    f.strip_prefix(root).unwrap().to_string_lossy().into_owned()
}

/// Every `.rs` file of `src/` except `lib.rs`, which only declares the modules.
fn src_files() -> Vec<PathBuf> {
    let mut out = rust_files(&src_dir());
    out.retain(|f| !f.ends_with("src/lib.rs"));
    out.sort();
    assert!(out.len() > 20, "found too few files under src/: {out:?}");
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The top-level modules of `src/`: its directories and `.rs` files (`bin` counts as one).
fn src_modules() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(src_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() || (p.extension().is_some_and(|x| x == "rs") && name != "lib") {
            out.insert(name);
        }
    }
    out
}

/// The modules `src/lib.rs` declares under `#[cfg(feature = "workstation")]`.
fn laptop_only_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    let mut out = BTreeSet::new();
    let mut gated = false;
    for line in lib.lines().map(str::trim) {
        if line == r#"#[cfg(feature = "workstation")]"# {
            gated = true;
        } else if let Some(m) = line.strip_prefix("pub mod ") {
            if gated {
                out.insert(m.trim_end_matches(';').to_owned());
            }
            gated = false;
        }
    }
    out
}

/// The modules `m` may reach through the table, directly or not.
fn reachable(m: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![m.to_owned()];
    while let Some(m) = todo.pop() {
        let row = TABLE.iter().find(|r| r.0 == m).unwrap();
        for a in row.1 {
            if seen.insert(a.to_string()) {
                todo.push(a.to_string());
            }
        }
    }
    seen
}

// ------------------------------------------------------------------------------------------------
// Room sizes (issue 16): no file of `src/` over `MAX_FILE_LINES` lines, no function over
// `MAX_FN_LINES` lines except those docs/architecture.md names, with the reason, under
// "Long functions". That list is checked both ways: it may name only functions that exist and
// are still long, so it cannot rot into a list of excuses nobody needs.

/// The most lines a file of `src/` may have.
const MAX_FILE_LINES: usize = 900;
/// The most lines a function may span, from its `fn` line to its closing brace.
const MAX_FN_LINES: usize = 150;

#[test]
fn no_file_of_src_is_over_the_limit() {
    let mut bad = Vec::new();
    for f in rust_files(&src_dir()) {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        if n > MAX_FILE_LINES {
            bad.push(format!("{}: {n} lines", rel(&f)));
        }
    }
    bad.sort();
    assert!(
        bad.is_empty(),
        "files of src/ over {MAX_FILE_LINES} lines; split them along a seam:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_function_is_over_the_limit_unless_documented() {
    let allowed = documented_long_functions();
    let mut long = BTreeSet::new();
    let mut bad = Vec::new();
    let mut files = rust_files(&src_dir());
    files.sort();
    for f in files {
        let rel = rel(&f);
        let text = std::fs::read_to_string(&f).unwrap();
        for func in functions(&text) {
            if func.lines <= MAX_FN_LINES {
                continue;
            }
            let key = format!("{rel}::{}", func.name);
            if !allowed.contains(&key) {
                bad.push(format!(
                    "{rel}:{}: `{}` spans {} lines",
                    func.line, func.name, func.lines
                ));
            }
            long.insert(key);
        }
    }
    let stale: Vec<_> = allowed.difference(&long).collect();
    assert!(
        bad.is_empty() && stale.is_empty(),
        "functions over {MAX_FN_LINES} lines; split them, or name them with the reason under \
         \"Long functions\" in docs/architecture.md:\n{}\n\
         listed there but no longer existing or long (remove them from the list): {stale:?}",
        bad.join("\n")
    );
}

/// The `path::fn` entries of the "Long functions" section of docs/architecture.md: the first
/// cell of each table row, in backticks (`` `src/x.rs::name` ``).
fn documented_long_functions() -> BTreeSet<String> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    long_function_entries(&text)
}

fn long_function_entries(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with('#') {
            inside = line.trim_start_matches('#').trim() == "Long functions";
            continue;
        }
        if !inside {
            continue;
        }
        let Some(row) = line.trim().strip_prefix('|') else {
            continue;
        };
        let cell = row.split('|').next().unwrap_or_default().trim();
        if let Some(entry) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`'))
            && entry.contains("::")
        {
            out.insert(entry.to_owned());
        }
    }
    out
}

/// One function found in source text.
#[derive(Debug, PartialEq)]
struct Func {
    name: String,
    /// The line of its `fn`.
    line: usize,
    /// Lines from its `fn` to its closing brace, both included.
    lines: usize,
}

/// Every function with a body in `text` (free functions, methods, nested functions; closures
/// are not functions here), found by brace matching over the text with comments and literals
/// blanked out. A `fn` without a body (a trait's required method) or `fn(…)` (a pointer type)
/// is skipped.
fn functions(text: &str) -> Vec<Func> {
    let c = blank_comments_and_literals(text);
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        if c[i] == '\n' {
            line += 1;
        }
        let word_start = i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        let is_fn = word_start
            && c[i] == 'f'
            && c.get(i + 1) == Some(&'n')
            && c.get(i + 2).is_some_and(|x| x.is_whitespace());
        if !is_fn {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        let name_start = j;
        while j < c.len() && (c[j].is_alphanumeric() || c[j] == '_') {
            j += 1;
        }
        if j == name_start {
            i += 1;
            continue;
        }
        let name: String = c[name_start..j].iter().collect();
        // The signature ends at the body's `{`, or at a `;` outside parentheses and brackets
        // (`[u8; 4]` is a type).
        let mut depth = 0i32;
        let mut body = None;
        while j < c.len() {
            match c[j] {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ';' if depth == 0 => break,
                '{' if depth == 0 => {
                    body = Some(j);
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        if let Some(open) = body {
            let mut braces = 0i32;
            let mut end = open;
            for (k, ch) in c.iter().enumerate().skip(open) {
                match ch {
                    '{' => braces += 1,
                    '}' => {
                        braces -= 1;
                        if braces == 0 {
                            end = k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let lines = 1 + c[i..end].iter().filter(|&&x| x == '\n').count();
            out.push(Func { name, line, lines });
        }
        // Go on right after the name, so nested functions are found too.
        i = name_start;
    }
    out
}

/// `text` with comments (nested block comments too) and string, byte-string, raw-string and
/// char literals replaced by spaces, newlines kept, so braces and `fn` in them do not count and
/// line numbers stay right. Lifetimes (`'a`) are left alone.
fn blank_comments_and_literals(text: &str) -> Vec<char> {
    let c: Vec<char> = text.chars().collect();
    let mut out = c.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in out.iter_mut().take(to.min(c.len())).skip(from) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        let start = i;
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut nest = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    nest += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    nest -= 1;
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_start(&c, i) {
            let hashes = len - 1 - usize::from(c[i] == 'b') - 1;
            i += len;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if ch == '"'
            || (ch == 'b'
                && next == Some('"')
                && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_')))
        {
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            if next == Some('\\') {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                continue;
            }
        } else {
            i += 1;
            continue;
        }
        blank(&mut out, start, i);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// The length checker checked, on synthetic source text

#[test]
fn functions_are_measured_from_fn_to_closing_brace() {
    let text = "fn one() {}\n\
                pub async fn two(x: [u8; 4]) -> Result<(), E>\nwhere\n    E: Debug,\n{\n    x;\n}\n";
    let f = functions(text);
    assert_eq!(
        f,
        vec![
            Func {
                name: "one".into(),
                line: 1,
                lines: 1
            },
            Func {
                name: "two".into(),
                line: 2,
                lines: 6
            },
        ]
    );
}

#[test]
fn methods_and_nested_functions_count_and_declarations_do_not() {
    let text = r#"
trait T {
    fn required(&self) -> u8;
    fn provided(&self) -> u8 {
        1
    }
}
impl S {
    pub(crate) fn outer(&self) {
        fn inner() {
            let f: fn(u8) -> u8 = |x| x;
        }
        let c = || { 3 };
    }
}
"#;
    let f = functions(text);
    let got: Vec<(&str, usize, usize)> = f
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.lines))
        .collect();
    assert_eq!(
        got,
        vec![("provided", 4, 3), ("outer", 9, 6), ("inner", 10, 3)]
    );
}

#[test]
fn braces_and_fn_in_comments_and_literals_do_not_count() {
    let text = r###"fn f() {
    let _ = "}}} fn g() {";
    let _ = r#"{ "fn h() {" "#;
    let _ = ['{', '}', '\'', '\u{7b}'];
    // fn i() {
    /* } /* nested } */ { */
    let _ = b"}";
    let _: &'static str = "";
}
fn after() {}
"###;
    let f = functions(text);
    let got: Vec<(&str, usize, usize)> = f
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.lines))
        .collect();
    assert_eq!(got, vec![("f", 1, 9), ("after", 10, 1)]);
}

#[test]
fn the_long_function_list_is_read_from_its_section_only() {
    let doc = "# Architecture\n\
               | `src/a.rs::elsewhere` | not this section |\n\
               ## Long functions\n\
               | function | why |\n|---|---|\n\
               | `src/ops/x.rs::run` | a state machine |\n\
               | `src/b.rs::g` | reason |\n\
               ## Next\n\
               | `src/c.rs::h` | not listed |\n";
    let got = long_function_entries(doc);
    assert_eq!(
        got,
        ["src/b.rs::g", "src/ops/x.rs::run"]
            .map(String::from)
            .into()
    );
}
