//! The instructions that set metadata (a port of BuildKit's `parseEnv`, `parseLabel`,
//! `parseArg`, `parseExpose`, `parseVolume`, `parseShell`): key=value pairs, ARG definitions,
//! and word lists.

use super::*;

/// ENV and LABEL: one or more `key=value` pairs (or the legacy `key value`).
pub(super) fn parse_key_values(name: &str, node: &Node) -> Fallible<Command> {
    no_flags(name, node)?;
    let Args::Pairs(pairs) = &node.args else {
        return Err(at_least_one(name, node));
    };
    if pairs.is_empty() {
        return Err(at_least_one(name, node));
    }
    let mut kvs = Vec::new();
    for p in pairs {
        if p.key.value.is_empty() {
            return Err(bad(p.key.pos, format!("{name} names can not be blank")));
        }
        kvs.push(KeyValue {
            key: p.key.clone(),
            value: p.value.clone(),
        });
    }
    Ok(if name == "ENV" {
        Command::Env(kvs)
    } else {
        Command::Label(kvs)
    })
}

/// ARG: names, each with an optional `=default`.
pub(super) fn parse_arg(name: &str, node: &Node) -> Fallible<Command> {
    no_flags(name, node)?;
    let args = words(node);
    if args.is_empty() {
        return Err(at_least_one(name, node));
    }
    let mut defs = Vec::new();
    for w in args {
        let def = match w.value.split_once('=') {
            Some(("", _)) => return Err(bad(w.pos, "ARG names can not be blank")),
            Some((k, v)) => ArgDef {
                name: Word {
                    value: k.to_string(),
                    pos: w.pos,
                },
                default: Some(Word {
                    value: v.to_string(),
                    pos: Position {
                        line: w.pos.line,
                        column: w.pos.column + k.chars().count() + 1,
                    },
                }),
            },
            None => ArgDef {
                name: w,
                default: None,
            },
        };
        defs.push(def);
    }
    Ok(Command::Arg(defs))
}

/// VOLUME: paths, none of them empty.
pub(super) fn parse_volume(name: &str, node: &Node) -> Fallible<Command> {
    no_flags(name, node)?;
    let args = words(node);
    if args.is_empty() {
        return Err(at_least_one(name, node));
    }
    let mut vols = Vec::new();
    for w in args {
        let v = w.value.trim();
        if v.is_empty() {
            return Err(bad(w.pos, "VOLUME specified can not be an empty string"));
        }
        vols.push(Word {
            value: v.to_string(),
            pos: w.pos,
        });
    }
    Ok(Command::Volume(vols))
}

/// SHELL: the JSON form only.
pub(super) fn parse_shell(name: &str, node: &Node) -> Fallible<Command> {
    no_flags(name, node)?;
    let args = words(node);
    if args.is_empty() {
        return Err(at_least_one(name, node));
    }
    if !node.json {
        return Err((args[0].pos, ErrorKind::NotJson(name.to_owned())));
    }
    Ok(Command::Shell(args.into_iter().map(|w| w.value).collect()))
}
