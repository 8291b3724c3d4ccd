//! `provision --remove-docker`: once the agent runs the adopted stack, Docker's packages and its
//! data root are removed to give the SD card back its gigabytes; the record says so, and
//! `--restore-docker` then refuses. runc stays (marked manually installed, so no autoremove
//! takes it: the agent runs containers with it). Packages go with `apt-get purge`, or
//! `dpkg --purge` where there is no apt.

use anyhow::Result;

use super::super::ProvisionError;
use super::super::steps::{Cx, Plan};
use super::{RECORD_PATH, look};

/// The packages Docker arrives in: Debian's, Docker's own, and compose v1.
const PACKAGES: &[&str] = &[
    "docker.io",
    "docker-ce",
    "docker-ce-cli",
    "docker-ce-rootless-extras",
    "docker-compose",
    "docker-compose-plugin",
    "docker-buildx-plugin",
    "containerd",
    "containerd.io",
];

pub(in super::super) async fn check_remove(cx: &mut Cx<'_>) -> Result<Plan> {
    let record = cx.docker.clone().expect("wanted only with a Docker stack");
    if let Some(at) = &record.docker_removed {
        return Ok(Plan::new(false, format!("removed on {at}")));
    }
    if cx.dry {
        return Ok(Plan::new(
            true,
            "Docker's packages and data root would be removed",
        ));
    }
    if !look(cx, &record).await?.agent_runs {
        return Err(ProvisionError::NotAdopted {
            addr: cx.robot.addr.clone(),
        }
        .into());
    }
    let root = cx
        .robot
        .root_ok(
            "remove-docker",
            "docker info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker",
            &[],
        )
        .await?;
    let root = root.trim().to_owned();
    Ok(Plan::new(true, format!("Docker's packages and {root} removed")).found(vec![root]))
}

pub(in super::super) async fn apply_remove(cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
    let root = plan
        .found
        .first()
        .cloned()
        .unwrap_or("/var/lib/docker".into());
    if !root.starts_with('/') || root == "/" {
        return Err(cx.robot.fail(
            "remove-docker",
            format!("Docker's data root `{root}` is not one to remove"),
        ));
    }
    let pkgs = PACKAGES.join(" ");
    cx.robot
        .root_ok(
            "remove-docker",
            &format!(
                "export DEBIAN_FRONTEND=noninteractive; \
                 systemctl disable --now docker.socket docker.service containerd.service >/dev/null 2>&1 || true; \
                 installed=$(dpkg -l {pkgs} 2>/dev/null | awk '/^ii/ {{ sub(/:.*/, \"\", $2); print $2 }}'); \
                 if [ -n \"$installed\" ]; then \
                   if command -v apt-get >/dev/null; then \
                     if dpkg-query -W runc >/dev/null 2>&1; then apt-mark manual runc >/dev/null; fi; \
                     apt-get purge -y $installed </dev/null >&2; \
                   else dpkg --purge $installed </dev/null >&2; fi; \
                 fi; \
                 r={r}; rm -rf \"$r\" 2>/dev/null || find \"$r\" -mindepth 1 -delete",
                r = super::sh_quote(&root),
            ),
            &[],
        )
        .await?;
    let mut record = cx.docker.clone().expect("wanted only with a Docker stack");
    record.docker_removed = Some(crate::util::time::rfc3339(crate::util::time::now_secs()));
    let json = serde_json::to_vec_pretty(&record)?;
    cx.robot
        .write_file("remove-docker", RECORD_PATH, &json, "600", None)
        .await?;
    cx.docker = Some(record);
    Ok(())
}
