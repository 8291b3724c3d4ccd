//! The direction of dependencies (docs/architecture.md, "Direction of dependencies"): robot-side
//! code never reaches for laptop-only modules, and pure modules do no I/O. Checked on the source
//! text, so a violation fails here with the file and line rather than on a robot's build.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// `(file:line, text)` of every line in `dir` that mentions one of `needles`.
fn offenders(dir: &str, needles: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for f in rust_files(&root) {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|n| code.contains(n)) {
                out.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    out
}

#[test]
fn agent_code_does_not_import_laptop_modules() {
    let bad = offenders(
        "src/agent",
        &[
            "crate::build",
            "crate::registry",
            "crate::ssh",
            "crate::provision",
            "indicatif",
            "reqwest",
        ],
    );
    assert!(
        bad.is_empty(),
        "agent code imports laptop-only modules:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_image_model_does_no_io() {
    let bad = offenders("src/oci", &["std::fs", "std::net", "tokio", "std::process"]);
    assert!(
        bad.is_empty(),
        "src/oci must stay pure:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_store_knows_nothing_of_robots() {
    let bad = offenders(
        "src/store",
        &[
            "crate::transfer",
            "crate::ssh",
            "crate::agent",
            "crate::discover",
        ],
    );
    assert!(
        bad.is_empty(),
        "src/store must not know about robots:\n{}",
        bad.join("\n")
    );
}
