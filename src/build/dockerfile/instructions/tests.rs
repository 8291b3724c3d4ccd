//! The typed instructions checked against BuildKit's behaviour, instruction by instruction.

use std::collections::BTreeMap;

use super::run::{csv_fields, csv_join};
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
        assert!(err(&format!("FROM x\n{cmd} arg1\n")).contains("requires at least two arguments"));
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
    let Command::Run(r) =
        one("RUN --mount=type=cache,target=/root/.cache --network=none --security=insecure make")
    else {
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
    let Command::Healthcheck(Healthcheck::Check(h)) =
        one("HEALTHCHECK --interval=5s --timeout=3s --retries=3 \\\n  CMD /app/check.sh --quiet")
    else {
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
