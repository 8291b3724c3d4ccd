//! Conformance against BuildKit's own corpora, kept as held-out data under
//! `tests/data/dockerfile/` (converted to our formats; sources named in each file):
//! * `parser/*.Dockerfile` + `parser/expected.txt` — the parser golden files;
//! * `expand.jsonl` — `shell/envVarTest` (expansion, quoting, errors);
//! * `words.jsonl` — `shell/wordsTest` (word splitting after expansion).
//!
//! Every case in those files must pass; the parser cases must also type-check as instructions
//! where BuildKit would accept them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::parser;
use super::shell::Lex;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/dockerfile")
        .join(rel)
}

fn read(rel: &str) -> String {
    let p = data(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading `{}`: {e}", p.display()))
}

/// `== case` headers followed by one dumped instruction per line.
fn expected_parses() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in read("parser/expected.txt").lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix("== ") {
            current = Some(name.to_string());
            out.entry(name.to_string()).or_default();
        } else {
            let name = current
                .clone()
                .expect("an instruction before the first `==` header");
            out.get_mut(&name)
                .expect("header seen")
                .push(line.to_string());
        }
    }
    out
}

#[test]
fn buildkit_parser_corpus() {
    let expected = expected_parses();
    let mut files: Vec<String> = std::fs::read_dir(data("parser"))
        .expect("corpus folder")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|n| n.strip_suffix(".Dockerfile").map(str::to_string))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        expected.len(),
        "every input has an expectation"
    );
    assert!(files.len() >= 33);
    let mut failures = Vec::new();
    for case in &files {
        let text = read(&format!("parser/{case}.Dockerfile"));
        let ast = match parser::parse(case, &text) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{case}: {e}"));
                continue;
            }
        };
        let got: Vec<String> = ast.nodes.iter().map(|n| n.dump()).collect();
        if got != expected[case] {
            failures.push(format!(
                "{case}:\n  got  {got:#?}\n  want {:#?}",
                expected[case]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// Cases BuildKit parses but its instruction layer (or ours, stricter) rejects; the rest of the
/// corpus must type-check.
const REJECTED_AS_INSTRUCTIONS: &[(&str, &str)] = &[
    // `COPY --user=me`: `--user` is not a COPY flag.
    ("flags", "unknown flag --user for COPY"),
    // `HEALTHCHECK` with no arguments.
    ("health", "HEALTHCHECK requires at least one argument"),
    // No FROM: CMD as the first instruction.
    ("json", "CMD before the first FROM"),
    (
        "jeztah-invalid-json-json-inside-string",
        "CMD before the first FROM",
    ),
    (
        "jeztah-invalid-json-json-inside-string-double",
        "CMD before the first FROM",
    ),
    (
        "jeztah-invalid-json-single-quotes",
        "CMD before the first FROM",
    ),
    (
        "jeztah-invalid-json-unterminated-bracket",
        "CMD before the first FROM",
    ),
    (
        "jeztah-invalid-json-unterminated-string",
        "CMD before the first FROM",
    ),
];

#[test]
fn buildkit_parser_corpus_as_instructions() {
    for case in expected_parses().keys() {
        let text = read(&format!("parser/{case}.Dockerfile"));
        let r = super::Dockerfile::parse(case, &text);
        match REJECTED_AS_INSTRUCTIONS.iter().find(|(c, _)| c == case) {
            Some((_, msg)) => {
                let e = r.expect_err(case).to_string();
                assert!(e.contains(msg), "{case}: {e}");
                assert!(e.starts_with(&format!("{case}:")), "{case}: {e}");
            }
            None => {
                r.unwrap_or_else(|e| panic!("{case}: {e}"));
            }
        }
    }
}

#[test]
fn buildkit_env_var_corpus() {
    let env: BTreeMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let lex = Lex::default();
    let mut n = 0;
    for line in read("expand.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let Some(input) = v["in"].as_str() else {
            continue;
        };
        n += 1;
        let got = lex.process_word(input, &env);
        if v["error"].as_bool() == Some(true) {
            assert!(got.is_err(), "{input:?}: expected an error, got {got:?}");
        } else {
            let want = v["out"].as_str().expect("out");
            assert_eq!(got.as_deref(), Ok(want), "{input:?}");
        }
    }
    assert!(n > 200, "corpus too small: {n}");
}

#[test]
fn buildkit_words_corpus() {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let lex = Lex::default();
    let mut n = 0;
    for line in read("words.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        if let Some(kv) = v["env"].as_array() {
            env.insert(
                kv[0].as_str().unwrap().into(),
                kv[1].as_str().unwrap().into(),
            );
            continue;
        }
        let Some(input) = v["in"].as_str() else {
            continue;
        };
        n += 1;
        let got = lex.process_words(input, &env);
        if v["error"].as_bool() == Some(true) {
            assert!(got.is_err(), "{input:?}: expected an error, got {got:?}");
        } else {
            let want: Vec<String> = serde_json::from_value(v["words"].clone()).expect("words");
            assert_eq!(got.expect(input), want, "{input:?}");
        }
    }
    assert!(n >= 20, "corpus too small: {n}");
}
