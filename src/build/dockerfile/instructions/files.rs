//! COPY and ADD (BuildKit's `parseCopy`, `parseAdd`): their flags, sources (heredocs among
//! them) and destination.

use super::*;

/// COPY: `--from` must not need expansion, as in BuildKit.
pub(super) fn parse_copy(name: &str, node: &Node) -> Fallible<Command> {
    let mut flags = Flags::parse(
        name,
        &node.flags,
        &[
            ("chown", FlagKind::String),
            ("from", FlagKind::String),
            ("chmod", FlagKind::String),
            ("link", FlagKind::Bool),
            ("exclude", FlagKind::Strings),
            ("parents", FlagKind::Bool),
        ],
    )?;
    let (sources, inline, dest) = sources_and_dest(name, node)?;
    let from = flags.string("from");
    if let Some(f) = &from {
        // BuildKit: the value must come out of expansion unchanged.
        if Lex::default()
            .process_word(&f.value, &NoEnv)
            .ok()
            .as_deref()
            != Some(f.value.as_str())
        {
            return Err((
                f.pos,
                ErrorKind::BadFlag(
                    "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround".into(),
                ),
            ));
        }
    }
    Ok(Command::Copy(Copy {
        sources,
        inline,
        dest,
        from,
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        excludes: flags.strings("exclude"),
    }))
}

/// ADD: COPY's flags without `--from`, plus `--checksum`, `--keep-git-dir`, `--unpack`.
pub(super) fn parse_add(name: &str, node: &Node) -> Fallible<Command> {
    let mut flags = Flags::parse(
        name,
        &node.flags,
        &[
            ("chown", FlagKind::String),
            ("chmod", FlagKind::String),
            ("link", FlagKind::Bool),
            ("keep-git-dir", FlagKind::Bool),
            ("checksum", FlagKind::String),
            ("unpack", FlagKind::Bool),
            ("exclude", FlagKind::Strings),
        ],
    )?;
    let (sources, inline, dest) = sources_and_dest(name, node)?;
    Ok(Command::Add(Add {
        sources,
        inline,
        dest,
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link").unwrap_or(false),
        checksum: flags.string("checksum"),
        keep_git_dir: flags.bool("keep-git-dir"),
        unpack: flags.bool("unpack"),
        excludes: flags.strings("exclude"),
    }))
}

pub(super) type SourcesAndDest = (Vec<Word>, Vec<InlineSource>, Word);

pub(super) fn sources_and_dest(name: &str, node: &Node) -> Fallible<SourcesAndDest> {
    let mut args = words(node);
    if args.len() < 2 {
        return Err(bad(
            node.span.start,
            format!(
                "{name} requires at least two arguments, but only one was provided. Destination could not be determined"
            ),
        ));
    }
    let dest = args.pop().expect("two or more");
    let heredoc = |w: &Word| {
        if node.json {
            None
        } else {
            parser::parse_heredoc(&w.value).ok().flatten()
        }
    };
    if heredoc(&dest).is_some() {
        return Err(bad(
            dest.pos,
            format!("{name} cannot accept a heredoc as a destination"),
        ));
    }
    let mut sources = Vec::new();
    let mut inline = Vec::new();
    for w in args {
        match heredoc(&w) {
            Some(h) => {
                let content = node
                    .heredocs
                    .iter()
                    .find(|d| d.name == h.name)
                    .map(|d| d.content.clone())
                    .unwrap_or_default();
                inline.push(InlineSource {
                    content: if h.chomp {
                        parser::chomp_heredoc(&content)
                    } else {
                        content
                    },
                    name: h.name,
                    expand: h.expand,
                });
            }
            None => sources.push(w),
        }
    }
    Ok((sources, inline, dest))
}
