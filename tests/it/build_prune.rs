//! What builds keep of the store's layers (their unpacked snapshots, listings, cache records)
//! goes when `dts image rm` / `dts image prune` remove the layers, and not before.

use std::path::Path;

use crate::build::{busybox_context, can_run, dts, json, ok, p, write};

fn snapshot_layers(home: &Path) -> Vec<String> {
    let dir = home.join("build/snapshots/layers");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn removing_an_image_removes_the_layers_builds_unpacked_for_it() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (home, ctx) = (t.path().join("home"), t.path().join("ctx"));
    if !busybox_context(&ctx) {
        return;
    }
    write(
        &ctx,
        &[(
            "Dockerfile",
            "FROM scratch\nARG TARGETARCH\nCOPY busybox/${TARGETARCH}/busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\n\
             RUN echo made > /made\n",
        )],
    );
    let build = |tag: &str| {
        let args = [
            "devel",
            "build",
            "-C",
            p(&ctx),
            "-t",
            tag,
            "--arch",
            "arm64v8",
            "--json",
        ];
        json(&dts(&home, &args))
    };
    build("demo/prune:1");
    // COPY's layer (the first RUN's lower) and each RUN's (its upper, kept as the snapshot).
    let kept = snapshot_layers(&home);
    assert_eq!(kept.len(), 3, "{kept:?}");

    // Another name for the same image: removing one name removes nothing of it.
    ok(&dts(
        &home,
        &["image", "tag", "demo/prune:1", "demo/prune:2"],
    ));
    ok(&dts(&home, &["image", "rm", "demo/prune:1"]));
    assert_eq!(snapshot_layers(&home), kept);

    let out = dts(&home, &["image", "rm", "demo/prune:2"]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed 3 unpacked layer(s)"), "{err}");
    assert!(snapshot_layers(&home).is_empty());
    let views = std::fs::read_dir(home.join("build/views")).unwrap().count();
    assert_eq!(views, 0, "the layers' listings went too");

    // Built again: the cache records of removed layers are gone, so everything runs.
    let again = build("demo/prune:3");
    assert_eq!(again["steps_cached"].as_u64(), Some(0), "{again}");
    let pruned = json(&dts(&home, &["image", "prune", "--json"]));
    assert_eq!(pruned["blobs"].as_u64(), Some(0), "{pruned}");
    assert_eq!(pruned["build"]["snapshots"].as_u64(), Some(0), "{pruned}");
    assert_eq!(snapshot_layers(&home).len(), 3);
}

/// A build state prune cannot finish is a warning: the blobs are removed all the same, and
/// the command succeeds.
#[test]
fn build_state_that_cannot_be_pruned_is_a_warning_not_a_failure() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let layout = t.path().join("layout");
    crate::support::images::multi_arch_layout(&layout, "demo/warn:1");
    ok(&dts(&home, &["image", "load", "-i", p(&layout)]));
    std::fs::create_dir_all(home.join("build/snapshots")).unwrap();
    std::fs::write(home.join("build/snapshots/layers"), b"not a directory").unwrap();
    let out = dts(&home, &["image", "rm", "demo/warn:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning:") && err.contains("build/snapshots/layers"),
        "{err}"
    );
    let pruned = json(&dts(&home, &["image", "prune", "--json"]));
    assert_eq!(
        pruned["blobs"].as_u64(),
        Some(0),
        "rm removed them: {pruned}"
    );
    assert!(
        pruned["warning"]
            .as_str()
            .unwrap()
            .contains("build/snapshots/layers"),
        "{pruned}"
    );
    let ls = ok(&dts(&home, &["image", "ls", "--json"]));
    assert!(!ls.contains("demo/warn"), "{ls}");
}
