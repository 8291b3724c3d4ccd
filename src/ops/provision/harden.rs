//! The steps that make the robot ours and close what the SD-card image leaves open: the user's
//! key in (and proven by a login), the sudoers rule for `dt-agent serve`, unique host keys,
//! password logins off, `DT2018key` out, the login password locked, Docker's TCP API off. Each
//! is a `check_*` (looks, changes nothing) and an `apply_*` (see [`super::steps`]). Those that
//! could lock the user out are checked with a fresh key login and undone through the first
//! session when it fails.

use anyhow::{Result, bail};

use super::remote::{
    DOCKER_TCP_PORT, RELOAD_SSHD, Root, disable_password_login, docker_tcp_listening,
    regenerate_host_keys, revert_password_login, robot_host_keys, sudo_serve_works,
    verify_key_login,
};
use super::steps::{Cx, Plan};
use super::{AGENT_PATH, DT2018_KEY, HOST_KEYS_RECORD, SUDOERS_PATH, sh_quote, sudoers};
use crate::ssh::known_hosts;

pub(super) async fn check_authorized_key(cx: &mut Cx<'_>) -> Result<Plan> {
    let has = cx
        .robot
        .root_ok(
            "authorized-key",
            &format!(
                "h={home_of}; [ -n \"$h\" ] || {{ echo 'no user {user}' >&2; exit 1; }}; \
                 if [ -f \"$h/.ssh/authorized_keys\" ] && grep -qF {b} \"$h/.ssh/authorized_keys\"; then echo yes; else echo no; fi",
                home_of = cx.home_of,
                user = cx.user,
                b = sh_quote(&cx.key.blob)
            ),
            &[],
        )
        .await?;
    let need = has.trim() != "yes";
    cx.key_installed = !need || !cx.dry;
    Ok(Plan::new(
        need,
        format!(
            "{} in ~{}/.ssh/authorized_keys",
            cx.key.private.display(),
            cx.user
        ),
    ))
}

pub(super) async fn apply_authorized_key(cx: &mut Cx<'_>) -> Result<()> {
    cx.robot
        .root_ok(
            "authorized-key",
            &format!(
                "u={u}; h={home_of}; g=$(id -gn \"$u\"); install -d -m 700 -o \"$u\" -g \"$g\" \"$h/.ssh\"; \
                 f=\"$h/.ssh/authorized_keys\"; touch \"$f\"; \
                 if [ -s \"$f\" ] && [ -n \"$(tail -c1 \"$f\")\" ]; then echo >> \"$f\"; fi; \
                 printf '%s\\n' {line} >> \"$f\"; chown \"$u:$g\" \"$f\"; chmod 600 \"$f\"",
                u = sh_quote(&cx.user),
                home_of = cx.home_of,
                line = sh_quote(&cx.key.public_line),
            ),
            &[],
        )
        .await?;
    Ok(())
}

/// A login with only the user's key, in a new session: what every later hardening relies on.
pub(super) async fn check_key_login(cx: &mut Cx<'_>) -> Result<Plan> {
    verify(cx).await?;
    Ok(Plan::new(false, "a login with your key works"))
}

async fn verify(cx: &Cx<'_>) -> Result<()> {
    verify_key_login(&cx.target, &cx.opts, &cx.key, &cx.robot.addr).await
}

/// The drop-in, and whether sudo obeys it. sudo obeys the LAST rule that matches, and stock
/// images append the user's own rule to /etc/sudoers after its `@includedir`: a
/// password-wanting `duckie ALL=(ALL) ALL` there would shadow the drop-in. Asking sudo itself
/// is the only reliable check; the fix is an `#include` of the drop-in at the very end of
/// /etc/sudoers (validated first). `found` says which of the two `apply` does.
pub(super) async fn check_sudoers(cx: &mut Cx<'_>) -> Result<Plan> {
    let text = sudoers(&cx.user);
    let file = cx
        .robot
        .file_differs("sudoers", SUDOERS_PATH, text.as_bytes(), "440")
        .await?;
    // With the file to be rewritten, sudo is asked after that (on a dry run: not at all).
    let include = !file
        && !matches!(cx.robot.root, Root::Already)
        && sudo_serve_works(cx.robot.session).await?.is_err();
    let mut found = Vec::new();
    if file {
        found.push("file".to_owned());
    }
    if include {
        found.push("include".to_owned());
    }
    Ok(Plan::new(
        file || include,
        format!("{} may run `{AGENT_PATH} serve --stdio`", cx.user),
    )
    .found(found))
}

pub(super) async fn apply_sudoers(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    let mut include = plan.found.iter().any(|f| f == "include");
    if plan.found.iter().any(|f| f == "file") {
        let text = sudoers(&cx.user);
        cx.robot
            .write_file(
                "sudoers",
                SUDOERS_PATH,
                text.as_bytes(),
                "440",
                Some("visudo -cf \"$tmp\""),
            )
            .await?;
        include = !matches!(cx.robot.root, Root::Already)
            && sudo_serve_works(cx.robot.session).await?.is_err();
    }
    if !include {
        return Ok(());
    }
    cx.robot
        .root_ok(
            "sudoers",
            &format!(
                "s=/etc/sudoers; tmp=$(mktemp /etc/.sudoers.dts.XXXXXX); trap 'rm -f \"$tmp\"' EXIT; \
                 cat \"$s\" > \"$tmp\"; \
                 if [ -n \"$(tail -c1 \"$s\")\" ]; then echo >> \"$tmp\"; fi; \
                 printf '%s\\n' '# dts duckiebot provision: the dt-agent rule, last so that it wins' '#include {SUDOERS_PATH}' >> \"$tmp\"; \
                 chown root:root \"$tmp\"; chmod 440 \"$tmp\"; visudo -cf \"$tmp\" >&2; mv -f \"$tmp\" \"$s\"; trap - EXIT"
            ),
            &[],
        )
        .await?;
    if let Err(why) = sudo_serve_works(cx.robot.session).await? {
        return Err(cx.robot.fail(
            "sudoers",
            format!(
                "{} still cannot run `sudo -n {AGENT_PATH} serve --stdio`: {why}",
                cx.user
            ),
        ));
    }
    Ok(())
}

/// New host keys on a first provision (unless `--keep-host-keys`). `apply` also runs when an
/// earlier run regenerated them, to leave only the robot's current keys in known_hosts (which
/// finishes a run killed between installing the new keys and forgetting the old ones).
pub(super) async fn check_host_keys(cx: &mut Cx<'_>) -> Result<Plan> {
    let regenerated = cx
        .robot
        .root_ok(
            "host-keys",
            &format!("[ -f {HOST_KEYS_RECORD} ] && echo yes || true"),
            &[],
        )
        .await?
        .trim()
        == "yes";
    let need = !cx.args.keep_host_keys && cx.first_provision && !regenerated;
    let detail = if cx.args.keep_host_keys {
        "kept (--keep-host-keys)"
    } else if !need {
        "regenerated by an earlier provision"
    } else {
        "regenerated"
    };
    let mut plan = Plan::new(need, detail);
    plan.act = need || regenerated;
    Ok(plan)
}

pub(super) async fn apply_host_keys(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    let names = key_names(cx);
    if plan.change {
        regenerate_host_keys(
            &cx.robot,
            &cx.args.hostname,
            &cx.known_file,
            &names,
            cx.port,
        )
        .await?;
    }
    let current = robot_host_keys(&cx.robot).await?;
    verify(cx).await?;
    let mut dropped = 0;
    for name in &names {
        dropped += known_hosts::forget_other_keys(&cx.known_file, name, cx.port, &current)?;
    }
    if dropped > 0 && !plan.change {
        plan.detail = format!(
            "forgot {dropped} old host key(s) in {}",
            cx.known_file.display()
        );
    }
    Ok(())
}

/// Password logins as sshd would take them (`sshd -T`). On a first provision `apply` also
/// reloads sshd when they are already off: the drop-in may be on disk from a run killed before
/// the reload, and `sshd -T` reads the files, the running sshd may not have.
pub(super) async fn check_ssh_password_login(cx: &mut Cx<'_>) -> Result<Plan> {
    let effective = cx
        .robot
        .root_ok(
            "ssh-password-login",
            "sshd -T 2>&1 | grep -Ei '^(passwordauthentication|kbdinteractiveauthentication|challengeresponseauthentication) ' || true",
            &[],
        )
        .await?;
    let on = effective
        .lines()
        .any(|l| l.trim().to_lowercase().ends_with(" yes"));
    if effective.trim().is_empty() {
        return Err(cx.robot.fail(
            "ssh-password-login",
            "`sshd -T` printed no authentication settings",
        ));
    }
    let mut plan = Plan::new(
        on,
        "sshd: PasswordAuthentication no, ChallengeResponseAuthentication no",
    );
    plan.act = on || cx.first_provision;
    Ok(plan)
}

pub(super) async fn apply_ssh_password_login(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    if !plan.change {
        cx.robot
            .root_ok("ssh-password-login", RELOAD_SSHD, &[])
            .await?;
        return Ok(());
    }
    if !cx.key_installed {
        unreachable!("the key is installed unless this is a dry run");
    }
    disable_password_login(&cx.robot).await?;
    if let Err(e) = verify(cx).await {
        let _ = cx.robot.root(&revert_password_login(), &[]).await;
        return Err(e);
    }
    Ok(())
}

/// The shell listing every authorized_keys file that may hold the shared key.
fn authorized_keys_files(cx: &Cx<'_>) -> String {
    format!(
        "for f in /root/.ssh/authorized_keys /root/.ssh/authorized_keys2 /home/*/.ssh/authorized_keys /home/*/.ssh/authorized_keys2 \"{}/.ssh/authorized_keys\"; do [ -f \"$f\" ] && echo \"$f\"; done | sort -u",
        cx.home_of
    )
}

fn shared_blob() -> &'static str {
    DT2018_KEY.split_whitespace().nth(1).unwrap_or_default()
}

pub(super) async fn check_shared_key(cx: &mut Cx<'_>) -> Result<Plan> {
    let found = cx
        .robot
        .root_ok(
            "shared-key",
            &format!(
                "{} | while read -r f; do grep -lF {b} \"$f\" || true; done",
                authorized_keys_files(cx),
                b = sh_quote(shared_blob())
            ),
            &[],
        )
        .await?;
    let holders: Vec<String> = found
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    let need = !holders.is_empty();
    let detail = if need {
        format!("removed from {}", holders.join(", "))
    } else {
        "not present".into()
    };
    Ok(Plan::new(need, detail).found(holders))
}

pub(super) async fn apply_shared_key(cx: &mut Cx<'_>) -> Result<()> {
    let blob = shared_blob();
    if cx.key.blob == blob {
        bail!(
            "refusing to install DT2018key as your key: it is the key every Duckiebot image shares"
        );
    }
    cx.robot
        .root_ok(
            "shared-key",
            &format!(
                "{} | while read -r f; do \
                 if grep -qF {b} \"$f\"; then \
                   tmp=$(mktemp \"$f.XXXXXX\"); awk -v b={b} '{{for(i=1;i<=NF;i++) if($i==b) next}} {{print}}' \"$f\" > \"$tmp\"; \
                   chown --reference=\"$f\" \"$tmp\"; chmod --reference=\"$f\" \"$tmp\"; mv -f \"$tmp\" \"$f\"; \
                 fi; done",
                authorized_keys_files(cx),
                b = sh_quote(blob)
            ),
            &[],
        )
        .await?;
    verify(cx).await
}

/// The login password: set to `*` unless the user is root or sudo needs it. `found` holds the
/// old hash, put back when a key login then fails.
pub(super) async fn check_password_lock(cx: &mut Cx<'_>) -> Result<Plan> {
    let user = cx.user.clone();
    let hash = cx
        .robot
        .root_ok(
            "password-lock",
            &format!("getent shadow {u} | cut -d: -f2", u = sh_quote(&user)),
            &[],
        )
        .await?;
    let hash = hash.trim().to_owned();
    let locked = hash.starts_with('!') || hash.starts_with('*');
    let plan = if cx.uid == "0" {
        Plan::new(false, "root: left as it is")
    } else if matches!(cx.robot.root, Root::Password(_)) {
        cx.notes.push(format!(
            "{user}'s password was kept because sudo needs it on this robot; SSH no longer accepts it"
        ));
        Plan::new(
            false,
            format!("kept: {user} needs it for sudo (the robot has no NOPASSWD rule)"),
        )
    } else if locked {
        Plan::new(false, "no usable password")
    } else {
        Plan::new(
            true,
            "set to `*`: no password matches; key logins and sudo go on",
        )
    };
    Ok(plan.found(vec![hash]))
}

pub(super) async fn apply_password_lock(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    // `*`, not `passwd -l`'s `!`: sshd without PAM refuses even key logins to a `!`-locked
    // account.
    let user = sh_quote(&cx.user);
    cx.robot
        .root_ok("password-lock", &format!("usermod -p '*' {user}"), &[])
        .await?;
    if let Err(e) = verify(cx).await {
        let hash = sh_quote(&plan.found[0]);
        let _ = cx
            .robot
            .root(&format!("usermod -p {hash} {user}"), &[])
            .await;
        return Err(e);
    }
    Ok(())
}

/// Docker's unauthenticated TCP API: `-H tcp://…` in docker's unit drop-ins or defaults (listed
/// in `found`), or a listener left by a run killed between the edit and the restart (while the
/// robot is not provisioned yet, a listener on 2375 is reason enough to restart docker).
pub(super) async fn check_docker_tcp(cx: &mut Cx<'_>) -> Result<Plan> {
    let tcp_files = cx
        .robot
        .root_ok(
            "docker-tcp",
            "for f in /etc/systemd/system/docker.service.d/*.conf /etc/default/docker; do \
             [ -f \"$f\" ] && grep -lE '(-H|--host)(=|[[:space:]]+)tcp://' \"$f\" || true; done",
            &[],
        )
        .await?;
    let tcp_files: Vec<String> = tcp_files
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    let json_tcp = cx
        .robot
        .root_ok(
            "docker-tcp",
            "grep -l 'tcp://' /etc/docker/daemon.json 2>/dev/null || true",
            &[],
        )
        .await?;
    if !json_tcp.trim().is_empty() {
        cx.notes.push(format!(
            "/etc/docker/daemon.json on `{}` lists a tcp:// host; remove it by hand and restart docker",
            cx.robot.addr
        ));
    }
    let listening = cx.first_provision && docker_tcp_listening(&cx.robot).await?;
    let need = !tcp_files.is_empty() || listening;
    let detail = if need {
        format!("removed -H tcp://… from {}", tcp_files.join(", "))
    } else {
        "not listening on TCP".into()
    };
    Ok(Plan::new(need, detail).found(tcp_files))
}

pub(super) async fn apply_docker_tcp(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    let quoted: Vec<String> = plan.found.iter().map(|f| sh_quote(f)).collect();
    let edit = if quoted.is_empty() {
        String::new()
    } else {
        format!(
            "sed -E -i 's#[[:space:]]+(-H|--host)(=|[[:space:]]+)tcp://[^[:space:]\"]*##g' {}; ",
            quoted.join(" ")
        )
    };
    let restarted = cx
        .robot
        .root_ok(
            "docker-tcp",
            &format!(
                "{edit}if [ -d /run/systemd/system ]; then systemctl daemon-reload; \
                   if systemctl -q is-active docker; then systemctl restart docker; fi; echo restarted; fi"
            ),
            &[],
        )
        .await?;
    if restarted.trim() != "restarted" {
        cx.notes
            .push("systemd is not running: docker listens on TCP until it restarts".into());
    } else if docker_tcp_listening(&cx.robot).await? {
        return Err(cx.robot.fail(
            "docker-tcp",
            format!(
                "something still listens on TCP {DOCKER_TCP_PORT} after docker was restarted without its tcp:// host; check /etc/docker/daemon.json and docker.service"
            ),
        ));
    }
    Ok(())
}

/// The names the robot's host keys are filed under: the address (or name) provision connected
/// to, the name it was found by over mDNS, and `HOSTNAME.local`, the name it answers to from
/// now on — so `dts duckiebot deploy HOSTNAME` finds the key at whatever address DHCP gives.
fn key_names(cx: &Cx<'_>) -> Vec<String> {
    let mut names = vec![cx.host.clone()];
    let after = format!("{}.local", cx.args.hostname.to_lowercase());
    for name in cx.opts.host_key_alias.iter().cloned().chain([after]) {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    names
}
