//! The steps that put the agent and its configuration on the robot: runc, the `dt-agent`
//! binary, udev rules, `robot.yaml`, `/data/config`, the host name, the systemd unit and the
//! running service, preloaded images, and last the marker recording a finished provision. Each
//! is a `check_*` (looks, changes nothing) and an `apply_*` (see [`super::steps`]).

use anyhow::{Context, Result, bail};

use super::remote::{HOSTS_AWK, preload, wait_for_daemon};
use super::steps::{Cx, Plan};
use super::{
    AGENT_PATH, MARKER_PATH, Marker, RobotYamlMerge, UDEV_RULES, UNIT_PATH, merge_robot_yaml,
    robot_hardware, robot_yaml, sh_quote, sha256_hex, systemd_unit,
};
use crate::progress::Event;

pub(super) async fn check_runc(cx: &mut Cx<'_>) -> Result<Plan> {
    let has = cx
        .robot
        .root_ok("runc", "command -v runc || command -v crun || true", &[])
        .await?;
    let need = has.trim().is_empty();
    Ok(Plan::new(
        need,
        if need {
            "runc installed with apt-get".to_owned()
        } else {
            format!("found {}", has.trim())
        },
    ))
}

pub(super) async fn apply_runc(cx: &mut Cx<'_>) -> Result<()> {
    cx.robot
        .root_ok(
            "runc",
            "export DEBIAN_FRONTEND=noninteractive; \
             apt-get install -y --no-install-recommends runc </dev/null >&2 \
             || { apt-get update >&2 && apt-get install -y --no-install-recommends runc </dev/null >&2; }",
            &[],
        )
        .await?;
    Ok(())
}

pub(super) async fn check_agent(cx: &mut Cx<'_>) -> Result<Plan> {
    let current = cx
        .robot
        .root_ok(
            "agent",
            &format!("if [ -f {AGENT_PATH} ]; then sha256sum {AGENT_PATH} | cut -c1-64; fi"),
            &[],
        )
        .await?;
    let sha = &cx.agent.sha256;
    Ok(Plan::new(
        current.trim() != sha,
        format!("{AGENT_PATH} sha256 {}", &sha[..12.min(sha.len())]),
    ))
}

/// Uploads the agent under a temporary name, checks its sha256 and that it runs there, then
/// renames it into place.
pub(super) async fn apply_agent(cx: &mut Cx<'_>) -> Result<()> {
    let agent = &cx.agent;
    let bytes = std::fs::read(&agent.path)
        .with_context(|| format!("reading `{}`", agent.path.display()))?;
    let got = sha256_hex(&bytes);
    if got != agent.sha256 {
        bail!(
            "`{}` changed while provisioning (sha256 {got}, expected {})",
            agent.path.display(),
            agent.sha256
        );
    }
    cx.reporter.event(Event::start(
        "agent-upload",
        format!("upload dt-agent ({})", cx.arch),
        Some(agent.size),
    ));
    cx.robot
        .root_ok(
            "agent",
            &format!(
                "d=$(dirname {AGENT_PATH}); mkdir -p \"$d\"; tmp=$(mktemp \"$d/.dt-agent.XXXXXX\"); \
                 trap 'rm -f \"$tmp\"' EXIT; cat > \"$tmp\"; \
                 got=$(sha256sum \"$tmp\" | cut -c1-64); \
                 if [ \"$got\" != {want} ]; then echo \"the upload arrived with sha256 $got, not {want}\" >&2; exit 1; fi; \
                 chown root:root \"$tmp\"; chmod 755 \"$tmp\"; \
                 \"$tmp\" --version >/dev/null || {{ echo 'the uploaded dt-agent does not run on this robot' >&2; exit 1; }}; \
                 mv -f \"$tmp\" {AGENT_PATH}; trap - EXIT",
                want = agent.sha256,
            ),
            &bytes,
        )
        .await?;
    cx.reporter.event(Event::finish("agent-upload", "done"));
    Ok(())
}

/// `found`: the rule files that differ.
pub(super) async fn check_udev_rules(cx: &mut Cx<'_>) -> Result<Plan> {
    let mut differ = Vec::new();
    for (name, text) in UDEV_RULES {
        let path = format!("/etc/udev/rules.d/{name}");
        if cx
            .robot
            .file_differs("udev-rules", &path, text.as_bytes(), "644")
            .await?
        {
            differ.push(name.to_string());
        }
    }
    Ok(Plan::new(!differ.is_empty(), "/etc/udev/rules.d/70-duckiebot.rules").found(differ))
}

pub(super) async fn apply_udev_rules(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    for (name, text) in UDEV_RULES
        .iter()
        .filter(|r| plan.found.iter().any(|f| f == r.0))
    {
        let path = format!("/etc/udev/rules.d/{name}");
        cx.robot
            .write_file("udev-rules", &path, text.as_bytes(), "644", None)
            .await?;
    }
    // Without a running udevd (a container) the rules apply at the next boot. Only the
    // subsystems the rules name are re-added: all of them would include the WiFi interface
    // this session runs over.
    cx.robot
        .root_ok(
            "udev-rules",
            "if [ -S /run/udev/control ] && command -v udevadm >/dev/null; then \
             udevadm control --reload-rules && \
             udevadm trigger --action=add --subsystem-match=i2c-dev --subsystem-match=gpio --subsystem-match=video4linux; fi",
            &[],
        )
        .await?;
    Ok(())
}

/// What provision owns in `robot.yaml` (hostname, type, configuration) checked against the
/// file; the user's `devices:` stay ([`merge_robot_yaml`]). `found`: the new text, and
/// `replace` when the old file could not be kept (a copy of it is kept beside it).
pub(super) async fn check_robot_yaml(cx: &mut Cx<'_>) -> Result<Plan> {
    let path = crate::profile::robot::DEFAULT_ROBOT_YAML;
    let p = sh_quote(path);
    // A sentinel line first: a missing file and an empty one differ.
    let out = cx
        .robot
        .root_ok(
            "robot-yaml",
            &format!("if [ -f {p} ]; then echo present; stat -c %a {p}; cat {p}; fi"),
            &[],
        )
        .await?;
    let summary = format!(
        "{} {} ({})",
        cx.profile.robot_type, cx.profile.configuration, cx.args.hostname
    );
    let fresh = robot_yaml(&cx.args.hostname, &cx.profile);
    let Some(rest) = out.strip_prefix("present\n") else {
        return Ok(Plan::new(true, summary).found(vec![fresh]));
    };
    let (mode, text) = rest.split_once('\n').unwrap_or((rest, ""));
    let plan = match merge_robot_yaml(text, &cx.args.hostname, &cx.profile) {
        RobotYamlMerge::Unchanged if mode.trim() == "644" => Plan::new(false, summary),
        RobotYamlMerge::Unchanged => Plan::new(true, summary).found(vec![text.to_owned()]),
        RobotYamlMerge::Merged(t) => {
            Plan::new(true, format!("{summary}; your other settings kept")).found(vec![t])
        }
        RobotYamlMerge::Replaced(t, why) => Plan::new(
            true,
            format!("{summary}; the old file was replaced ({why}) and kept as {path}.invalid"),
        )
        .found(vec![t, "replace".into()]),
    };
    Ok(plan)
}

pub(super) async fn apply_robot_yaml(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    let path = crate::profile::robot::DEFAULT_ROBOT_YAML;
    if plan.found.get(1).is_some_and(|f| f == "replace") {
        let p = sh_quote(path);
        cx.robot
            .root_ok(
                "robot-yaml",
                &format!("cp -p {p} {}", sh_quote(&format!("{path}.invalid"))),
                &[],
            )
            .await?;
        cx.notes.push(format!(
            "{path} on `{}` could not be merged, so it was replaced; the old one is {path}.invalid",
            cx.robot.addr
        ));
    }
    cx.robot
        .write_file("robot-yaml", path, plan.found[0].as_bytes(), "644", None)
        .await
}

/// `/data/config/NAME` → its content, as Duckietown's own tools read them.
fn data_config(cx: &Cx<'_>) -> [(&'static str, String); 3] {
    [
        ("robot_type", format!("{}\n", cx.profile.robot_type)),
        (
            "robot_configuration",
            format!("{}\n", cx.profile.configuration),
        ),
        (
            "robot_hardware",
            format!("{}\n", robot_hardware(&cx.profile.configuration)),
        ),
    ]
}

/// `found`: the files that differ.
pub(super) async fn check_data_config(cx: &mut Cx<'_>) -> Result<Plan> {
    let mut differ = Vec::new();
    for (name, content) in data_config(cx) {
        let path = format!("/data/config/{name}");
        if cx
            .robot
            .file_differs("data-config", &path, content.as_bytes(), "644")
            .await?
        {
            differ.push(name.to_owned());
        }
    }
    let detail = format!(
        "robot_type={} robot_configuration={} robot_hardware={}",
        cx.profile.robot_type,
        cx.profile.configuration,
        robot_hardware(&cx.profile.configuration)
    );
    Ok(Plan::new(!differ.is_empty(), detail).found(differ))
}

pub(super) async fn apply_data_config(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    for (name, content) in data_config(cx) {
        if plan.found.iter().any(|f| f == name) {
            let path = format!("/data/config/{name}");
            cx.robot
                .write_file("data-config", &path, content.as_bytes(), "644", None)
                .await?;
        }
    }
    Ok(())
}

pub(super) async fn check_hostname(cx: &mut Cx<'_>) -> Result<Plan> {
    let name = sh_quote(&cx.args.hostname);
    let state = cx
        .robot
        .root_ok(
            "hostname",
            &format!(
                "[ \"$(cat /etc/hostname 2>/dev/null)\" = {name} ] && echo file; \
                 [ \"$(hostname)\" = {name} ] && echo kernel; \
                 grep -Eq \"^127\\.0\\.1\\.1[[:space:]]+\"{name}\"([[:space:]]|\\$)\" /etc/hosts 2>/dev/null && echo hosts; true"
            ),
            &[],
        )
        .await?;
    let need = !(state.contains("file") && state.contains("kernel") && state.contains("hosts"));
    Ok(Plan::new(need, cx.args.hostname.clone()))
}

pub(super) async fn apply_hostname(cx: &mut Cx<'_>) -> Result<()> {
    let name = sh_quote(&cx.args.hostname);
    cx.robot
        .root_ok(
            "hostname",
            &format!(
                "{REPLACE_FILE}\
                 o=$(cat /etc/hostname 2>/dev/null || true); [ -n \"$o\" ] || o=$(hostname); \
                 s=/etc/hosts; [ -e \"$s\" ] || s=/dev/null; \
                 h=$(awk -v n={name} -v o=\"$o\" '{HOSTS_AWK}' \"$s\"); \
                 printf '%s\\n' \"$h\" | replace_file /etc/hosts; \
                 printf '%s\\n' {name} | replace_file /etc/hostname; hostname {name}; \
                 if [ -d /run/systemd/system ] && systemctl -q is-active avahi-daemon 2>/dev/null; then systemctl restart avahi-daemon; fi"
            ),
            &[],
        )
        .await?;
    Ok(())
}

/// A shell function `replace_file PATH` that replaces PATH with its stdin so that every reader
/// sees the old file or the new one, whole: a temp file in the same directory, the old file's
/// owner and mode, fsync, rename, fsync of the directory. A PATH that is a mount point (a
/// container's bind-mounted /etc/hosts) cannot be renamed over and is rewritten in place.
const REPLACE_FILE: &str = "replace_file() { \
     f=$1; d=$(dirname \"$f\"); t=$(mktemp \"$d/.${f##*/}.dts.XXXXXX\"); \
     trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; \
     if [ -e \"$f\" ]; then chown --reference=\"$f\" \"$t\"; chmod --reference=\"$f\" \"$t\"; \
     else chown root:root \"$t\"; chmod 644 \"$t\"; fi; \
     sync \"$t\"; \
     if awk -v f=\"$f\" '$5 == f { m = 1 } END { exit !m }' /proc/self/mountinfo; then \
       cat \"$t\" > \"$f\"; sync \"$f\"; rm -f \"$t\"; \
     else mv -f \"$t\" \"$f\"; sync \"$d\"; fi; \
     trap - EXIT; }; ";

pub(super) async fn check_systemd_unit(cx: &mut Cx<'_>) -> Result<Plan> {
    let unit = systemd_unit();
    let need = cx
        .robot
        .file_differs("systemd-unit", UNIT_PATH, unit.as_bytes(), "644")
        .await?;
    Ok(Plan::new(need, "dt-agent.service runs `dt-agent daemon`"))
}

pub(super) async fn apply_systemd_unit(cx: &mut Cx<'_>) -> Result<()> {
    let unit = systemd_unit();
    cx.robot
        .write_file("systemd-unit", UNIT_PATH, unit.as_bytes(), "644", None)
        .await
}

/// The service enabled and running, restarted when anything it reads changed in this run (or,
/// on a first provision, may have changed in a run killed before the restart). `found` holds
/// `systemd` when systemd runs the robot.
pub(super) async fn check_agent_service(cx: &mut Cx<'_>) -> Result<Plan> {
    let restart = [
        "agent",
        "robot-yaml",
        "hostname",
        "systemd-unit",
        "host-keys",
    ]
    .iter()
    .any(|s| cx.changed(s))
        || cx.first_provision;
    let state = cx
        .robot
        .root_ok(
            "agent-service",
            "if [ -d /run/systemd/system ]; then echo systemd; \
               systemctl -q is-enabled dt-agent.service 2>/dev/null && echo enabled; \
               systemctl -q is-active dt-agent.service 2>/dev/null && echo active; \
             else [ -L /etc/systemd/system/multi-user.target.wants/dt-agent.service ] && echo enabled; fi; true",
            &[],
        )
        .await?;
    let systemd = state.contains("systemd");
    let enabled = state.contains("enabled");
    let active = state.contains("active");
    let need = !enabled || (systemd && (!active || restart));
    if !systemd {
        cx.notes.push(format!(
            "systemd is not running on `{}`: dt-agent.service is enabled for the next boot, not started",
            cx.robot.addr
        ));
    }
    let detail = match (systemd, restart) {
        (false, _) => "enabled (systemd not running: starts at boot)",
        (true, true) => "enabled, restarted",
        (true, false) => "enabled, running",
    };
    let found = if systemd {
        vec!["systemd".to_owned()]
    } else {
        Vec::new()
    };
    Ok(Plan::new(need, detail).found(found))
}

pub(super) async fn apply_agent_service(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    if plan.found.iter().any(|f| f == "systemd") {
        cx.robot
            .root_ok(
                "agent-service",
                "systemctl daemon-reload; systemctl enable dt-agent.service >&2; systemctl restart dt-agent.service",
                &[],
            )
            .await?;
        wait_for_daemon(&cx.robot).await
    } else {
        // Without a running systemd (a container), `systemctl enable` cannot be asked; the
        // symlink it would make is made here and the unit starts at the next boot.
        cx.robot
            .root_ok(
                "agent-service",
                "mkdir -p /etc/systemd/system/multi-user.target.wants; \
                 ln -sfn /etc/systemd/system/dt-agent.service /etc/systemd/system/multi-user.target.wants/dt-agent.service",
                &[],
            )
            .await?;
        Ok(())
    }
}

/// A dry run cannot know what the robot lacks without asking the agent it may not have yet,
/// so it counts shipping as a change.
pub(super) async fn check_preload(cx: &mut Cx<'_>) -> Result<Plan> {
    Ok(Plan::new(
        true,
        format!("{}; 0 object(s) sent", cx.args.preload.join(", ")),
    ))
}

pub(super) async fn apply_preload(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    let sent = preload(
        cx.robot.session,
        &cx.robot.root,
        &cx.args.preload,
        cx.reporter,
    )
    .await?;
    plan.change = sent > 0;
    plan.detail = format!("{}; {sent} object(s) sent", cx.args.preload.join(", "));
    Ok(())
}

/// The marker's content for this run; `found` holds it.
pub(super) async fn check_marker(cx: &mut Cx<'_>) -> Result<Plan> {
    let marker = serde_json::to_string_pretty(&Marker {
        provisioned_by: format!("dts {}", env!("CARGO_PKG_VERSION")),
        hostname: &cx.args.hostname,
        configuration: &cx.profile.configuration,
        user: &cx.user,
        arch: cx.arch.as_str(),
        agent_sha256: &cx.agent.sha256,
    })
    .expect("the marker serialises")
        + "\n";
    let need = cx.marker_before != marker;
    Ok(Plan::new(need, "provisioned.json").found(vec![marker]))
}

pub(super) async fn apply_marker(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    cx.robot
        .write_file("marker", MARKER_PATH, plan.found[0].as_bytes(), "644", None)
        .await
}
