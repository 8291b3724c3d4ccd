//! AST → typed instructions grouped into stages (a port of BuildKit's
//! `frontend/dockerfile/instructions`).
//!
//! Owns: which flags each instruction takes and their types, argument counts and shapes,
//! FROM's `AS name`, heredoc sources of COPY/ADD, HEALTHCHECK's options, the rule that a
//! Dockerfile starts with FROM (ARGs before the first FROM are the *meta args*), and variable
//! expansion of the fields Docker expands. It does not resolve images, stages, ARG values or
//! paths: that is the builder's job, which calls [`Instruction::expand`] with one environment
//! snapshot per instruction (so `ENV a=1 b=$a` sees the *old* `a`, as Docker does).
//!
//! What is expanded (Docker's reference, "Environment replacement"; BuildKit `Expand` methods):
//!
//! | instruction | expanded | never expanded |
//! |---|---|---|
//! | FROM | image, `--platform` (with the meta args only: [`Stage::expand_base`]) | `AS` name |
//! | ARG | default values | names |
//! | ENV, LABEL | keys and values | |
//! | WORKDIR, USER, STOPSIGNAL | the argument | |
//! | VOLUME | each path (one word each) | |
//! | EXPOSE | each argument, then split into words | |
//! | COPY | sources, destination, `--chown`, `--chmod`, heredoc bodies unless the delimiter was quoted (quotes in bodies kept) | `--from` (an error if it would change), `--exclude` |
//! | ADD | as COPY, plus `--checksum` | |
//! | RUN | the values of `--mount` fields | the command (the shell expands it), `--network`, `--security` |
//! | CMD, ENTRYPOINT, SHELL, HEALTHCHECK, MAINTAINER, ONBUILD | nothing | everything |
//!
//! Deliberate differences from BuildKit, all stricter: flags on ARG, STOPSIGNAL and
//! `HEALTHCHECK NONE` (BuildKit ignores them silently) are errors; RUN, CMD and ENTRYPOINT with
//! no arguments at all are errors (BuildKit builds `/bin/sh -c` with no command); ONBUILD's
//! trigger is checked as an instruction here rather than when a child image is built; a
//! `<<EOF` word in a JSON-form COPY/ADD is a plain file name (BuildKit looks it up as a heredoc
//! and finds an empty body).

use std::time::Duration;

use super::duration::parse_go_duration;
use super::error::{DockerfileError, ErrorKind, Position, Span, suggest};
use super::parser::{self, Args, Ast, Heredoc, Node, Warning, Word};
use super::shell::{Env, Lex, NoEnv};

/// Every instruction name, for "did you mean" suggestions.
const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A parsed Dockerfile: meta args and stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The file name the caller gave, used in every error.
    pub file: String,
    /// The escape character (`# escape=`).
    pub escape: char,
    /// The `# syntax=` directive, if any (recorded, not acted on).
    pub syntax: Option<String>,
    /// ARG instructions before the first FROM (each is a [`Command::Arg`]). They are visible in
    /// FROM lines only, unless a stage re-declares them.
    pub meta_args: Vec<Instruction>,
    /// The stages, in order; a stage's index is its position here.
    pub stages: Vec<Stage>,
    /// Parser warnings.
    pub warnings: Vec<Warning>,
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The `AS` name, lower-cased (stage names are case-insensitive).
    pub name: Option<Word>,
    /// The base image or stage, unexpanded.
    pub base: Word,
    /// `--platform`, unexpanded.
    pub platform: Option<Word>,
    /// Where the FROM line is.
    pub span: Span,
    /// The FROM line as written (continuations joined).
    pub source: String,
    /// The instructions after FROM.
    pub instructions: Vec<Instruction>,
    /// Comment lines directly above the FROM.
    pub comments: Vec<String>,
}

/// One instruction with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Where it is.
    pub span: Span,
    /// The instruction as written, continuations joined and trimmed (BuildKit's `String()`, used
    /// for image history).
    pub source: String,
    /// What it says.
    pub command: Command,
}

/// The typed content of an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `ARG name[=default] ...`
    Arg(Vec<ArgDef>),
    /// `ENV key=value ...` or `ENV key value`
    Env(Vec<KeyValue>),
    /// `LABEL key=value ...`
    Label(Vec<KeyValue>),
    /// `MAINTAINER name` (sets the image author).
    Maintainer(Word),
    /// `WORKDIR path`
    Workdir(Word),
    /// `USER user[:group]`
    User(Word),
    /// `RUN`
    Run(Run),
    /// `COPY`
    Copy(Copy),
    /// `ADD`
    Add(Add),
    /// `VOLUME` paths.
    Volume(Vec<Word>),
    /// `EXPOSE` port specs (`80`, `53/udp`, `8000-8010/tcp`), unparsed.
    Expose(Vec<Word>),
    /// `CMD`
    Cmd(CommandLine),
    /// `ENTRYPOINT`
    Entrypoint(CommandLine),
    /// `SHELL ["exe", "arg"...]` (JSON form only).
    Shell(Vec<String>),
    /// `HEALTHCHECK`
    Healthcheck(Healthcheck),
    /// `STOPSIGNAL signal` (name or number, validated by the builder after expansion).
    StopSignal(Word),
    /// `ONBUILD instruction`
    OnBuild(OnBuild),
}

/// One name of an ARG line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDef {
    /// The name (never expanded).
    pub name: Word,
    /// The default after `=`, if any (quotes kept until expansion).
    pub default: Option<Word>,
}

/// An ENV or LABEL pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Word,
    /// The value (quotes kept until expansion).
    pub value: Word,
}

/// The command of RUN, CMD or ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// Shell form: run with the stage's SHELL (default `/bin/sh -c`). Never expanded by the
    /// builder.
    Shell(String),
    /// Exec (JSON) form: argv as given. `CMD []` is an empty argv.
    Exec(Vec<String>),
}

/// `RUN [--mount=...] [--network=...] [--security=...] [--device=...] command`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The command. With heredocs it is the shell-form line holding the `<<` words (BuildKit
    /// runs a lone heredoc's body directly, or the line with the bodies appended).
    pub command: CommandLine,
    /// Heredoc bodies (not chomped; see [`Heredoc::chomp`]).
    pub heredocs: Vec<Heredoc>,
    /// `--mount` specs (`type=cache,target=/root/.cache`), raw CSV.
    pub mounts: Vec<Word>,
    /// `--network`: `default`, `none` or `host`.
    pub network: Option<Word>,
    /// `--security`: `sandbox` or `insecure`.
    pub security: Option<Word>,
    /// `--device` specs.
    pub devices: Vec<Word>,
}

/// A source written inline as a heredoc (`COPY <<EOF /dst`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSource {
    /// The delimiter, also the file's name.
    pub name: String,
    /// The body, with leading tabs already removed for `<<-`.
    pub content: String,
    /// Whether the body is expanded (delimiter not quoted).
    pub expand: bool,
}

/// `COPY [flags] src... dest`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Sources from the context (or from `--from`).
    pub sources: Vec<Word>,
    /// Heredoc sources.
    pub inline: Vec<InlineSource>,
    /// The destination (a trailing `/` is significant).
    pub dest: Word,
    /// `--from=stage|index|image` (never expanded).
    pub from: Option<Word>,
    /// `--chown=user[:group]`
    pub chown: Option<Word>,
    /// `--chmod=mode`
    pub chmod: Option<Word>,
    /// `--link`
    pub link: bool,
    /// `--parents`
    pub parents: bool,
    /// `--exclude=pattern`, repeatable.
    pub excludes: Vec<Word>,
}

/// `ADD [flags] src... dest`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    /// Sources: context paths, URLs or git references.
    pub sources: Vec<Word>,
    /// Heredoc sources.
    pub inline: Vec<InlineSource>,
    /// The destination.
    pub dest: Word,
    /// `--chown`
    pub chown: Option<Word>,
    /// `--chmod`
    pub chmod: Option<Word>,
    /// `--link`
    pub link: bool,
    /// `--checksum=sha256:...`
    pub checksum: Option<Word>,
    /// `--keep-git-dir[=bool]`, if given.
    pub keep_git_dir: Option<bool>,
    /// `--unpack[=bool]`, if given.
    pub unpack: Option<bool>,
    /// `--exclude=pattern`, repeatable.
    pub excludes: Vec<Word>,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD ...`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// Disable any inherited health check (`Test: ["NONE"]`).
    None,
    /// A check.
    Check(HealthConfig),
}

/// A health check as stored in the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `["CMD-SHELL", "cmd"]` for the shell form, `["CMD", argv...]` for the exec form.
    pub test: Vec<String>,
    /// `--interval`; zero means "inherit / runtime default".
    pub interval: Duration,
    /// `--timeout`; zero means inherit.
    pub timeout: Duration,
    /// `--start-period`; zero means inherit.
    pub start_period: Duration,
    /// `--start-interval`; zero means inherit.
    pub start_interval: Duration,
    /// `--retries`; zero means inherit.
    pub retries: u32,
}

/// `ONBUILD instruction`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnBuild {
    /// The trigger text stored in the image config (the line after `ONBUILD`, with heredoc
    /// bodies and delimiters appended on their own lines). Parse it downstream with
    /// [`parse_onbuild_trigger`].
    pub expression: String,
    /// The trigger, checked now.
    pub trigger: Box<Instruction>,
}

impl Dockerfile {
    /// Parses Dockerfile text into stages. `file` names the file in errors
    /// (e.g. `ci/Dockerfile.arm`).
    pub fn parse(file: &str, text: &str) -> Result<Dockerfile, DockerfileError> {
        from_ast(parser::parse(file, text)?)
    }

    /// An expander over `env` that reports errors in this file.
    pub fn expander<'a>(&'a self, env: &'a dyn Env) -> Expander<'a> {
        Expander::new(&self.file, self.escape, env)
    }

    /// The stage called `name` (case-insensitive) and its index.
    pub fn stage(&self, name: &str) -> Option<(usize, &Stage)> {
        self.stages.iter().enumerate().find(|(_, s)| {
            s.name
                .as_ref()
                .is_some_and(|n| n.value.eq_ignore_ascii_case(name))
        })
    }
}

/// Groups an AST into meta args and stages, typing every instruction.
pub fn from_ast(ast: Ast) -> Result<Dockerfile, DockerfileError> {
    let file = ast.file.clone();
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &ast.nodes {
        if node.keyword.eq_ignore_ascii_case("from") {
            stages.push(parse_from(&file, node)?);
            continue;
        }
        let instr = parse_instruction(&file, node)?;
        match (stages.last_mut(), &instr.command) {
            (Some(stage), _) => stage.instructions.push(instr),
            (None, Command::Arg(_)) => meta_args.push(instr),
            (None, _) => {
                return Err(DockerfileError::new(
                    &file,
                    node.span.start,
                    ErrorKind::NoStage(node.keyword.to_ascii_uppercase()),
                ));
            }
        }
    }
    if stages.is_empty() {
        let pos = ast
            .nodes
            .last()
            .map(|n| n.span.start)
            .unwrap_or(Position { line: 1, column: 1 });
        return Err(DockerfileError::new(&file, pos, ErrorKind::NoFrom));
    }
    Ok(Dockerfile {
        syntax: ast.directive("syntax").map(str::to_string),
        file,
        escape: ast.escape,
        meta_args,
        stages,
        warnings: ast.warnings,
    })
}

/// Parses an ONBUILD trigger stored in a base image's config (the text of
/// [`OnBuild::expression`]), as the child build runs it.
pub fn parse_onbuild_trigger(file: &str, trigger: &str) -> Result<Instruction, DockerfileError> {
    let ast = parser::parse(file, trigger)?;
    let node = &ast.nodes[0];
    if node.keyword.eq_ignore_ascii_case("from") {
        return Err(DockerfileError::new(
            file,
            node.span.start,
            ErrorKind::BadArguments("FROM isn't allowed as an ONBUILD trigger".into()),
        ));
    }
    parse_instruction(file, node)
}

type Fallible<T> = Result<T, (Position, ErrorKind)>;

fn bad(pos: Position, msg: impl Into<String>) -> (Position, ErrorKind) {
    (pos, ErrorKind::BadArguments(msg.into()))
}

fn words(node: &Node) -> Vec<Word> {
    match &node.args {
        Args::Words(w) => w.clone(),
        _ => Vec::new(),
    }
}

fn parse_from(file: &str, node: &Node) -> Result<Stage, DockerfileError> {
    let at = node.span.start;
    let r: Fallible<Stage> = (|| {
        let mut flags = Flags::parse("FROM", &node.flags, &[("platform", FlagKind::String)])?;
        let args = words(node);
        let name = match args.as_slice() {
            [_] => None,
            [_, as_kw, name] if as_kw.value.eq_ignore_ascii_case("as") => {
                let lower = name.value.to_ascii_lowercase();
                if !valid_stage_name(&lower) {
                    return Err(bad(
                        name.pos,
                        format!(
                            "invalid name for build stage: `{}`, name can't start with a number or contain symbols",
                            name.value
                        ),
                    ));
                }
                Some(Word {
                    value: lower,
                    pos: name.pos,
                })
            }
            _ => {
                let pos = args.first().map_or(at, |w| w.pos);
                return Err(bad(pos, "FROM requires either one or three arguments"));
            }
        };
        let base = args[0].clone();
        // A base that is empty without any variable in it can never work: say so now.
        if !base.value.contains('$')
            && Lex::default()
                .process_word(&base.value, &NoEnv)
                .is_ok_and(|v| v.is_empty())
        {
            return Err(bad(
                base.pos,
                format!("base name (`{}`) should not be blank", base.value),
            ));
        }
        Ok(Stage {
            name,
            base,
            platform: flags.string("platform"),
            span: node.span,
            source: node.original.trim().to_string(),
            instructions: Vec::new(),
            comments: node.comments.clone(),
        })
    })();
    r.map_err(|(p, k)| DockerfileError::new(file, p, k))
}

fn valid_stage_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Types one instruction node (anything but FROM).
pub fn parse_instruction(file: &str, node: &Node) -> Result<Instruction, DockerfileError> {
    let command = parse_command(node).map_err(|(p, k)| DockerfileError::new(file, p, k))?;
    Ok(Instruction {
        span: node.span,
        source: node.original.trim().to_string(),
        command,
    })
}

fn no_flags(name: &str, node: &Node) -> Fallible<()> {
    Flags::parse(name, &node.flags, &[]).map(|_| ())
}

fn exactly_one(name: &str, node: &Node) -> Fallible<Word> {
    no_flags(name, node)?;
    match words(node).as_slice() {
        [w] => Ok(w.clone()),
        _ => Err(bad(
            node.span.start,
            format!("{name} requires exactly one argument"),
        )),
    }
}

fn at_least_one(name: &str, node: &Node) -> (Position, ErrorKind) {
    bad(
        node.span.start,
        format!("{name} requires at least one argument"),
    )
}

fn parse_command(node: &Node) -> Fallible<Command> {
    let name = node.keyword.to_ascii_uppercase();
    let start = node.span.start;
    Ok(match name.as_str() {
        "ENV" | "LABEL" => {
            no_flags(&name, node)?;
            let Args::Pairs(pairs) = &node.args else {
                return Err(at_least_one(&name, node));
            };
            if pairs.is_empty() {
                return Err(at_least_one(&name, node));
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
            if name == "ENV" {
                Command::Env(kvs)
            } else {
                Command::Label(kvs)
            }
        }
        "MAINTAINER" => Command::Maintainer(exactly_one(&name, node)?),
        "WORKDIR" => Command::Workdir(exactly_one(&name, node)?),
        "USER" => Command::User(exactly_one(&name, node)?),
        "STOPSIGNAL" => Command::StopSignal(exactly_one(&name, node)?),
        "ARG" => {
            no_flags(&name, node)?;
            let args = words(node);
            if args.is_empty() {
                return Err(at_least_one(&name, node));
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
            Command::Arg(defs)
        }
        "COPY" => {
            let mut flags = Flags::parse(
                &name,
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
            let (sources, inline, dest) = sources_and_dest(&name, node)?;
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
            Command::Copy(Copy {
                sources,
                inline,
                dest,
                from,
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.bool("link").unwrap_or(false),
                parents: flags.bool("parents").unwrap_or(false),
                excludes: flags.strings("exclude"),
            })
        }
        "ADD" => {
            let mut flags = Flags::parse(
                &name,
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
            let (sources, inline, dest) = sources_and_dest(&name, node)?;
            Command::Add(Add {
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
            })
        }
        "ONBUILD" => {
            no_flags(&name, node)?;
            let Args::Sub(child) = &node.args else {
                return Err(at_least_one(&name, node));
            };
            let trigger = child.keyword.to_ascii_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err(bad(
                        child.span.start,
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                    ));
                }
                "MAINTAINER" | "FROM" => {
                    return Err(bad(
                        child.span.start,
                        format!("{trigger} isn't allowed as an ONBUILD trigger"),
                    ));
                }
                _ => {}
            }
            let mut child = (**child).clone();
            child.heredocs = node.heredocs.clone();
            child.span.end_line = node.span.end_line;
            let command = parse_command(&child)?;
            let mut expression = strip_onbuild(&node.original).to_string();
            for h in &node.heredocs {
                expression.push('\n');
                expression.push_str(&h.content);
                expression.push_str(&h.name);
            }
            Command::OnBuild(OnBuild {
                expression,
                trigger: Box::new(Instruction {
                    span: child.span,
                    source: child.original.trim().to_string(),
                    command,
                }),
            })
        }
        "RUN" => {
            let mut flags = Flags::parse(
                &name,
                &node.flags,
                &[
                    ("mount", FlagKind::Strings),
                    ("network", FlagKind::String),
                    ("security", FlagKind::String),
                    ("device", FlagKind::Strings),
                ],
            )?;
            let network = flags.string("network");
            if let Some(n) = &network
                && !matches!(n.value.as_str(), "default" | "none" | "host")
            {
                return Err((
                    n.pos,
                    ErrorKind::BadFlag(format!("invalid network mode `{}`", n.value)),
                ));
            }
            let security = flags.string("security");
            if let Some(s) = &security
                && !matches!(s.value.as_str(), "sandbox" | "insecure")
            {
                return Err((
                    s.pos,
                    ErrorKind::BadFlag(format!("invalid security mode `{}`", s.value)),
                ));
            }
            let mounts = flags.strings("mount");
            for m in &mounts {
                check_mount_from(m)?;
            }
            Command::Run(Run {
                command: command_line(&name, node)?,
                heredocs: node.heredocs.clone(),
                mounts,
                network,
                security,
                devices: flags.strings("device"),
            })
        }
        "CMD" => {
            no_flags(&name, node)?;
            Command::Cmd(command_line(&name, node)?)
        }
        "ENTRYPOINT" => {
            no_flags(&name, node)?;
            Command::Entrypoint(command_line(&name, node)?)
        }
        "SHELL" => {
            no_flags(&name, node)?;
            let args = words(node);
            if args.is_empty() {
                return Err(at_least_one(&name, node));
            }
            if !node.json {
                return Err((args[0].pos, ErrorKind::NotJson(name)));
            }
            Command::Shell(args.into_iter().map(|w| w.value).collect())
        }
        "HEALTHCHECK" => Command::Healthcheck(parse_healthcheck(node)?),
        "EXPOSE" => {
            no_flags(&name, node)?;
            let args = words(node);
            if args.is_empty() {
                return Err(at_least_one(&name, node));
            }
            Command::Expose(args)
        }
        "VOLUME" => {
            no_flags(&name, node)?;
            let args = words(node);
            if args.is_empty() {
                return Err(at_least_one(&name, node));
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
            Command::Volume(vols)
        }
        "FROM" => return Err(bad(start, "FROM is not allowed here")),
        _ => {
            return Err((
                start,
                ErrorKind::UnknownInstruction {
                    name: node.keyword.clone(),
                    suggestion: suggest(&node.keyword, &INSTRUCTIONS),
                },
            ));
        }
    })
}

/// The trigger text: the original line without its leading `ONBUILD`.
fn strip_onbuild(original: &str) -> &str {
    let t = original.trim_start();
    let t = if t.len() >= 7 && t[..7].eq_ignore_ascii_case("onbuild") {
        &t[7..]
    } else {
        t
    };
    t.trim_start()
}

fn command_line(name: &str, node: &Node) -> Fallible<CommandLine> {
    let args = words(node);
    if node.json {
        return Ok(CommandLine::Exec(
            args.into_iter().map(|w| w.value).collect(),
        ));
    }
    let line = args
        .into_iter()
        .map(|w| w.value)
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        return Err(at_least_one(name, node));
    }
    Ok(CommandLine::Shell(line))
}

type SourcesAndDest = (Vec<Word>, Vec<InlineSource>, Word);

fn sources_and_dest(name: &str, node: &Node) -> Fallible<SourcesAndDest> {
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

fn parse_healthcheck(node: &Node) -> Fallible<Healthcheck> {
    let args = words(node);
    let Some(typ) = args.first() else {
        return Err(at_least_one("HEALTHCHECK", node));
    };
    let kind = typ.value.to_ascii_uppercase();
    if kind == "NONE" {
        no_flags("HEALTHCHECK NONE", node)?;
        if args.len() > 1 {
            return Err(bad(args[1].pos, "HEALTHCHECK NONE takes no arguments"));
        }
        return Ok(Healthcheck::None);
    }
    let mut flags = Flags::parse(
        "HEALTHCHECK",
        &node.flags,
        &[
            ("interval", FlagKind::String),
            ("timeout", FlagKind::String),
            ("start-period", FlagKind::String),
            ("start-interval", FlagKind::String),
            ("retries", FlagKind::String),
        ],
    )?;
    if kind != "CMD" {
        return Err(bad(
            typ.pos,
            format!("Unknown type `{}` in HEALTHCHECK (try CMD)", typ.value),
        ));
    }
    let cmd: Vec<String> = args[1..].iter().map(|w| w.value.clone()).collect();
    if cmd.is_empty() {
        return Err(bad(typ.pos, "Missing command after HEALTHCHECK CMD"));
    }
    let test = if node.json {
        std::iter::once("CMD".to_string()).chain(cmd).collect()
    } else {
        vec!["CMD-SHELL".to_string(), cmd.join(" ")]
    };
    let mut interval = |name: &str| -> Fallible<Duration> {
        let Some(w) = flags.string(name) else {
            return Ok(Duration::ZERO);
        };
        let err = |reason: String| {
            (
                w.pos,
                ErrorKind::BadDuration {
                    flag: name.to_string(),
                    value: w.value.clone(),
                    reason,
                },
            )
        };
        if w.value.is_empty() {
            return Ok(Duration::ZERO);
        }
        let nanos = parse_go_duration(&w.value).map_err(err)?;
        if nanos == 0 {
            return Ok(Duration::ZERO);
        }
        if nanos < 1_000_000 {
            return Err(err("cannot be less than 1ms".into()));
        }
        Ok(Duration::from_nanos(nanos as u64))
    };
    let interval_v = interval("interval")?;
    let timeout = interval("timeout")?;
    let start_period = interval("start-period")?;
    let start_interval = interval("start-interval")?;
    let retries = match flags.string("retries") {
        None => 0,
        Some(w) if w.value.is_empty() => 0,
        Some(w) => {
            let n: i32 = w.value.parse().map_err(|_| {
                (
                    w.pos,
                    ErrorKind::BadFlag(format!("invalid value `{}` for --retries", w.value)),
                )
            })?;
            if n < 0 {
                return Err((
                    w.pos,
                    ErrorKind::BadFlag(format!("--retries cannot be negative ({n})")),
                ));
            }
            n as u32
        }
    };
    Ok(Healthcheck::Check(HealthConfig {
        test,
        interval: interval_v,
        timeout,
        start_period,
        start_interval,
        retries,
    }))
}

/// RUN `--mount` may not use variables in `from=` (BuildKit: "define alias stage instead").
fn check_mount_from(m: &Word) -> Fallible<()> {
    for field in csv_fields(&m.value) {
        let (k, v) = field.split_once('=').unwrap_or((&field, ""));
        if k.eq_ignore_ascii_case("from")
            && let Some(i) = v.find('$')
            && i != v.len() - 1
        {
            return Err((
                m.pos,
                ErrorKind::BadFlag(
                    "'from' doesn't support variable expansion, define alias stage instead".into(),
                ),
            ));
        }
    }
    Ok(())
}

/// Splits a CSV record (`a=b,"c=d,e"`), unquoting quoted fields.
fn csv_fields(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut in_quotes = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = false;
                }
            }
            '"' if at_start => in_quotes = true,
            ',' if !in_quotes => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
                continue;
            }
            c => cur.push(c),
        }
        at_start = false;
    }
    out.push(cur);
    out
}

fn csv_join(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    String,
    Strings,
}

/// Parsed `--flags` of one instruction (BuildKit's `BFlags`).
struct Flags {
    values: Vec<(String, FlagValue)>,
}

enum FlagValue {
    Bool(bool),
    Str(Word),
    Strs(Vec<Word>),
}

impl Flags {
    fn parse(instruction: &str, words: &[Word], specs: &[(&str, FlagKind)]) -> Fallible<Flags> {
        let mut values: Vec<(String, FlagValue)> = Vec::new();
        for w in words {
            let err = |msg: String| (w.pos, ErrorKind::BadFlag(msg));
            let Some(body) = w.value.strip_prefix("--") else {
                return Err(err(format!("arg should start with -- : {}", w.value)));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(_, kind)) = specs.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = specs.iter().map(|(n, _)| *n).collect();
                let suggestion = (!names.is_empty())
                    .then(|| suggest_exact(name, &names))
                    .flatten();
                return Err((
                    w.pos,
                    ErrorKind::UnknownFlag {
                        flag: name.to_string(),
                        instruction: instruction.to_string(),
                        suggestion: suggestion.map(|s| format!("--{s}")),
                    },
                ));
            };
            let existing = values.iter().position(|(n, _)| n == name);
            if existing.is_some() && kind != FlagKind::Strings {
                return Err(err(format!("duplicate flag specified: --{name}")));
            }
            let word = |v: &str| Word {
                value: v.to_string(),
                pos: w.pos,
            };
            let v = match (kind, value) {
                (FlagKind::Bool, Some("")) => {
                    return Err(err(format!("missing a value on flag: --{name}")));
                }
                (FlagKind::Bool, None) => FlagValue::Bool(true),
                (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => FlagValue::Bool(true),
                    "false" => FlagValue::Bool(false),
                    _ => {
                        return Err(err(format!(
                            "expecting boolean value for flag --{name}, not: {v}"
                        )));
                    }
                },
                (_, None) => return Err(err(format!("missing a value on flag: --{name}"))),
                (FlagKind::String, Some(v)) => FlagValue::Str(word(v)),
                (FlagKind::Strings, Some(v)) => {
                    if let Some(i) = existing {
                        if let FlagValue::Strs(list) = &mut values[i].1 {
                            list.push(word(v));
                        }
                        continue;
                    }
                    FlagValue::Strs(vec![word(v)])
                }
            };
            values.push((name.to_string(), v));
        }
        Ok(Flags { values })
    }

    fn take(&mut self, name: &str) -> Option<FlagValue> {
        let i = self.values.iter().position(|(n, _)| n == name)?;
        Some(self.values.remove(i).1)
    }

    fn string(&mut self, name: &str) -> Option<Word> {
        match self.take(name) {
            Some(FlagValue::Str(w)) => Some(w),
            _ => None,
        }
    }

    fn bool(&mut self, name: &str) -> Option<bool> {
        match self.take(name) {
            Some(FlagValue::Bool(b)) => Some(b),
            _ => None,
        }
    }

    fn strings(&mut self, name: &str) -> Vec<Word> {
        match self.take(name) {
            Some(FlagValue::Strs(w)) => w,
            _ => Vec::new(),
        }
    }
}

/// Case-sensitive suggestion for flag names (BuildKit passes `caseSensitive=true`).
fn suggest_exact(name: &str, candidates: &[&str]) -> Option<String> {
    if candidates.contains(&name) {
        return None;
    }
    suggest(name, candidates)
}

/// Expands words with one environment snapshot, reporting errors at the word's position.
pub struct Expander<'a> {
    file: &'a str,
    lex: Lex,
    env: &'a dyn Env,
}

impl<'a> Expander<'a> {
    /// An expander for `file` with its escape character over `env`.
    pub fn new(file: &'a str, escape: char, env: &'a dyn Env) -> Expander<'a> {
        Expander {
            file,
            lex: Lex::new(escape),
            env,
        }
    }

    fn fail(&self, pos: Position, e: super::shell::ExpandError) -> DockerfileError {
        DockerfileError::new(self.file, pos, ErrorKind::Expand(e))
    }

    /// Expands one word (quotes removed, no splitting).
    pub fn word(&self, w: &Word) -> Result<Word, DockerfileError> {
        let value = self
            .lex
            .process_word(&w.value, self.env)
            .map_err(|e| self.fail(w.pos, e))?;
        Ok(Word { value, pos: w.pos })
    }

    /// Expands one word and splits it into words (EXPOSE).
    pub fn words(&self, w: &Word) -> Result<Vec<Word>, DockerfileError> {
        let v = self
            .lex
            .process_words(&w.value, self.env)
            .map_err(|e| self.fail(w.pos, e))?;
        Ok(v.into_iter()
            .map(|value| Word { value, pos: w.pos })
            .collect())
    }

    /// Expands a heredoc body: variables only, quotes are ordinary characters.
    pub fn heredoc(&self, content: &str, pos: Position) -> Result<String, DockerfileError> {
        let mut lex = Lex::new('\\');
        lex.skip_process_quotes = true;
        lex.process_word(content, self.env)
            .map_err(|e| self.fail(pos, e))
    }

    fn opt(&self, w: &mut Option<Word>) -> Result<(), DockerfileError> {
        if let Some(x) = w {
            *x = self.word(x)?;
        }
        Ok(())
    }

    fn all(&self, ws: &mut [Word]) -> Result<(), DockerfileError> {
        for w in ws {
            *w = self.word(w)?;
        }
        Ok(())
    }

    fn inline(&self, srcs: &mut [InlineSource], pos: Position) -> Result<(), DockerfileError> {
        for s in srcs.iter_mut().filter(|s| s.expand) {
            s.content = self.heredoc(&s.content, pos)?;
        }
        Ok(())
    }
}

impl Instruction {
    /// A copy with every field Docker expands expanded with `ex` (see the module docs for the
    /// list). Call it with the environment in force *before* this instruction.
    pub fn expand(&self, ex: &Expander<'_>) -> Result<Instruction, DockerfileError> {
        let mut out = self.clone();
        let pos = self.span.start;
        match &mut out.command {
            Command::Arg(defs) => {
                for d in defs {
                    ex.opt(&mut d.default)?;
                }
            }
            Command::Env(kvs) | Command::Label(kvs) => {
                for kv in kvs {
                    kv.key = ex.word(&kv.key)?;
                    kv.value = ex.word(&kv.value)?;
                }
            }
            Command::Workdir(w) | Command::User(w) | Command::StopSignal(w) => *w = ex.word(w)?,
            Command::Volume(v) => ex.all(v)?,
            Command::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports.iter() {
                    out.extend(ex.words(p)?);
                }
                *ports = out;
            }
            Command::Copy(c) => {
                ex.all(&mut c.sources)?;
                c.dest = ex.word(&c.dest)?;
                ex.opt(&mut c.chown)?;
                ex.opt(&mut c.chmod)?;
                ex.inline(&mut c.inline, pos)?;
            }
            Command::Add(a) => {
                ex.all(&mut a.sources)?;
                a.dest = ex.word(&a.dest)?;
                ex.opt(&mut a.chown)?;
                ex.opt(&mut a.chmod)?;
                ex.opt(&mut a.checksum)?;
                ex.inline(&mut a.inline, pos)?;
            }
            Command::Run(r) => {
                for m in &mut r.mounts {
                    let mut fields = csv_fields(&m.value);
                    for f in &mut fields {
                        if let Some((k, v)) = f.split_once('=') {
                            let v = ex.word(&Word {
                                value: v.to_string(),
                                pos: m.pos,
                            })?;
                            *f = format!("{k}={}", v.value);
                        }
                    }
                    m.value = csv_join(&fields);
                }
            }
            Command::Maintainer(_)
            | Command::Cmd(_)
            | Command::Entrypoint(_)
            | Command::Shell(_)
            | Command::Healthcheck(_)
            | Command::OnBuild(_) => {}
        }
        Ok(out)
    }
}

impl Stage {
    /// The base image name and platform, expanded with the meta args (`env` should hold only
    /// the ARGs before the first FROM, with build-arg overrides). An empty base is an error.
    pub fn expand_base(
        &self,
        ex: &Expander<'_>,
    ) -> Result<(String, Option<String>), DockerfileError> {
        let base = ex.word(&self.base)?;
        if base.value.is_empty() {
            return Err(DockerfileError::new(
                ex.file,
                self.base.pos,
                ErrorKind::BadArguments(format!(
                    "base name (`{}`) should not be blank",
                    self.base.value
                )),
            ));
        }
        let platform = match &self.platform {
            Some(p) => Some(ex.word(p)?.value),
            None => None,
        };
        Ok((base.value, platform))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn df(text: &str) -> Dockerfile {
        Dockerfile::parse("Dockerfile", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        Dockerfile::parse("Dockerfile", text)
            .unwrap_err()
            .to_string()
    }

    fn one(text: &str) -> Command {
        let d = df(&format!("FROM scratch\n{text}"));
        d.stages[0].instructions[0].command.clone()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stages_and_meta_args() {
        let d = df(
            "# syntax=docker/dockerfile:1\nARG BASE=alpine\nARG V\nFROM --platform=$BUILDPLATFORM ${BASE}:3 AS Build\nRUN make\nfrom scratch\nCOPY --from=build /out /\n",
        );
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(d.meta_args.len(), 2);
        assert_eq!(d.stages.len(), 2);
        let s = &d.stages[0];
        assert_eq!(s.name.as_ref().unwrap().value, "build");
        assert_eq!(s.base.value, "${BASE}:3");
        assert_eq!(s.platform.as_ref().unwrap().value, "$BUILDPLATFORM");
        assert_eq!(s.instructions.len(), 1);
        assert_eq!(d.stage("BUILD").unwrap().0, 0);
        let meta = env(&[("BASE", "debian"), ("BUILDPLATFORM", "linux/amd64")]);
        let (base, plat) = s.expand_base(&d.expander(&meta)).unwrap();
        assert_eq!(
            (base.as_str(), plat.as_deref()),
            ("debian:3", Some("linux/amd64"))
        );
        let d = df("ARG B\nFROM $B\n");
        let e = d.stages[0].expand_base(&d.expander(&NoEnv)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:2:6: base name (`$B`) should not be blank"
        );
    }

    #[test]
    fn error_messages_name_file_line_column() {
        assert_eq!(
            err("FROM x\nRUN a\nFORM y\n"),
            "Dockerfile:3:1: unknown instruction: FORM (did you mean FROM?)"
        );
        assert_eq!(
            err("FROM x\n  foo bar\n"),
            "Dockerfile:2:3: unknown instruction: foo (did you mean from?)"
        );
        assert_eq!(
            err("FROM x\nHEALTHCHEK NONE\n"),
            "Dockerfile:2:1: unknown instruction: HEALTHCHEK (did you mean HEALTHCHECK?)"
        );
        assert_eq!(
            err("FROM x\nFROBNICATE\n"),
            "Dockerfile:2:1: unknown instruction: FROBNICATE"
        );
        assert_eq!(
            err("FROM x\nCOPY --foo=1 a b\n"),
            "Dockerfile:2:6: unknown flag --foo for COPY (did you mean --from?)"
        );
        assert_eq!(
            err("FROM x\nCOPY --bogus a b\n"),
            "Dockerfile:2:6: unknown flag --bogus for COPY"
        );
        assert_eq!(
            err("FROM x\nCOPY --chmown=1 a b\n"),
            "Dockerfile:2:6: unknown flag --chmown for COPY (did you mean --chown?)"
        );
        assert_eq!(
            err("RUN x\nFROM y\n"),
            "Dockerfile:1:1: RUN before the first FROM: a Dockerfile must start with FROM (ARG may come before it)"
        );
        assert_eq!(
            err("ARG A=1\nARG B\n"),
            "Dockerfile:2:1: no FROM instruction: a Dockerfile needs at least one stage"
        );
        assert_eq!(
            err("FROM x\nSHELL [\"/bin/bash\", \"-c\"\n"),
            "Dockerfile:2:7: SHELL requires the arguments to be in JSON form"
        );
        assert_eq!(
            err("FROM x\nSHELL /bin/bash -c\n"),
            "Dockerfile:2:7: SHELL requires the arguments to be in JSON form"
        );
        assert_eq!(
            err("FROM \"\"\n"),
            "Dockerfile:1:6: base name (`\"\"`) should not be blank"
        );
        assert_eq!(
            err("FROM\n"),
            "Dockerfile:1:1: FROM requires either one or three arguments"
        );
        assert_eq!(
            err("FROM a b\n"),
            "Dockerfile:1:6: FROM requires either one or three arguments"
        );
        assert_eq!(
            err("FROM a AS 1x\n"),
            "Dockerfile:1:11: invalid name for build stage: `1x`, name can't start with a number or contain symbols"
        );
        assert_eq!(
            err("FROM x\nHEALTHCHECK --interval=10 CMD true\n"),
            "Dockerfile:2:13: invalid duration `10` for --interval: missing unit in duration `10`"
        );
        assert_eq!(
            err("FROM x\nHEALTHCHECK --timeout=50ns CMD true\n"),
            "Dockerfile:2:13: invalid duration `50ns` for --timeout: cannot be less than 1ms"
        );
        assert_eq!(
            err("FROM x\nCOPY a\n"),
            "Dockerfile:2:1: COPY requires at least two arguments, but only one was provided. Destination could not be determined"
        );
        assert_eq!(
            err("FROM x\nCOPY /foo <<EOF\nEOF\n"),
            "Dockerfile:2:11: COPY cannot accept a heredoc as a destination"
        );
        assert_eq!(
            err("FROM x\nONBUILD FROM scratch\n"),
            "Dockerfile:2:9: FROM isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            err("FROM x\nONBUILD ONBUILD RUN touch foobar\n"),
            "Dockerfile:2:9: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
        );
        assert_eq!(
            err("FROM x\nMAINTAINER --boo joe@example.com\n"),
            "Dockerfile:2:12: unknown flag --boo for MAINTAINER"
        );
        assert_eq!(
            err("FROM x\nCOPY --from=$X a b\n"),
            "Dockerfile:2:6: variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
        );
        assert_eq!(
            err("FROM x\nRUN --network=foo true\n"),
            "Dockerfile:2:5: invalid network mode `foo`"
        );
        assert_eq!(
            err("FROM x\nRUN --mount=from=$X,target=/a true\n"),
            "Dockerfile:2:5: 'from' doesn't support variable expansion, define alias stage instead"
        );
        assert_eq!(
            err("FROM x\nCOPY --link=maybe a b\n"),
            "Dockerfile:2:6: expecting boolean value for flag --link, not: maybe"
        );
        assert_eq!(
            err("FROM x\nCOPY --from a b\n"),
            "Dockerfile:2:6: missing a value on flag: --from"
        );
        assert_eq!(
            err("FROM x\nCOPY --from=a --from=b a b\n"),
            "Dockerfile:2:15: duplicate flag specified: --from"
        );
        assert_eq!(
            err("FROM x\nVOLUME [\"\"]\n"),
            "Dockerfile:2:9: VOLUME specified can not be an empty string"
        );
        assert_eq!(
            err("FROM x\nARG =x\n"),
            "Dockerfile:2:5: ARG names can not be blank"
        );
        assert_eq!(
            err("FROM x\nENV =x\n"),
            "Dockerfile:2:5: ENV names can not be blank"
        );
        assert_eq!(
            err("FROM x\nHEALTHCHECK CONNECT TCP 7000\n"),
            "Dockerfile:2:13: Unknown type `CONNECT` in HEALTHCHECK (try CMD)"
        );
        assert_eq!(
            err("FROM x\nHEALTHCHECK CMD\n"),
            "Dockerfile:2:13: Missing command after HEALTHCHECK CMD"
        );
        assert_eq!(
            err("FROM x\nHEALTHCHECK NONE x\n"),
            "Dockerfile:2:18: HEALTHCHECK NONE takes no arguments"
        );
        assert_eq!(
            err("FROM x\nHEALTHCHECK --retries=-1 CMD x\n"),
            "Dockerfile:2:13: --retries cannot be negative (-1)"
        );
        assert!(err("FROM x\nRUN\n").ends_with("RUN requires at least one argument"));
    }

    #[test]
    fn argument_counts() {
        for cmd in ["MAINTAINER", "WORKDIR", "USER", "STOPSIGNAL"] {
            assert_eq!(
                err(&format!("FROM x\n{cmd}\n")),
                format!("Dockerfile:2:1: {cmd} requires exactly one argument")
            );
        }
        for cmd in [
            "ENV",
            "LABEL",
            "ONBUILD",
            "HEALTHCHECK",
            "EXPOSE",
            "VOLUME",
            "ARG",
            "SHELL",
        ] {
            assert_eq!(
                err(&format!("FROM x\n{cmd}\n")),
                format!("Dockerfile:2:1: {cmd} requires at least one argument")
            );
        }
        for cmd in ["ADD", "COPY"] {
            assert!(
                err(&format!("FROM x\n{cmd} arg1\n")).contains("requires at least two arguments")
            );
        }
        // COPY with only whitespace and a continuation (BuildKit's copyEmptyWhitespace).
        assert!(
            err("FROM x\nCOPY\t\n\t\tquux \\\n      bar")
                .contains("COPY requires at least two arguments")
        );
    }

    #[test]
    fn copy_and_add() {
        let Command::Copy(c) = one(
            "COPY --from=build --chown=1:2 --chmod=755 --link --exclude=*.md --exclude=x a b /dst/",
        ) else {
            panic!()
        };
        assert_eq!(
            c.sources
                .iter()
                .map(|w| w.value.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(c.dest.value, "/dst/");
        assert_eq!(c.from.unwrap().value, "build");
        assert_eq!(c.chown.unwrap().value, "1:2");
        assert_eq!(c.chmod.unwrap().value, "755");
        assert!(c.link && !c.parents);
        assert_eq!(c.excludes.len(), 2);
        let Command::Add(a) =
            one("ADD --checksum=sha256:abc --unpack=false --keep-git-dir https://x/y.tar /")
        else {
            panic!()
        };
        assert_eq!(a.checksum.unwrap().value, "sha256:abc");
        assert_eq!((a.unpack, a.keep_git_dir), (Some(false), Some(true)));
        let Command::Copy(c) = one("COPY [\"test file\", \"/tmp/test file\"]") else {
            panic!()
        };
        assert_eq!(
            (c.sources[0].value.as_str(), c.dest.value.as_str()),
            ("test file", "/tmp/test file")
        );
    }

    /// BuildKit's TestCopyHeredoc, in table form: (Dockerfile, sources, inline (name, data, expand), dest).
    #[test]
    fn copy_heredocs() {
        type Case = (
            &'static str,
            &'static [&'static str],
            &'static [(&'static str, &'static str, bool)],
            &'static str,
        );
        let cases: &[Case] = &[
            ("COPY /foo /bar", &["/foo"], &[], "/bar"),
            ("COPY <<EOF /bar\nEOF", &[], &[("EOF", "", true)], "/bar"),
            (
                "COPY <<EOF /bar\nTESTING\nEOF",
                &[],
                &[("EOF", "TESTING\n", true)],
                "/bar",
            ),
            (
                "COPY <<-EOF /bar\n\tTESTING\nEOF",
                &[],
                &[("EOF", "TESTING\n", true)],
                "/bar",
            ),
            (
                "COPY <<'EOF' /bar\nTESTING\nEOF",
                &[],
                &[("EOF", "TESTING\n", false)],
                "/bar",
            ),
            (
                "COPY <<EOF1 <<EOF2 /bar\nthis is the first file\nEOF1\nthis is the second file\nEOF2",
                &[],
                &[
                    ("EOF1", "this is the first file\n", true),
                    ("EOF2", "this is the second file\n", true),
                ],
                "/bar",
            ),
            (
                "COPY <<EOF foo.txt /bar\nthis is inline\nEOF",
                &["foo.txt"],
                &[("EOF", "this is inline\n", true)],
                "/bar",
            ),
            (
                "COPY <<EOF /quotes\n\"quotes\"\nEOF",
                &[],
                &[("EOF", "\"quotes\"\n", true)],
                "/quotes",
            ),
        ];
        for (text, sources, inline, dest) in cases {
            let Command::Copy(c) = one(text) else {
                panic!()
            };
            assert_eq!(
                c.sources
                    .iter()
                    .map(|w| w.value.as_str())
                    .collect::<Vec<_>>(),
                *sources,
                "{text}"
            );
            let got: Vec<(&str, &str, bool)> = c
                .inline
                .iter()
                .map(|s| (s.name.as_str(), s.content.as_str(), s.expand))
                .collect();
            assert_eq!(got, *inline, "{text}");
            assert_eq!(c.dest.value, *dest, "{text}");
        }
    }

    /// BuildKit's TestRunHeredoc, in table form.
    #[test]
    fn run_forms() {
        type Case = (
            &'static str,
            CommandLine,
            &'static [(&'static str, &'static str, bool)],
        );
        let cases: &[Case] = &[
            (
                "RUN [\"ls\", \"/\"]",
                CommandLine::Exec(vec!["ls".into(), "/".into()]),
                &[],
            ),
            (
                "RUN [\"<<EOF\"]",
                CommandLine::Exec(vec!["<<EOF".into()]),
                &[],
            ),
            ("RUN ls /", CommandLine::Shell("ls /".into()), &[]),
            (
                "RUN <<EOF\nls /\nwhoami\nEOF",
                CommandLine::Shell("<<EOF".into()),
                &[("EOF", "ls /\nwhoami\n", false)],
            ),
            (
                "RUN <<'EOF' | python\nprint(\"hello\")\nprint(\"world\")\nEOF",
                CommandLine::Shell("<<'EOF' | python".into()),
                &[("EOF", "print(\"hello\")\nprint(\"world\")\n", false)],
            ),
            (
                "RUN <<-EOF\n\techo test\nEOF",
                CommandLine::Shell("<<-EOF".into()),
                &[("EOF", "\techo test\n", true)],
            ),
        ];
        for (text, cmd, docs) in cases {
            let Command::Run(r) = one(text) else { panic!() };
            assert_eq!(&r.command, cmd, "{text}");
            let got: Vec<(&str, &str, bool)> = r
                .heredocs
                .iter()
                .map(|h| (h.name.as_str(), h.content.as_str(), h.chomp))
                .collect();
            assert_eq!(got, *docs, "{text}");
        }
        let Command::Run(r) = one(
            "RUN --mount=type=cache,target=/root/.cache --network=none --security=insecure make",
        ) else {
            panic!()
        };
        assert_eq!(r.mounts[0].value, "type=cache,target=/root/.cache");
        assert_eq!(r.network.unwrap().value, "none");
        assert_eq!(r.security.unwrap().value, "insecure");
    }

    #[test]
    fn healthcheck() {
        assert_eq!(
            one("HEALTHCHECK NONE"),
            Command::Healthcheck(Healthcheck::None)
        );
        let Command::Healthcheck(Healthcheck::Check(h)) = one(
            "HEALTHCHECK --interval=5s --timeout=3s --retries=3 \\\n  CMD /app/check.sh --quiet",
        ) else {
            panic!()
        };
        assert_eq!(h.test, ["CMD-SHELL", "/app/check.sh --quiet"]);
        assert_eq!(
            (h.interval, h.timeout, h.retries),
            (Duration::from_secs(5), Duration::from_secs(3), 3)
        );
        let Command::Healthcheck(Healthcheck::Check(h)) = one(
            "HEALTHCHECK --start-period=0s --start-interval=1m30s --interval=5s --timeout=0s --retries=0 CMD [\"foo\", \"bar\"]",
        ) else {
            panic!()
        };
        assert_eq!(h.test, ["CMD", "foo", "bar"]);
        assert_eq!(
            (h.start_period, h.start_interval, h.timeout),
            (Duration::ZERO, Duration::from_secs(90), Duration::ZERO)
        );
        let Command::Healthcheck(Healthcheck::Check(h)) = one("HEALTHCHECK --interval=1ms CMD a b")
        else {
            panic!()
        };
        assert_eq!(h.interval, Duration::from_millis(1));
        assert_eq!(h.test, ["CMD-SHELL", "a b"]);
    }

    #[test]
    fn simple_instructions() {
        assert!(matches!(one("CMD []"), Command::Cmd(CommandLine::Exec(v)) if v.is_empty()));
        assert_eq!(
            one("ENTRYPOINT [ \"/usr/bin/redis-server\" ]"),
            Command::Entrypoint(CommandLine::Exec(vec!["/usr/bin/redis-server".into()]))
        );
        assert_eq!(
            one("SHELL [\"/bin/bash\", \"-c\"]"),
            Command::Shell(vec!["/bin/bash".into(), "-c".into()])
        );
        let Command::Arg(a) = one("ARG abc=\"123 456\" def") else {
            panic!()
        };
        assert_eq!(a[0].name.value, "abc");
        assert_eq!(a[0].default.as_ref().unwrap().value, "\"123 456\"");
        assert_eq!(a[0].default.as_ref().unwrap().pos.column, 9);
        assert!(a[1].default.is_none());
        let Command::Env(e) = one("ENV SCUBA 1 DUBA 3") else {
            panic!()
        };
        assert_eq!(
            (e[0].key.value.as_str(), e[0].value.value.as_str()),
            ("SCUBA", "1 DUBA 3")
        );
        let Command::Volume(v) = one("VOLUME /a /b") else {
            panic!()
        };
        assert_eq!(v.len(), 2);
        let Command::OnBuild(o) = one("ONBUILD RUN <<EOF\necho hi\nEOF") else {
            panic!()
        };
        assert_eq!(o.expression, "RUN <<EOF\necho hi\nEOF");
        assert!(matches!(o.trigger.command, Command::Run(_)));
        let t = parse_onbuild_trigger("Dockerfile", &o.expression).unwrap();
        assert!(matches!(t.command, Command::Run(ref r) if r.heredocs[0].content == "echo hi\n"));
        assert!(parse_onbuild_trigger("Dockerfile", "FROM x").is_err());
    }

    #[test]
    fn expansion_of_each_instruction() {
        let d = df(
            "FROM x\nENV abc=bye def=$abc\nLABEL \"$K\"=\"a $V\"\nWORKDIR ${DIR:-/w}\nUSER $U:grp\nEXPOSE $PORTS 53/udp\nVOLUME $DIR\nCOPY --chown=$U --from=b $SRC \"$DIR/x\"\nADD --checksum=$SUM <<EOF <<'RAW' /d/\n\"$V\"\nEOF\n$V\nRAW\nRUN --mount=type=cache,target=$DIR echo $V\nCMD echo $V\nARG A=$V B\nSTOPSIGNAL $SIG\n",
        );
        let e = env(&[
            ("abc", "hello"),
            ("K", "key"),
            ("V", "val"),
            ("U", "me"),
            ("PORTS", "80 443/tcp"),
            ("DIR", "/data"),
            ("SRC", "src/*"),
            ("SUM", "sha256:1"),
            ("SIG", "SIGTERM"),
        ]);
        let ex = d.expander(&e);
        let got: Vec<Command> = d.stages[0]
            .instructions
            .iter()
            .map(|i| i.expand(&ex).unwrap().command)
            .collect();
        let Command::Env(kv) = &got[0] else { panic!() };
        // One snapshot per instruction: def gets the old abc.
        assert_eq!(kv[1].value.value, "hello");
        assert_eq!(kv[0].value.value, "bye");
        let Command::Label(kv) = &got[1] else {
            panic!()
        };
        assert_eq!(
            (kv[0].key.value.as_str(), kv[0].value.value.as_str()),
            ("key", "a val")
        );
        assert_eq!(
            got[2],
            Command::Workdir(Word {
                value: "/data".into(),
                pos: Position { line: 4, column: 9 }
            })
        );
        assert!(matches!(&got[3], Command::User(w) if w.value == "me:grp"));
        let Command::Expose(p) = &got[4] else {
            panic!()
        };
        assert_eq!(
            p.iter().map(|w| w.value.as_str()).collect::<Vec<_>>(),
            ["80", "443/tcp", "53/udp"]
        );
        assert!(matches!(&got[5], Command::Volume(v) if v[0].value == "/data"));
        let Command::Copy(c) = &got[6] else { panic!() };
        assert_eq!(
            (
                c.sources[0].value.as_str(),
                c.dest.value.as_str(),
                c.chown.as_ref().unwrap().value.as_str()
            ),
            ("src/*", "/data/x", "me")
        );
        let Command::Add(a) = &got[7] else { panic!() };
        assert_eq!(a.checksum.as_ref().unwrap().value, "sha256:1");
        assert_eq!(a.inline[0].content, "\"val\"\n");
        assert_eq!(a.inline[1].content, "$V\n");
        let Command::Run(r) = &got[8] else { panic!() };
        assert_eq!(r.mounts[0].value, "type=cache,target=/data");
        assert_eq!(r.command, CommandLine::Shell("echo $V".into()));
        assert_eq!(got[9], Command::Cmd(CommandLine::Shell("echo $V".into())));
        let Command::Arg(a) = &got[10] else { panic!() };
        assert_eq!(a[0].default.as_ref().unwrap().value, "val");
        assert!(matches!(&got[11], Command::StopSignal(w) if w.value == "SIGTERM"));
        // Errors carry the word's position.
        let d = df("FROM x\nWORKDIR /a \\\n  ${NOPE:?must be set}\n");
        let e = d.stages[0].instructions[0]
            .expand(&d.expander(&NoEnv))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:2:9: failed to process `/a   ${NOPE:?must be set}`: NOPE: must be set"
        );
    }

    #[test]
    fn escape_directive_applies_to_expansion() {
        let d = df("# escape=`\nFROM x\nWORKDIR C:\\dir`$X\n");
        let w = d.stages[0].instructions[0]
            .expand(&d.expander(&NoEnv))
            .unwrap();
        assert!(matches!(w.command, Command::Workdir(w) if w.value == "C:\\dir$X"));
    }

    /// The shape of a Duckietown image recipe: meta args in FROM, labels, a multi-line RUN with a
    /// cache mount, a heredoc, and a second stage copying from the first.
    #[test]
    fn duckietown_style_dockerfile() {
        let text = r#"# syntax=docker/dockerfile:1.4
ARG ARCH=arm64v8
ARG DISTRO=ente
ARG BASE_TAG=${DISTRO}-${ARCH}
ARG DOCKER_REGISTRY=docker.io
FROM ${DOCKER_REGISTRY}/duckietown/dt-ros-commons:${BASE_TAG} AS base
ARG ARCH
ARG REPO_PATH="${CATKIN_WS_DIR}/src/dt-core"
LABEL org.duckietown.label.module.type="software" \
      org.duckietown.label.architecture="${ARCH}"
WORKDIR "${REPO_PATH}"
COPY ./dependencies-apt.txt "${REPO_PATH}/"
RUN --mount=type=cache,target=/var/cache/apt \
    dt-apt-install ${REPO_PATH}/dependencies-apt.txt && \
    # comments inside a continuation are dropped
    rm -rf /tmp/*
COPY <<-EOF /etc/motd
	Hello from ${ARCH}
	EOF
CMD ["bash", "-c", "dt-launcher-default"]

FROM base AS final
COPY --from=base --chown=duckie:duckie /code /code
"#;
        let d = df(text);
        assert_eq!(d.meta_args.len(), 4);
        assert_eq!(d.stages.len(), 2);
        let meta = env(&[
            ("ARCH", "arm32v7"),
            ("DISTRO", "ente"),
            ("BASE_TAG", "ente-arm32v7"),
            ("DOCKER_REGISTRY", "docker.io"),
        ]);
        let (base, _) = d.stages[0].expand_base(&d.expander(&meta)).unwrap();
        assert_eq!(base, "docker.io/duckietown/dt-ros-commons:ente-arm32v7");
        let ins = &d.stages[0].instructions;
        assert_eq!(ins.len(), 8);
        let Command::Run(r) = &ins[5].command else {
            panic!()
        };
        assert_eq!(
            r.command,
            CommandLine::Shell(
                "dt-apt-install ${REPO_PATH}/dependencies-apt.txt &&     rm -rf /tmp/*".into()
            )
        );
        assert_eq!((ins[5].span.start.line, ins[5].span.end_line), (13, 16));
        let e = env(&[("ARCH", "arm32v7"), ("REPO_PATH", "/code/src/dt-core")]);
        let Command::Copy(c) = ins[6].expand(&d.expander(&e)).unwrap().command else {
            panic!()
        };
        assert_eq!(c.inline[0].content, "Hello from arm32v7\n");
        assert_eq!((ins[6].span.start.line, ins[6].span.end_line), (17, 19));
        let Command::Workdir(w) = ins[3].expand(&d.expander(&e)).unwrap().command else {
            panic!()
        };
        assert_eq!(w.value, "/code/src/dt-core");
    }

    #[test]
    fn csv() {
        assert_eq!(csv_fields(r#"a=b,"c=d,e",f"#), ["a=b", "c=d,e", "f"]);
        assert_eq!(csv_join(&["a=b".into(), "c=d,e".into()]), r#"a=b,"c=d,e""#);
    }
}
