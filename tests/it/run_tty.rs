//! `dts duckiebot run -i/-t` against a virtual Duckiebot (as root), Docker's `run -it`: the
//! image shipped, the container started attached on an SSH channel of its own. Under a real
//! pseudo-terminal an interactive shell sees the window size and its change, Ctrl-C
//! interrupts a `sleep`, `exit 7` exits 7 and the terminal gets its settings back; without
//! `--rm` the exited container stays in `ps -a` with its code and its `logs` show what the
//! terminal showed, with `--rm` it is gone. `-i` alone is byte-exact (10 MB through `cat`) with
//! stdout and stderr apart; `-t` alone works without a terminal on the laptop, `-it` does not.

use crate::exec::{drive_a_shell, dts_with_input, noise, robot_with_the_box_image};
use crate::support::TestContext;

/// The container `name` as `ps -a --json` lists it, if it does.
fn listed(w: &TestContext, name: &str) -> Option<serde_json::Value> {
    let out = w.ok(&["duckiebot", "ps", &w.name, "-a", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    list.into_iter().find(|c| c["name"] == name)
}

#[test]
fn run_it_is_an_interactive_terminal_and_leaves_what_docker_leaves() {
    let Some(w) = robot_with_the_box_image() else {
        return;
    };
    let run = [
        "duckiebot",
        "run",
        &w.name,
        "-it",
        "--name",
        "kept",
        "exec/box:1",
        "sh",
    ];
    let status = drive_a_shell(&w, &run, &["echo shown-$((6*7))"]);
    assert_eq!(status.code(), Some(7));
    // Kept, exited with its code; its log is what the terminal showed.
    let kept = listed(&w, "kept").expect("`kept` is listed by ps -a");
    assert_eq!(kept["state"], "exited", "{kept}");
    assert_eq!(kept["exit_code"], 7, "{kept}");
    let logs = w.ok(&["duckiebot", "logs", &w.name, "kept"]);
    assert!(logs.contains("shown-42"), "{logs}");
    assert!(logs.contains("40 120"), "{logs}");

    // --rm: gone once `run` returns.
    let run = [
        "duckiebot",
        "run",
        &w.name,
        "-it",
        "--rm",
        "--name",
        "gone",
        "exec/box:1",
        "sh",
    ];
    let status = drive_a_shell(&w, &run, &[]);
    assert_eq!(status.code(), Some(7));
    assert!(listed(&w, "gone").is_none(), "--rm left `gone` behind");
}

#[test]
fn run_i_is_byte_exact_and_run_t_needs_no_terminal() {
    let Some(w) = robot_with_the_box_image() else {
        return;
    };
    let run = |args: &[&str], input: &[u8]| {
        let mut all = vec!["duckiebot", "run", w.name.as_str()];
        all.extend_from_slice(args);
        dts_with_input(&w, &all, input)
    };
    // 10 MB of binary through `run -i cat`, and back unchanged; stdin's end ends cat.
    let data = noise(10 << 20);
    let (code, out, err) = run(&["-i", "--rm", "exec/box:1", "cat"], &data);
    assert_eq!(code, Some(0), "{err}");
    assert!(out == data, "{} bytes back of {}", out.len(), data.len());

    // stdout and stderr apart, the process's code.
    let script = "read x; echo out-$x; echo err >&2; exit 5";
    let (code, out, err) = run(&["-i", "--rm", "exec/box:1", "sh", "-c", script], b"in\n");
    assert_eq!(code, Some(5), "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "out-in\n");
    assert!(err.contains("err\n"), "{err}");

    // -t alone: a terminal on the robot (stdout and stderr merge, with its line ends) though
    // the laptop has none, as Docker allows.
    let (code, out, err) = run(
        &[
            "-t",
            "--rm",
            "exec/box:1",
            "sh",
            "-c",
            "tty; echo both >&2; exit 3",
        ],
        b"",
    );
    assert_eq!(code, Some(3), "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("/dev/pts/") && out.contains("both\r\n"),
        "{out}"
    );

    // A command that cannot run exits as Docker's does, and --rm leaves nothing.
    let (code, _, err) = run(
        &[
            "-i",
            "--rm",
            "--name",
            "nocmd",
            "exec/box:1",
            "no-such-command",
        ],
        b"",
    );
    assert_eq!(code, Some(127), "{err}");
    assert!(err.contains("no-such-command"), "{err}");
    assert!(listed(&w, "nocmd").is_none());
}

#[test]
fn run_it_refuses_what_docker_refuses() {
    let Some(w) = robot_with_the_box_image() else {
        return;
    };
    let run = |args: &[&str]| {
        let mut all = vec!["duckiebot", "run", w.name.as_str()];
        all.extend_from_slice(args);
        dts_with_input(&w, &all, b"")
    };
    // -it with a pipe for stdin: Docker's message, bad input, nothing created.
    let (code, _, err) = run(&["-it", "--name", "notty", "exec/box:1", "sh"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the input device is not a TTY"), "{err}");
    assert!(listed(&w, "notty").is_none());
    // --privileged does not exist.
    let (code, _, err) = run(&["-it", "--privileged", "exec/box:1", "sh"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--privileged"), "{err}");
    // An image neither the laptop nor the robot has.
    let (code, _, err) = run(&["-i", "--name", "noimage", "no/such-image:1", "sh"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no/such-image"), "{err}");
    assert!(listed(&w, "noimage").is_none());
}
