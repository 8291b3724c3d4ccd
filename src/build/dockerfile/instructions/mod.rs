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

mod expand;
mod files;
mod flags;
mod meta;
pub mod mount;
mod run;
#[cfg(test)]
mod tests;

pub use expand::Expander;
use flags::{FlagKind, Flags};

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
    let upper = node.keyword.to_ascii_uppercase();
    let name = upper.as_str();
    let start = node.span.start;
    Ok(match name {
        "ENV" | "LABEL" => meta::parse_key_values(name, node)?,
        "MAINTAINER" => Command::Maintainer(exactly_one(name, node)?),
        "WORKDIR" => Command::Workdir(exactly_one(name, node)?),
        "USER" => Command::User(exactly_one(name, node)?),
        "STOPSIGNAL" => Command::StopSignal(exactly_one(name, node)?),
        "ARG" => meta::parse_arg(name, node)?,
        "COPY" => files::parse_copy(name, node)?,
        "ADD" => files::parse_add(name, node)?,
        "ONBUILD" => parse_onbuild(name, node)?,
        "RUN" => run::parse_run(name, node)?,
        "CMD" => {
            no_flags(name, node)?;
            Command::Cmd(run::command_line(name, node)?)
        }
        "ENTRYPOINT" => {
            no_flags(name, node)?;
            Command::Entrypoint(run::command_line(name, node)?)
        }
        "SHELL" => meta::parse_shell(name, node)?,
        "HEALTHCHECK" => Command::Healthcheck(run::parse_healthcheck(node)?),
        "EXPOSE" => {
            no_flags(name, node)?;
            let args = words(node);
            if args.is_empty() {
                return Err(at_least_one(name, node));
            }
            Command::Expose(args)
        }
        "VOLUME" => meta::parse_volume(name, node)?,
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

/// ONBUILD: the trigger is itself an instruction (not ONBUILD, MAINTAINER or FROM).
fn parse_onbuild(name: &str, node: &Node) -> Fallible<Command> {
    no_flags(name, node)?;
    let Args::Sub(child) = &node.args else {
        return Err(at_least_one(name, node));
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
    Ok(Command::OnBuild(OnBuild {
        expression,
        trigger: Box::new(Instruction {
            span: child.span,
            source: child.original.trim().to_string(),
            command,
        }),
    }))
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
