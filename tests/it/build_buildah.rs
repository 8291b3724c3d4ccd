//! Differential test of `dts devel build` against buildah: the same Dockerfiles and contexts are
//! built for linux/arm64 by both, each result is exported as a docker-archive (`dts image save
//! --format docker`, `buildah push … docker-archive:`), and the two images are compared on
//! disk: the runtime config (Env, Cmd, Entrypoint, WorkingDir, User, Labels, ExposedPorts,
//! Volumes, StopSignal, Healthcheck, Shell, OnBuild, author, architecture/os/variant) and the
//! merged file tree (path, type, mode, uid:gid, content hash, symlink target, hardlink groups).
//!
//! Ignored everywhere, because they legitimately differ between builders: mtimes, `created`,
//! history, layer boundaries, `ArgsEscaped`, buildah's own `io.buildah.version` label and
//! config fields outside the list above (Hostname, container_config, …).
//!
//! The reference is Docker (BuildKit) semantics. Where buildah 1.28 itself departs from
//! Docker, the buildah side is adjusted to what Docker gives, for exactly that field, with a
//! comment saying why:
//! * every case: buildah leaves its RUN mount stubs in the layers (empty /dev /proc /sys /run
//!   directories; empty /etc/hosts, /etc/hostname, /etc/resolv.conf files, plus /etc when it
//!   only holds those); BuildKit's MountStubsCleaner removes them (`drop_run_stubs`);
//! * every case: buildah writes an unset Cmd/Entrypoint/OnBuild/Volumes as `[]`/`{}` where
//!   Docker writes null; the two mean the same, so empty and absent compare equal
//!   (`normalize_empty`);
//! * every case: buildah leaves WorkingDir empty on an image from scratch, Docker sets `/`;
//! * metadata: EXPOSE kept verbatim (`53/UDP`, `7000-7002/tcp`), a shell-form CMD that ignores
//!   SHELL (`docker_exposed_ports`, `docker_shell_form_cmd`);
//! * instructions buildah cannot build at all but which are no-ops or equivalents in Docker
//!   (an empty wildcard COPY, a FROM naming a stage through an ARG) are swapped for buildah
//!   only, by a `# buildah-instead: …` comment line before them (`for_buildah`);
//! * RUN --mount (`run_mounts_match_buildah_and_leave_nothing_in_layers`): buildah leaves the
//!   mount points it made for cache, bind, tmpfs and secret mounts in the image as empty
//!   directories and files, which BuildKit's stub cleaner removes (`drop_empty_dirs`); it
//!   binds the context without applying .dockerignore, and deletes what the image had under
//!   a cache mount's target, where BuildKit only hides it for the RUN; that case also checks, for both builders, that no layer holds any byte that went into a
//!   mount (cache files, bound context files, a rw bind's writes, tmpfs files, the secret);
//! * no heredocs: buildah 1.28 predates heredoc support (1.33), so the corpus has none (they
//!   are covered by tests/it/build.rs).
//!
//! `copy_dirs_and_hard_links_match_buildah` holds the cases where dts once departed from
//! Docker (created directories' mode and owner, hard links in COPY and ADD) and now agrees.
//!
//! Buildah builds with `--format docker`, as its OCI format drops HEALTHCHECK, SHELL and
//! ONBUILD, and with `--network none --pull=never`, so nothing leaves the machine. Each case
//! has its own vfs store and DTS_HOME in a temp dir. `BUILDAH_DIFF_DUMP=1` prints both images.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dts::oci::Digest;
use serde_json::Value;

const PLATFORM: &str = "linux/arm64";

/// A context file: path relative to the context root, content, mode.
type File = (&'static str, Vec<u8>, u32);

fn text(path: &'static str, content: &str) -> File {
    (path, content.as_bytes().to_vec(), 0o644)
}

/// One differential case: a context, the builds to run in order, and what to compare.
struct Case {
    name: &'static str,
    files: Vec<File>,
    /// Symlinks in the context: (path, target).
    symlinks: Vec<(&'static str, &'static str)>,
    /// Hard links in the context: (new path, existing file).
    hardlinks: Vec<(&'static str, &'static str)>,
    /// Copy the busybox fixtures into the context as `busybox/<TARGETARCH>/busybox`.
    busybox: bool,
    /// Builds in order; every one is compared. Later builds can name earlier ones with the
    /// build arg `PARENT`, which is set per builder to that builder's name for `parent`.
    builds: Vec<Build>,
}

struct Build {
    /// Local image name; both builders tag it so (buildah prefixes `localhost/`).
    tag: &'static str,
    dockerfile: &'static str,
    build_args: Vec<&'static str>,
    target: Option<&'static str>,
    /// A tag of an earlier build of this case, passed as `--build-arg PARENT=<ref>`.
    parent: Option<&'static str>,
    /// Adjusts buildah's result where buildah 1.28 departs from Docker for this build.
    buildah_departures: fn(&mut Image),
    /// Files whose content both images must have: (path, content).
    expect: Vec<(&'static str, &'static str)>,
    /// `--secret id=ID,src=FILE` for both builders: (id, content).
    secrets: Vec<(&'static str, &'static str)>,
    /// Bytes that no layer of either image may contain (what went into mounts).
    absent: Vec<&'static str>,
}

impl Build {
    fn new(tag: &'static str, dockerfile: &'static str) -> Build {
        Build {
            tag,
            dockerfile,
            build_args: Vec::new(),
            target: None,
            parent: None,
            buildah_departures: |_| {},
            expect: Vec::new(),
            secrets: Vec::new(),
            absent: Vec::new(),
        }
    }
}

/// What is compared of one image.
#[derive(Debug, Default, PartialEq)]
struct Image {
    config: BTreeMap<String, Value>,
    /// path → "dir MODE UID:GID" | "file MODE UID:GID HASH" | "symlink TARGET" | …
    tree: BTreeMap<String, String>,
    /// Sets of paths that are one file (hard links).
    hardlinks: BTreeSet<BTreeSet<String>>,
}

// ---------------------------------------------------------------------------------------------
// The corpus.

fn corpus_metadata() -> Case {
    Case {
        name: "metadata",
        files: vec![text("placeholder", "x\n")],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: false,
        builds: vec![Build {
            build_args: vec!["VERSION=2.0"],
            // buildah 1.28 keeps EXPOSE words verbatim and ignores SHELL for a shell-form CMD.
            buildah_departures: |img| {
                docker_exposed_ports(img);
                docker_shell_form_cmd(img);
            },
            ..Build::new(
                "diff/metadata",
                r#"ARG LABEL_VALUE=global-default
FROM scratch
ARG LABEL_VALUE
ARG VERSION=1.0
ARG UNUSED=ignored
LABEL org.duckietown.label.module.type="demo" version=${VERSION} description="a b  c" global=${LABEL_VALUE}
LABEL version=override-${VERSION}
MAINTAINER duckie@duckietown.org
ENV ROS_DISTRO=noetic \
    CATKIN_WS_DIR=/code/catkin_ws
ENV REPO_PATH=${CATKIN_WS_DIR}/src/demo ARG_IN_ENV=$VERSION
ENV LEGACY value with  spaces
ENV ROS_DISTRO=melodic SEEN_OLD=${ROS_DISTRO}
ENV DEFAULTED=${UNSET_VAR:-fallback} ALT=${ROS_DISTRO:+set} ESCAPED=\$ROS_DISTRO SQ='$ROS_DISTRO'
WORKDIR /code
WORKDIR sub/dir
WORKDIR $REPO_PATH
EXPOSE 8080 9090/udp 7000-7002 53/UDP
VOLUME ["/data", "/logs"]
VOLUME /cache /${ROS_DISTRO}
USER duckie:1000
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --timeout=5s --start-period=2s --retries=3 CMD cat /health
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["/entrypoint.sh", "${ROS_DISTRO}"]
CMD echo ${ROS_DISTRO}
ONBUILD RUN echo child
ONBUILD COPY . /app
"#,
            )
        }],
    }
}

fn corpus_stage_inheritance() -> Case {
    Case {
        name: "stage_inheritance",
        files: vec![text("placeholder", "x\n")],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: false,
        builds: vec![Build::new(
            "diff/inheritance",
            r#"FROM scratch AS base
ENV A=1 B=2
LABEL keep=base over=base
WORKDIR /base
USER 1000
CMD ["base-cmd"]
HEALTHCHECK --interval=10s CMD ["check"]
EXPOSE 80

FROM base AS child
# ENTRYPOINT clears the inherited CMD (CMD was not set in this stage).
ENTRYPOINT ["child-entry"]
ENV B=3 C=${A}${B}
LABEL over=child
EXPOSE 443
HEALTHCHECK NONE
WORKDIR rel
USER 0:0
"#,
        )],
    }
}

fn corpus_copy() -> Case {
    Case {
        name: "copy",
        files: vec![
            text("app/main.py", "print('hi')\n"),
            text("app/lib/util.py", "x = 1\n"),
            text("app/lib/deeper/mod.py", "y = 2\n"),
            ("app/bin/run.sh", b"#!/bin/sh\necho run\n".to_vec(), 0o755),
            ("app/private.key", b"secret\n".to_vec(), 0o600),
            text("app/skip.log", "noise\n"),
            text("config.yaml", "a: 1\n"),
            text("a1.txt", "one\n"),
            text("a2.txt", "two\n"),
            text("b.txt", "bee\n"),
            text("notes.md", "# notes\n"),
            text("dir with space/file name.txt", "spaces\n"),
            text(".dockerignore", "**/*.log\n"),
        ],
        symlinks: vec![("app/link.py", "main.py"), ("app/dangling", "nowhere")],
        hardlinks: vec![],
        busybox: false,
        builds: vec![Build::new(
            "diff/copy",
            r#"FROM scratch
ARG DEST=/argdest
ENV EDIR=/envdest
WORKDIR /code
COPY app /dst-noslash
COPY app /dst-slash/
COPY app/ /trailing-src
COPY config.yaml /etc/renamed.yaml
COPY config.yaml /conf/
COPY config.yaml relative.yaml
COPY config.yaml ./reldir/
COPY config.yaml ${DEST}/
COPY a1.txt $EDIR/sub/
COPY *.txt /wild/
COPY a?.txt b.txt /wild2/
COPY [a-b]*.txt /wild3/
# buildah 1.28 fails on a wildcard source that matches nothing; Docker copies nothing.
# buildah-instead:
COPY nomatch* /empty-wildcard/
COPY ["notes.md", "/json form/"]
COPY ["dir with space", "/spaced/"]
COPY --chown=1000:1000 app /owned/
COPY --chown=1000 config.yaml /owned-uid-only.yaml
COPY --chown=7:8 config.yaml /new/parents/chowned.yaml
COPY a1.txt /lib-700/
COPY --chmod=700 app/lib /lib-700/
COPY --chmod=600 config.yaml /conf/secret.yaml
COPY app/main.py /dst-slash/
COPY --chown=42:42 config.yaml /conf/other.yaml
COPY config.yaml /conf
COPY app/link.py /followed.py
COPY . /whole/
"#,
        )],
    }
}

fn corpus_run() -> Case {
    Case {
        name: "run",
        files: vec![
            text("tree/delete-me.txt", "bye\n"),
            text("tree/delete-dir/inner.txt", "bye too\n"),
            text("tree/chmod-me.txt", "mode\n"),
            text("tree/chown-me.txt", "owner\n"),
            text("tree/modify-me.txt", "before\n"),
            text("tree/replace/child.txt", "dir becomes file\n"),
            text("tree/keep.txt", "kept\n"),
        ],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: true,
        builds: vec![Build {
            build_args: vec!["GREETING=hi"],
            expect: vec![
                ("arch", "aarch64\n"),
                ("greeting", "hi world arm64\n"),
                ("tmp/uid", "1000\n"),
                ("tmp/duckie-uid", "1234\n"),
                ("tmp/duckie-gid", "2345\n"),
                ("work/here", "/work\n"),
                ("shell", "shell /bin/sh ce\n"),
            ],
            ..Build::new(
                "diff/run",
                r#"FROM scratch
ARG TARGETARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
COPY tree /tree/
ARG GREETING=hello
ENV WHO=world
RUN uname -m > /arch && echo "$GREETING $WHO $TARGETARCH" > /greeting
RUN mkdir -p /made/deep/er && echo x > /made/deep/er/file && chmod 700 /made/deep \
 && ln -s ../arch /made/link && echo same > /made/a && ln /made/a /made/hardlink \
 && mkfifo /made/fifo && chmod 4755 /made/a
RUN rm /tree/delete-me.txt && rm -r /tree/delete-dir && chmod 600 /tree/chmod-me.txt \
 && chown 7:8 /tree/chown-me.txt && echo changed > /tree/modify-me.txt
RUN rm -r /tree/replace && echo now-a-file > /tree/replace
RUN rm -r /made/deep && mkdir -p /made/deep && echo fresh > /made/deep/new
RUN rm /bin/uuencode /bin/zcat
RUN mkdir -m 1777 /tmp
WORKDIR /work
RUN pwd > here && touch relative-file
USER 1000:1000
RUN touch /tmp/by-user && id -u > /tmp/uid && mkdir /tmp/userdir
# WORKDIR creates its directories owned by the USER in force.
WORKDIR /userwork/sub
# Docker, like dts, cannot resolve `root` without /etc/passwd: numeric it is.
USER 0
RUN echo 'duckie:x:1234:2345::/home/duckie:/bin/sh' > /etc/passwd \
 && echo 'staff:x:2345:' > /etc/group
COPY --chown=duckie:staff tree/keep.txt /owned-by-name/
COPY --chown=duckie tree/keep.txt /owned-by-user-name.txt
USER duckie
RUN id -u > /tmp/duckie-uid && id -g > /tmp/duckie-gid && touch /tmp/duckie-file
USER 0:0
SHELL ["/bin/sh", "-ec"]
RUN echo "shell $0 $-" > /shell
RUN ["/bin/sh", "-c", "echo exec form $WHO > /exec"]
"#,
            )
        }],
    }
}

fn corpus_multistage() -> Case {
    Case {
        name: "multistage",
        files: vec![text("placeholder", "x\n")],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: true,
        builds: vec![Build {
            target: Some("final"),
            ..Build::new(
                "diff/multistage",
                r#"ARG BB_STAGE=bb
FROM scratch AS bb
ARG TARGETARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

# buildah 1.28 looks a FROM that names a stage through an ARG up as an image.
# buildah-instead: FROM bb AS builder
FROM ${BB_STAGE} AS builder
ENV FROM_BUILDER=1
RUN mkdir -p /out/sub && echo built > /out/sub/artifact && uname -m > /out/arch \
 && ln -s sub/artifact /out/link && chown -R 1000:1000 /out && chmod 750 /out/sub

FROM scratch AS final
# /copied exists before the directory copy: Docker keeps an existing directory's metadata.
# (A directory created by the copy is in corpus_copy_dirs_and_hard_links.)
COPY --from=builder /out/arch /copied/
COPY --from=builder /out /copied/
COPY --from=builder /out/sub/artifact /single
COPY --from=1 /out/arch /by-index-arch
COPY --from=builder --chown=5:6 /out /rechowned/
COPY --from=builder /out/link /via-link
LABEL stage=final

FROM final AS unused
RUN false
"#,
            )
        }],
    }
}

/// A tar with modes, owners and a symlink, and with `hardlink` a hard link too.
fn sample_tar(hardlink: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o750);
    dir.set_uid(1000);
    dir.set_gid(1000);
    dir.set_size(0);
    b.append_data(&mut dir, "pkg/", std::io::empty()).unwrap();
    for (name, data, mode, uid) in [
        ("pkg/file", &b"packed\n"[..], 0o640, 1000),
        ("pkg/tool", &b"#!/bin/sh\n"[..], 0o755, 0),
        ("top.txt", &b"top\n"[..], 0o644, 0),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        b.append_data(&mut h, name, data).unwrap();
    }
    let mut l = tar::Header::new_ustar();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    l.set_mode(0o777);
    b.append_link(&mut l, "pkg/link", "file").unwrap();
    if hardlink {
        let mut hl = tar::Header::new_ustar();
        hl.set_entry_type(tar::EntryType::Link);
        hl.set_size(0);
        hl.set_mode(0o640);
        hl.set_uid(1000);
        hl.set_gid(1000);
        b.append_link(&mut hl, "pkg/hard", "pkg/file").unwrap();
    }
    b.into_inner().unwrap()
}

fn corpus_add() -> Case {
    // The hard link case is in corpus_copy_dirs_and_hard_links.
    let tar = sample_tar(false);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let tgz = gz.finish().unwrap();
    Case {
        name: "add",
        files: vec![
            ("layer.tar", tar, 0o644),
            ("layer.tgz", tgz, 0o644),
            text("plain.txt", "plain\n"),
            text("notatar.tar", "just text\n"),
        ],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: false,
        builds: vec![Build::new(
            "diff/add",
            r#"FROM scratch
ADD layer.tar /opt/
ADD layer.tgz /opt-gz
ADD plain.txt /plain/
ADD notatar.tar /raw/
ADD --chown=3:3 plain.txt /owned-add.txt
ADD layer.tar plain.txt /multi/
"#,
        )],
    }
}

fn corpus_onbuild() -> Case {
    Case {
        name: "onbuild",
        files: vec![
            text("trigger.txt", "from the trigger\n"),
            text("child.txt", "child\n"),
        ],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: false,
        builds: vec![
            Build::new(
                "diff/onbuild-parent",
                r#"FROM scratch
LABEL parent=1
ONBUILD COPY trigger.txt /from-trigger/
ONBUILD ENV TRIGGERED=yes
ONBUILD LABEL child-of=parent
"#,
            ),
            Build {
                parent: Some("diff/onbuild-parent"),
                expect: vec![("from-trigger/trigger.txt", "from the trigger\n")],
                ..Build::new(
                    "diff/onbuild-child",
                    r#"ARG PARENT
FROM ${PARENT}
COPY child.txt /child.txt
ENV SEEN=${TRIGGERED}
"#,
                )
            },
            // Triggers of a stage run in the stages built FROM it too (BuildKit collects the
            // base stage's ONBUILD commands).
            Build {
                expect: vec![("stage-trigger/trigger.txt", "from the trigger\n")],
                ..Build::new(
                    "diff/onbuild-stage",
                    r#"FROM scratch AS parent
ONBUILD COPY trigger.txt /stage-trigger/
ONBUILD ENV STAGE_TRIGGERED=yes
LABEL parent=stage

FROM parent
COPY child.txt /child.txt
"#,
                )
            },
        ],
    }
}

/// Directories COPY creates and hard links: where dts departed from Docker until bc7f872
/// (--chmod or the source directory's mode/owner on created directories; hard links of the
/// context, of COPY --from and of an ADDed tar written as copies or dropped). buildah 1.28
/// agrees with Docker on all of it, so no adjustment is needed.
/// Issue 19's sources: local tars compressed with xz, bzip2 and zstd (extracted), symbolic
/// `--chmod`, `COPY --parents` and `--exclude` with `--from`. buildah 1.28 knows only octal
/// modes and neither `--parents` nor `--exclude`, so its copy of each such line is the
/// equivalent Docker spells longhand (`# buildah-instead:`; `\n` separates instructions).
fn corpus_sources() -> Case {
    let tar = sample_tar(false);
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        std::io::Write::write_all(&mut e, &tar).unwrap();
        e.finish().unwrap()
    };
    let bz2 = {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        std::io::Write::write_all(&mut e, &tar).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    Case {
        name: "sources",
        files: vec![
            ("layer.tar.xz", xz, 0o644),
            ("layer.tar.bz2", bz2, 0o644),
            ("layer.tar.zst", zst, 0o644),
            ("app/bin/tool", b"#!/bin/sh\n".to_vec(), 0o644),
            ("app/etc/conf", b"secret\n".to_vec(), 0o600),
            text("src/x/a.txt", "a\n"),
            text("src/x/skip.log", "log\n"),
            text("src/y/b.txt", "b\n"),
        ],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: false,
        builds: vec![Build {
            expect: vec![("xz/top.txt", "top\n"), ("par/src/y/b.txt", "b\n")],
            ..Build::new(
                "diff/sources",
                r#"FROM scratch AS files
COPY src /src/
COPY app /app/

FROM scratch
ADD layer.tar.xz /xz/
ADD layer.tar.bz2 /bz2/
ADD layer.tar.zst /zst/
# buildah-instead: COPY --chmod=755 app/bin/tool /sym/tool
COPY --chmod=u=rwx,go=rx app/bin/tool /sym/tool
# buildah-instead: COPY --chmod=755 app/bin/tool /plusx/
COPY --chmod=+x app/bin/tool /plusx/
# buildah-instead: COPY --chmod=640 app/etc/conf /gread/
COPY --chmod=g+r app/etc/conf /gread/
# buildah-instead: COPY --chmod=600 app/etc/conf /noexec/
COPY --chmod=a+X,u+w app/etc/conf /noexec/
# buildah-instead: COPY src/x/a.txt /par/src/x/\nCOPY src/y/b.txt /par/src/y/
COPY --parents src/x/a.txt src/y/b.txt /par/
# buildah-instead: COPY src/x/a.txt /pivot/x/
COPY --parents ./src/./x/a.txt /pivot/
# buildah-instead: COPY --from=files /src/y/b.txt /fromp/src/y/
COPY --from=files --parents /src/y/b.txt /fromp/
# buildah-instead: COPY --from=files /src/x/a.txt /ex/
COPY --from=files --exclude=*.log /src/x /ex/
# buildah-instead: COPY src/x/a.txt /ctxex/
COPY --exclude=*.log src/x /ctxex/
"#,
            )
        }],
    }
}

/// ADD of a git repository (served by `git daemon` on loopback): buildah's copy adds the same
/// files from the context, as Docker would lay them out (modes as git records them, root).
fn corpus_git(url: &'static str) -> Case {
    Case {
        name: "git",
        files: vec![
            ("gitcopy/tool", b"#!/bin/sh\necho tool\n".to_vec(), 0o755),
            text("gitcopy/readme", "version 1\n"),
        ],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: false,
        builds: vec![Build {
            build_args: vec![url],
            expect: vec![("g/readme", "version 1\n")],
            ..Build::new(
                "diff/git",
                r#"FROM scratch
ARG REPO
# buildah-instead: COPY gitcopy /g/
ADD ${REPO}#v1:sub /g/
"#,
            )
        }],
    }
}

fn corpus_copy_dirs_and_hard_links() -> Case {
    Case {
        name: "copy_dirs_and_hard_links",
        files: vec![
            ("layer.tar", sample_tar(true), 0o644),
            text("config.yaml", "a: 1\n"),
            text("app/lib/util.py", "x = 1\n"),
            text("app/lib/deeper/mod.py", "y = 2\n"),
            ("private-dir/", Vec::new(), 0o700),
            text("private-dir/inside.txt", "in\n"),
        ],
        symlinks: vec![],
        hardlinks: vec![("app/lib/same-as-util.py", "app/lib/util.py")],
        busybox: true,
        builds: vec![Build {
            ..Build::new(
                "diff/copy-dirs-links",
                r#"FROM scratch AS builder
ARG TARGETARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /out/sub && echo built > /out/sub/artifact && chown -R 1000:1000 /out \
 && chmod 750 /out/sub

FROM scratch
# Docker: the parent directories COPY creates are 0755 (fsutil MkdirAll), --chmod or not.
COPY --chmod=600 config.yaml /secret/config.yaml
# Docker: the destination directory of a directory source is made by MkdirAll (0755, owned by
# --chown or root) before the copy, which then leaves its metadata alone: neither --chmod
# nor the source directory's mode and owner apply to it, only to what is inside.
COPY --chmod=700 app/lib /lib-700/
COPY --chmod=700 app/lib /lib-700-noslash
COPY private-dir /pd/
COPY private-dir /pd-noslash
COPY --from=builder /out /copied/
COPY --from=builder /out/sub /sub-contents
# Docker: files of one inode in one COPY stay hard links (fsutil's copier links them).
COPY app /hl/
# Docker: a TypeLink entry of an ADDed local tar is extracted as a hard link.
ADD layer.tar /opt/
"#,
            )
        }],
    }
}

// ---------------------------------------------------------------------------------------------
// The tests: one per case, so they run in parallel.

#[test]
fn metadata_instructions_match_buildah() {
    run_case(corpus_metadata());
}

#[test]
fn stage_inheritance_matches_buildah() {
    run_case(corpus_stage_inheritance());
}

#[test]
fn copy_rules_match_buildah() {
    run_case(corpus_copy());
}

#[test]
fn run_steps_match_buildah() {
    run_case(corpus_run());
}

#[test]
fn multistage_copy_from_matches_buildah() {
    run_case(corpus_multistage());
}

#[test]
fn add_of_local_tars_matches_buildah() {
    run_case(corpus_add());
}

#[test]
fn onbuild_triggers_match_buildah() {
    run_case(corpus_onbuild());
}

#[test]
fn compressed_tars_symbolic_modes_parents_and_excludes_match_buildah() {
    run_case(corpus_sources());
}

#[test]
fn add_of_a_git_repository_matches_buildah() {
    if !support::require_cmd("git") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    crate::build_sources::sample_repo(t.path());
    let daemon = crate::build_sources::GitDaemon::start(t.path());
    let arg: &'static str = Box::leak(format!("REPO={}", daemon.url("repo.git")).into_boxed_str());
    run_case(corpus_git(arg));
}

#[test]
fn run_mounts_match_buildah_and_leave_nothing_in_layers() {
    run_case(corpus_run_mounts());
}

#[test]
fn copy_dirs_and_hard_links_match_buildah() {
    run_case(corpus_copy_dirs_and_hard_links());
}

fn corpus_run_mounts() -> Case {
    Case {
        name: "run_mounts",
        files: vec![
            text("data/bound.txt", "BOUND-BYTES-5678\n"),
            text("data/ignored.log", "IGNORED-BYTES\n"),
            text(".dockerignore", "**/*.log\n"),
        ],
        symlinks: vec![],
        hardlinks: vec![],
        busybox: true,
        builds: vec![Build {
            secrets: vec![("token", "s3cr3t-TOKEN-value\n")],
            absent: vec![
                "CACHE-BYTES-1234",
                "CACHE-OVER",
                "BOUND-BYTES-5678",
                "SCRIBBLE",
                "TMPFS-BYTES",
                "s3cr3t-TOKEN-value",
            ],
            expect: vec![
                ("cache-listing", "blob\n"),
                ("before-seen", ""),
                ("var/cache/existing/before", "kept\n"),
                ("bound-len", "17\n"),
                ("ignored-seen", "no\n"),
                ("seed-copy", "seeded\n"),
                ("seed-after", "no\n"),
                ("tmpfs-len", "12\n"),
                ("secret-len", "19\n"),
                ("secret-mode", "400 0:0\n"),
                ("secret2-mode", "440 0:0\n"),
            ],
            buildah_departures: |img| {
                // buildah 1.28 binds the context as it is on disk; BuildKit's context is the
                // .dockerignore'd one, so the ignored file is not there.
                let no = format!("file 644 0:0 {}", Digest::of(b"no\n").short());
                img.tree.insert("ignored-seen".into(), no);
                // buildah 1.28 deletes what the image had under a cache mount's target;
                // BuildKit's mount only hides it for the RUN, and the image keeps it.
                img.tree
                    .entry("var/cache/existing".into())
                    .or_insert_with(|| "dir 755 0:0".into());
                let kept = format!("file 644 0:0 {}", Digest::of(b"kept\n").short());
                img.tree
                    .entry("var/cache/existing/before".into())
                    .or_insert(kept);
                // buildah 1.28 leaves the mount points it made in the image; BuildKit's
                // MountStubsCleaner removes them, as dts never makes them in the layer.
                drop_empty_dirs(
                    img,
                    &[
                        "var/cache/pkgs",
                        "mnt/ctx",
                        "mnt/seed",
                        "mnt",
                        "scratch",
                        "run/secrets/token",
                        "run/secrets",
                        "run",
                        "etc/app/token.txt",
                        "etc/app",
                        "etc",
                    ],
                )
            },
            ..Build::new(
                "diff/run-mounts",
                r#"FROM scratch AS tools
ARG TARGETARCH
COPY busybox/${TARGETARCH}/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
RUN mkdir -p /opt/seed && echo seeded > /opt/seed/file

FROM tools
RUN mkdir -p /var/cache/existing && echo kept > /var/cache/existing/before
RUN --mount=type=cache,target=/var/cache/pkgs,id=pkgs \
    echo CACHE-BYTES-1234 > /var/cache/pkgs/blob && ls /var/cache/pkgs > /cache-listing
RUN --mount=type=cache,target=/var/cache/existing,sharing=locked \
    echo CACHE-OVER > /var/cache/existing/new; cat /var/cache/existing/before > /before-seen 2>/dev/null; true
RUN --mount=type=bind,source=data,target=/mnt/ctx \
    wc -c < /mnt/ctx/bound.txt > /bound-len \
 && if [ -e /mnt/ctx/ignored.log ]; then echo yes; else echo no; fi > /ignored-seen
RUN --mount=type=bind,from=tools,source=/opt/seed,target=/mnt/seed,rw \
    echo SCRIBBLE > /mnt/seed/scribble && cat /mnt/seed/file > /seed-copy
RUN if [ -e /opt/seed/scribble ]; then echo yes; else echo no; fi > /seed-after
RUN --mount=type=tmpfs,target=/scratch echo TMPFS-BYTES > /scratch/f && wc -c < /scratch/f > /tmpfs-len
RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /secret-len \
 && stat -c '%a %u:%g' /run/secrets/token > /secret-mode
RUN --mount=type=secret,id=token,target=/etc/app/token.txt,mode=0440 \
    stat -c '%a %u:%g' /etc/app/token.txt > /secret2-mode
"#,
            )
        }],
    }
}

/// Removes the given paths where they are empty directories (deepest listed first).
fn drop_empty_dirs(image: &mut Image, dirs: &[&str]) {
    for dir in dirs {
        let prefix = format!("{dir}/");
        let has_children = image.tree.keys().any(|k| k.starts_with(&prefix));
        let empty_file = Digest::of(b"").short().to_string();
        let stub = image.tree.get(*dir).is_some_and(|v| {
            v.starts_with("dir ") || (v.starts_with("file ") && v.ends_with(&empty_file))
        });
        if !has_children && stub {
            image.tree.remove(*dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Harness.

fn fixtures_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("DTS_FIXTURES").unwrap_or_else(|_| "/var/cache/dts-fixtures".into()),
    )
}

fn can_run(case: &Case) -> bool {
    if !support::require_root("buildah and dts RUN need root here (vfs storage, runc, overlayfs)")
        || !support::require_cmd("buildah")
        || !support::require_cmd("runc")
    {
        return false;
    }
    if case.busybox {
        if !Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
            support::skip("QEMU is not registered in binfmt_misc (scripts/test registers it)");
            return false;
        }
        let bb = fixtures_dir().join("busybox/arm64/busybox");
        if !bb.is_file() {
            support::skip(&format!(
                "no busybox fixture at {} (run scripts/fixtures)",
                bb.display()
            ));
            return false;
        }
    }
    true
}

fn write_context(case: &Case, ctx: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(ctx).unwrap();
    for (name, data, mode) in &case.files {
        let path = ctx.join(name);
        if name.ends_with('/') {
            std::fs::create_dir_all(&path).unwrap();
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    for (name, target) in &case.symlinks {
        std::os::unix::fs::symlink(target, ctx.join(name)).unwrap();
    }
    for (name, existing) in &case.hardlinks {
        std::fs::hard_link(ctx.join(existing), ctx.join(name)).unwrap();
    }
    if case.busybox {
        // Only arm64 is built here; the others keep the context small.
        let dst = ctx.join("busybox/arm64");
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(
            fixtures_dir().join("busybox/arm64/busybox"),
            dst.join("busybox"),
        )
        .unwrap();
    }
    // Directories are created 0755 whatever the umask, so both builders see the same context.
    // A `files` entry ending in `/` is a directory with that mode.
    for dir in walk_dirs(ctx) {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (name, _, mode) in case.files.iter().filter(|f| f.0.ends_with('/')) {
        std::fs::set_permissions(ctx.join(name), std::fs::Permissions::from_mode(*mode)).unwrap();
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_dirs(&e.path()));
        }
    }
    out
}

#[track_caller]
fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_case(case: Case) {
    if !can_run(&case) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write_context(&case, &ctx);
    let home = t.path().join("dts-home");
    let bh = Buildah::new(t.path());
    let mut report = String::new();
    for (i, build) in case.builds.iter().enumerate() {
        let dockerfile = t.path().join(format!("Dockerfile.{i}"));
        std::fs::write(&dockerfile, build.dockerfile).unwrap();
        let bh_dockerfile = t.path().join(format!("Dockerfile.{i}.buildah"));
        std::fs::write(&bh_dockerfile, for_buildah(build.dockerfile)).unwrap();

        let secrets: Vec<String> = build
            .secrets
            .iter()
            .map(|(id, content)| {
                let file = t.path().join(format!("secret-{id}"));
                std::fs::write(&file, content).unwrap();
                format!("id={id},src={}", file.display())
            })
            .collect();
        let dts_archive = t.path().join(format!("dts-{i}.tar"));
        dts_build(&home, &ctx, &dockerfile, build, &secrets, &dts_archive);
        let ours = read_image(&dts_archive);

        let bh_archive = t.path().join(format!("buildah-{i}.tar"));
        bh.build(&ctx, &bh_dockerfile, build, &secrets, &bh_archive);
        let mut theirs = read_image(&bh_archive);
        drop_run_stubs(&mut theirs);
        theirs
            .config
            .get_mut("Labels")
            .and_then(Value::as_object_mut)
            .map(|l| l.remove("io.buildah.version"));
        normalize_empty(&mut theirs.config);
        // buildah leaves WorkingDir empty on an image from scratch; Docker sets "/"
        // (BuildKit's emptyImage). Every image of the corpus starts from scratch.
        theirs.config.entry("WorkingDir".into()).and_modify(|w| {
            if w.is_null() {
                *w = "/".into();
            }
        });
        (build.buildah_departures)(&mut theirs);

        if std::env::var_os("BUILDAH_DIFF_DUMP").is_some() {
            eprintln!("DTS {:#?}\nBUILDAH {:#?}", ours, theirs);
        }
        let mut diff = compare(&ours, &theirs);
        for (who, archive) in [("dts", &dts_archive), ("buildah", &bh_archive)] {
            for (n, layer) in layer_tars(archive).iter().enumerate() {
                for needle in &build.absent {
                    if layer.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        diff.push_str(&format!("{who}: layer {n} holds {needle:?}\n"));
                    }
                }
            }
        }
        for (path, content) in &build.expect {
            let want = Digest::of(content.as_bytes()).short().to_string();
            for (who, image) in [("dts", &ours), ("buildah", &theirs)] {
                let got = image.tree.get(*path).map_or("(absent)", String::as_str);
                if !got.starts_with("file ") || !got.ends_with(&want) {
                    diff.push_str(&format!("{who}: /{path} is {got}, not {content:?}\n"));
                }
            }
        }
        if !diff.is_empty() {
            report.push_str(&format!(
                "\n== {} / {} (left: dts, right: buildah)\n{diff}",
                case.name, build.tag
            ));
        }
    }
    assert!(report.is_empty(), "dts and buildah differ:{report}");
}

/// Marks an instruction buildah 1.28 cannot build although Docker can: the comment line
/// `# buildah-instead: <replacement>` makes buildah's copy of the Dockerfile use the
/// replacement (nothing, when empty) for the next line, `\n` separating instructions. The
/// replacement must mean the same in Docker, so the two results must still match.
const BUILDAH_INSTEAD: &str = "# buildah-instead:";

fn for_buildah(dockerfile: &str) -> String {
    let mut out = String::new();
    let mut instead: Option<String> = None;
    for line in dockerfile.lines() {
        // `\n` in a replacement separates instructions (one line of Docker's can take two).
        let line = match instead.take() {
            Some(replacement) => replacement.replace("\\n", "\n"),
            None => line.to_string(),
        };
        if let Some(replacement) = line.strip_prefix(BUILDAH_INSTEAD) {
            instead = Some(replacement.trim().to_string());
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn dts_build(
    home: &Path,
    ctx: &Path,
    dockerfile: &Path,
    build: &Build,
    secrets: &[String],
    archive: &Path,
) {
    let dts = env!("CARGO_BIN_EXE_dts");
    let mut args: Vec<String> = vec![
        "devel".into(),
        "build".into(),
        "-C".into(),
        ctx.display().to_string(),
        "-f".into(),
        dockerfile.display().to_string(),
        "-t".into(),
        build.tag.into(),
        "--platform".into(),
        PLATFORM.into(),
    ];
    for a in &build.build_args {
        args.extend(["--build-arg".into(), a.to_string()]);
    }
    if let Some(parent) = build.parent {
        args.extend(["--build-arg".into(), format!("PARENT={parent}")]);
    }
    if let Some(target) = build.target {
        args.extend(["--target".into(), target.into()]);
    }
    for s in secrets {
        args.extend(["--secret".into(), s.clone()]);
    }
    let run = |args: &[String]| {
        Command::new(dts)
            .args(args)
            .env("DTS_HOME", home)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .expect("run dts")
    };
    ok("dts devel build", run(&args));
    let save: Vec<String> = [
        "image",
        "save",
        build.tag,
        "--format",
        "docker",
        "--platform",
        PLATFORM,
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([archive.display().to_string()])
    .collect();
    ok("dts image save", run(&save));
}

/// buildah with a private vfs store under the test's temp dir.
struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn new(dir: &Path) -> Buildah {
        Buildah {
            root: dir.join("buildah-root"),
            runroot: dir.join("buildah-runroot"),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--storage-driver")
            .arg("vfs")
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .env_remove("BUILDAH_FORMAT")
            .env_remove("BUILDAH_LAYERS")
            .env_remove("BUILDAH_ISOLATION")
            .env_remove("SOURCE_DATE_EPOCH")
            // Its cache mounts live under TMPDIR: one test's, not the machine's.
            .env("TMPDIR", self.root.parent().unwrap());
        c
    }

    fn build(
        &self,
        ctx: &Path,
        dockerfile: &Path,
        build: &Build,
        secrets: &[String],
        archive: &Path,
    ) {
        let mut c = self.cmd();
        c.args(["bud", "--runtime", "runc", "--format", "docker"])
            .args(["--network", "none", "--pull=never", "--platform", PLATFORM])
            .arg("-f")
            .arg(dockerfile)
            .args(["-t", build.tag]);
        for a in &build.build_args {
            c.args(["--build-arg", a]);
        }
        if let Some(parent) = build.parent {
            c.arg("--build-arg")
                .arg(format!("PARENT=localhost/{parent}:latest"));
        }
        if let Some(target) = build.target {
            c.args(["--target", target]);
        }
        for s in secrets {
            c.args(["--secret", s]);
        }
        c.arg(ctx);
        ok("buildah bud", c.output().expect("run buildah"));
        let mut push = self.cmd();
        push.args(["push", "--quiet", build.tag])
            .arg(format!("docker-archive:{}", archive.display()));
        ok("buildah push", push.output().expect("run buildah"));
    }
}

/// Reads a docker-archive (`manifest.json`, a config and layer tars) into an [`Image`].
fn read_image(archive: &Path) -> Image {
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(path.trim_start_matches("./").to_string(), data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config: Value =
        serde_json::from_slice(&files[manifest[0]["Config"].as_str().unwrap()]).unwrap();
    let mut image = Image::default();
    for key in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "Labels",
        "ExposedPorts",
        "Volumes",
        "StopSignal",
        "Healthcheck",
        "Shell",
        "OnBuild",
    ] {
        image
            .config
            .insert(key.into(), config["config"][key].clone());
    }
    for key in ["architecture", "os", "variant", "author"] {
        image.config.insert(key.into(), config[key].clone());
    }
    let mut merger = Merger::default();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let data = &files[layer.as_str().unwrap()];
        merger.apply(&decompress(data));
    }
    image.hardlinks = merger.hardlink_groups();
    image.tree = merger.tree;
    image
}

/// The layers of a docker-archive, uncompressed, in order.
fn layer_tars(archive: &Path) -> Vec<Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(path.trim_start_matches("./").to_string(), data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| decompress(&files[l.as_str().unwrap()]))
        .collect()
}

fn decompress(data: &[u8]) -> Vec<u8> {
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(data).unwrap()
    } else {
        data.to_vec()
    }
}

/// Applies layers in order with OCI whiteout semantics.
#[derive(Default)]
struct Merger {
    tree: BTreeMap<String, String>,
    /// hard link path → the path it links to.
    links: BTreeMap<String, String>,
}

impl Merger {
    fn remove(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.tree
            .retain(|k, _| k != path && !k.starts_with(&prefix));
        self.links
            .retain(|k, v| k != path && !k.starts_with(&prefix) && v != path);
    }

    fn apply(&mut self, layer: &[u8]) {
        struct Entry {
            path: String,
            kind: tar::EntryType,
            meta: String,
            link: Option<String>,
            data: Vec<u8>,
        }
        let mut entries = Vec::new();
        for e in tar::Archive::new(layer).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let path = path
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string();
            if path.is_empty() || path == "." {
                continue;
            }
            let h = e.header();
            let meta = format!(
                "{:o} {}:{}",
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap()
            );
            let kind = h.entry_type();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.display().to_string().trim_start_matches("./").to_string());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            entries.push(Entry {
                path,
                kind,
                meta,
                link,
                data,
            });
        }
        // Whiteouts name entries of lower layers only: apply them before this layer's entries.
        for e in &entries {
            let (dir, name) = match e.path.rsplit_once('/') {
                Some((d, n)) => (d.to_string(), n),
                None => (String::new(), e.path.as_str()),
            };
            if name == ".wh..wh..opq" {
                // An opaque directory hides everything below it in lower layers.
                let prefix = format!("{dir}/");
                self.tree
                    .retain(|k, _| !dir.is_empty() && !k.starts_with(&prefix));
                self.links
                    .retain(|k, _| !dir.is_empty() && !k.starts_with(&prefix));
            } else if let Some(victim) = name.strip_prefix(".wh.") {
                let victim = if dir.is_empty() {
                    victim.to_string()
                } else {
                    format!("{dir}/{victim}")
                };
                self.remove(&victim);
            }
        }
        for e in entries {
            let name = e.path.rsplit('/').next().unwrap();
            if name.starts_with(".wh.") {
                continue;
            }
            // A non-directory replaces a whole directory; a directory over a directory only
            // updates its metadata.
            let is_dir = e.kind == tar::EntryType::Directory;
            let was_dir = self
                .tree
                .get(&e.path)
                .is_some_and(|v| v.starts_with("dir "));
            if !(is_dir && was_dir) {
                self.remove(&e.path);
            }
            let value = match e.kind {
                tar::EntryType::Directory => format!("dir {}", e.meta),
                tar::EntryType::Symlink => format!("symlink {}", e.link.unwrap()),
                tar::EntryType::Link => {
                    let target = e.link.unwrap().trim_start_matches('/').to_string();
                    let v = self
                        .tree
                        .get(&target)
                        .cloned()
                        .unwrap_or_else(|| format!("hardlink to missing {target}"));
                    self.links.insert(e.path.clone(), target);
                    v
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    format!("file {} {}", e.meta, Digest::of(&e.data).short())
                }
                tar::EntryType::Fifo => format!("fifo {}", e.meta),
                other => format!("{other:?} {}", e.meta),
            };
            self.tree.insert(e.path, value);
        }
    }

    fn hardlink_groups(&self) -> BTreeSet<BTreeSet<String>> {
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (link, target) in &self.links {
            let mut root = target.clone();
            while let Some(next) = self.links.get(&root) {
                root = next.clone();
            }
            let g = groups.entry(root.clone()).or_default();
            g.insert(root);
            g.insert(link.clone());
        }
        groups.into_values().collect()
    }
}

/// Buildah leaves the mount points it creates for RUN in the image: empty directories for
/// /dev, /proc, /sys and /run, empty files for /etc/hosts, /etc/hostname and /etc/resolv.conf
/// (and /etc itself when it held nothing else). BuildKit's MountStubsCleaner deletes such
/// stubs after every RUN, so Docker's image has none of them; drop them where they are empty.
/// (Corpus cases never create these paths themselves.)
fn drop_run_stubs(image: &mut Image) {
    for file in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        let empty = Digest::of(b"").short().to_string();
        if image
            .tree
            .get(file)
            .is_some_and(|v| v.starts_with("file ") && v.ends_with(&empty))
        {
            image.tree.remove(file);
        }
    }
    for dir in ["dev", "proc", "sys", "run", "etc"] {
        let prefix = format!("{dir}/");
        let has_children = image.tree.keys().any(|k| k.starts_with(&prefix));
        if !has_children && image.tree.get(dir).is_some_and(|v| v.starts_with("dir ")) {
            image.tree.remove(dir);
        }
    }
}

/// buildah 1.28 stores EXPOSE words as written (`53/UDP`, `7000-7002/tcp`); Docker lower-cases
/// the protocol and expands a range into one key per port (nat.ParsePortSpecs).
fn docker_exposed_ports(image: &mut Image) {
    let Some(Value::Object(ports)) = image.config.get("ExposedPorts") else {
        return;
    };
    let mut docker = serde_json::Map::new();
    for key in ports.keys() {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let proto = proto.to_lowercase();
        let (lo, hi) = port.split_once('-').unwrap_or((port, port));
        for p in lo.parse::<u16>().unwrap()..=hi.parse::<u16>().unwrap() {
            docker.insert(format!("{p}/{proto}"), serde_json::json!({}));
        }
    }
    image
        .config
        .insert("ExposedPorts".into(), Value::Object(docker));
}

/// buildah 1.28 wraps a shell-form CMD in `/bin/sh -c` even after SHELL; Docker uses the SHELL
/// in force (dispatchCmd → withShell).
fn docker_shell_form_cmd(image: &mut Image) {
    let shell = image.config.get("Shell").cloned();
    if let (Some(Value::Array(shell)), Some(Value::Array(cmd))) =
        (shell, image.config.get_mut("Cmd"))
        && cmd.len() == 3
        && cmd[..2] == [Value::from("/bin/sh"), Value::from("-c")]
    {
        let script = cmd[2].clone();
        *cmd = shell;
        cmd.push(script);
    }
}

/// Empty lists and maps, empty strings and null all mean "unset" in an image config; buildah
/// writes `[]`/`{}` for fields Docker leaves null.
fn normalize_empty(config: &mut BTreeMap<String, Value>) {
    for v in config.values_mut() {
        let empty = match v {
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::String(s) => s.is_empty(),
            _ => false,
        };
        if empty {
            *v = Value::Null;
        }
    }
}

/// A readable list of every difference; empty when the images match.
fn compare(ours: &Image, theirs: &Image) -> String {
    let mut ours_config = ours.config.clone();
    normalize_empty(&mut ours_config);
    let mut out = String::new();
    for key in ours_config
        .keys()
        .chain(theirs.config.keys())
        .collect::<BTreeSet<_>>()
    {
        let a = ours_config.get(key).unwrap_or(&Value::Null);
        let b = theirs.config.get(key).unwrap_or(&Value::Null);
        if a != b {
            out.push_str(&format!("config {key}: {a} != {b}\n"));
        }
    }
    for path in ours
        .tree
        .keys()
        .chain(theirs.tree.keys())
        .collect::<BTreeSet<_>>()
    {
        match (ours.tree.get(path), theirs.tree.get(path)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => out.push_str(&format!(
                "/{path}: {} != {}\n",
                a.map_or("(absent)", String::as_str),
                b.map_or("(absent)", String::as_str)
            )),
        }
    }
    if ours.hardlinks != theirs.hardlinks {
        out.push_str(&format!(
            "hard links: {:?} != {:?}\n",
            ours.hardlinks, theirs.hardlinks
        ));
    }
    out
}
