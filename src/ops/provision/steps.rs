//! Provisioning as a list of steps ([`STEPS`]), each a [`Step`] with a `check` that looks at the
//! robot and says what is already right and what would change (a [`Plan`]), and an `apply` that
//! makes the change. A run is "check, then apply what the check found"; `--dry-run` is the
//! checks alone. Owns the order and the state the steps share ([`Cx`]); the steps themselves
//! are in [`super::install`] (putting the agent and its configuration on the robot) and
//! [`super::harden`] (the user's key in, the image's shared secrets out).

use std::path::PathBuf;

use anyhow::Result;

use super::remote::{Robot, Root, UserKey, target_host, target_port};
use super::{MARKER_PATH, ProvisionArgs, ProvisionError, StepReport, adopt, harden, install};
use crate::agents::{AgentArch, AgentBinary, find_agent};
use crate::profile::robot::RobotProfile;
use crate::progress::{Event, Reporter};
use crate::ssh::{Session, SshOptions, Target};

/// Every step, in the order a run takes them (the module doc of [`super`] draws it).
pub(super) const STEPS: &[Step] = &[
    Step::AuthorizedKey,
    Step::KeyLogin,
    Step::Runc,
    Step::Agent,
    Step::UdevRules,
    Step::RobotYaml,
    Step::DataConfig,
    Step::Sudoers,
    Step::HostKeys,
    Step::SshPasswordLogin,
    Step::SharedKey,
    Step::PasswordLock,
    // What Docker runs is recorded before anything touches Docker.
    Step::DockerStack,
    Step::DockerTcp,
    // After hardening: renaming restarts avahi, and the re-logins that prove the key still
    // works may be going to the old NAME.local.
    Step::Hostname,
    Step::SystemdUnit,
    Step::AgentService,
    // Once the agent's daemon runs: Docker's images into its store, then Docker's stack
    // switched over to it.
    Step::AdoptImages,
    Step::AdoptStack,
    Step::RemoveDocker,
    Step::Preload,
    Step::Marker,
];

/// One step of a provision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    AuthorizedKey,
    KeyLogin,
    Runc,
    Agent,
    UdevRules,
    RobotYaml,
    DataConfig,
    Sudoers,
    HostKeys,
    SshPasswordLogin,
    SharedKey,
    PasswordLock,
    DockerStack,
    DockerTcp,
    Hostname,
    SystemdUnit,
    AgentService,
    AdoptImages,
    AdoptStack,
    RemoveDocker,
    Preload,
    Marker,
}

/// What a step's check found.
pub(super) struct Plan {
    /// Whether the step changes the robot (on a dry run: would): what the report records.
    pub(super) change: bool,
    /// Whether `apply` runs (never on a dry run). Usually `change`; a step may also have to
    /// finish what a run killed half-way left, which is not a change of its own.
    pub(super) act: bool,
    /// What it found or did, for people.
    pub(super) detail: String,
    /// What the check found that `apply` works on (files to edit, an old password hash).
    pub(super) found: Vec<String>,
}

impl Plan {
    pub(super) fn new(change: bool, detail: impl Into<String>) -> Plan {
        Plan {
            change,
            act: change,
            detail: detail.into(),
            found: Vec::new(),
        }
    }

    pub(super) fn found(mut self, found: Vec<String>) -> Plan {
        self.found = found;
        self
    }
}

impl Step {
    /// The step's name, as the report's `changed` lists it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Step::AuthorizedKey => "authorized-key",
            Step::KeyLogin => "key-login",
            Step::Runc => "runc",
            Step::Agent => "agent",
            Step::UdevRules => "udev-rules",
            Step::RobotYaml => "robot-yaml",
            Step::DataConfig => "data-config",
            Step::Sudoers => "sudoers",
            Step::HostKeys => "host-keys",
            Step::SshPasswordLogin => "ssh-password-login",
            Step::SharedKey => "shared-key",
            Step::PasswordLock => "password-lock",
            Step::DockerStack => "docker-stack",
            Step::DockerTcp => "docker-tcp",
            Step::Hostname => "hostname",
            Step::SystemdUnit => "systemd-unit",
            Step::AgentService => "agent-service",
            Step::AdoptImages => "adopt-images",
            Step::AdoptStack => "adopt-stack",
            Step::RemoveDocker => "remove-docker",
            Step::Preload => "preload",
            Step::Marker => "marker",
        }
    }

    /// What the progress display calls it.
    fn label(self, cx: &Cx<'_>) -> String {
        match self {
            Step::AuthorizedKey => "install your public key".into(),
            Step::KeyLogin => "log in with your key".into(),
            Step::Runc => "container runtime".into(),
            Step::Agent => format!("dt-agent for {}", cx.arch),
            Step::UdevRules => "udev rules".into(),
            Step::RobotYaml => "/etc/dt-agent/robot.yaml".into(),
            Step::DataConfig => "/data/config".into(),
            Step::Sudoers => "sudoers drop-in for dt-agent serve".into(),
            Step::HostKeys => "unique SSH host keys".into(),
            Step::SshPasswordLogin => "password SSH login off".into(),
            Step::SharedKey => "remove DT2018key".into(),
            Step::PasswordLock => format!("lock {}'s password", cx.user),
            Step::DockerStack => format!("record Docker's stack in {}", adopt::RECORD_PATH),
            Step::DockerTcp => "Docker API on TCP off".into(),
            Step::Hostname => format!("hostname {}", cx.args.hostname),
            Step::SystemdUnit => super::UNIT_PATH.into(),
            Step::AgentService => "enable and start dt-agent.service".into(),
            Step::AdoptImages => "Docker's images into the agent's store".into(),
            Step::AdoptStack => "Docker's stack as the agent's release".into(),
            Step::RemoveDocker => "remove Docker's packages and data root".into(),
            Step::Preload => "ship images".into(),
            Step::Marker => MARKER_PATH.into(),
        }
    }

    /// Whether the step is part of this run at all: the key login is tried only once the key
    /// is on the robot (a dry run on a fresh robot has not put it there), images are shipped
    /// only when asked for, Docker's stack is adopted only where there is one.
    fn wanted(self, cx: &Cx<'_>) -> bool {
        match self {
            Step::KeyLogin => cx.key_installed,
            Step::Preload => !cx.args.preload.is_empty(),
            Step::DockerStack | Step::AdoptImages | Step::AdoptStack => cx.docker.is_some(),
            Step::RemoveDocker => cx.args.remove_docker && cx.docker.is_some(),
            _ => true,
        }
    }

    /// Looks at the robot; changes nothing.
    async fn check(self, cx: &mut Cx<'_>) -> Result<Plan> {
        match self {
            Step::AuthorizedKey => harden::check_authorized_key(cx).await,
            Step::KeyLogin => harden::check_key_login(cx).await,
            Step::Runc => install::check_runc(cx).await,
            Step::Agent => install::check_agent(cx).await,
            Step::UdevRules => install::check_udev_rules(cx).await,
            Step::RobotYaml => install::check_robot_yaml(cx).await,
            Step::DataConfig => install::check_data_config(cx).await,
            Step::Sudoers => harden::check_sudoers(cx).await,
            Step::HostKeys => harden::check_host_keys(cx).await,
            Step::SshPasswordLogin => harden::check_ssh_password_login(cx).await,
            Step::SharedKey => harden::check_shared_key(cx).await,
            Step::PasswordLock => harden::check_password_lock(cx).await,
            Step::DockerStack => adopt::check_record(cx).await,
            Step::DockerTcp => harden::check_docker_tcp(cx).await,
            Step::Hostname => install::check_hostname(cx).await,
            Step::SystemdUnit => install::check_systemd_unit(cx).await,
            Step::AgentService => install::check_agent_service(cx).await,
            Step::AdoptImages => adopt::check_images(cx).await,
            Step::AdoptStack => adopt::check_stack(cx).await,
            Step::RemoveDocker => adopt::check_remove(cx).await,
            Step::Preload => install::check_preload(cx).await,
            Step::Marker => install::check_marker(cx).await,
        }
    }

    /// Makes the change `plan` describes (and may correct its account of what changed).
    async fn apply(self, cx: &mut Cx<'_>, plan: &mut Plan) -> Result<()> {
        match self {
            Step::AuthorizedKey => harden::apply_authorized_key(cx).await,
            Step::KeyLogin => Ok(()),
            Step::Runc => install::apply_runc(cx).await,
            Step::Agent => install::apply_agent(cx).await,
            Step::UdevRules => install::apply_udev_rules(cx, plan).await,
            Step::RobotYaml => install::apply_robot_yaml(cx, plan).await,
            Step::DataConfig => install::apply_data_config(cx, plan).await,
            Step::Sudoers => harden::apply_sudoers(cx, plan).await,
            Step::HostKeys => harden::apply_host_keys(cx, plan).await,
            Step::SshPasswordLogin => harden::apply_ssh_password_login(cx, plan).await,
            Step::SharedKey => harden::apply_shared_key(cx).await,
            Step::PasswordLock => harden::apply_password_lock(cx, plan).await,
            Step::DockerStack => adopt::apply_record(cx).await,
            Step::DockerTcp => harden::apply_docker_tcp(cx, plan).await,
            Step::Hostname => install::apply_hostname(cx).await,
            Step::SystemdUnit => install::apply_systemd_unit(cx).await,
            Step::AgentService => install::apply_agent_service(cx, plan).await,
            Step::AdoptImages => adopt::apply_images(cx).await,
            Step::AdoptStack => adopt::apply_stack(cx, plan).await,
            Step::RemoveDocker => adopt::apply_remove(cx, plan).await,
            Step::Preload => install::apply_preload(cx, plan).await,
            Step::Marker => install::apply_marker(cx, plan).await,
        }
    }
}

/// What the steps share: the robot, who logs in and how, what was detected, and the outcomes so
/// far.
pub(super) struct Cx<'a> {
    pub(super) args: &'a ProvisionArgs,
    pub(super) reporter: &'a dyn Reporter,
    pub(super) robot: Robot<'a>,
    pub(super) target: Target,
    pub(super) opts: SshOptions,
    pub(super) key: UserKey,
    pub(super) user: String,
    /// The login user's uid as `id -u` printed it.
    pub(super) uid: String,
    pub(super) arch: AgentArch,
    pub(super) agent: AgentBinary,
    pub(super) profile: RobotProfile,
    pub(super) os: String,
    /// No marker was found: nothing of an earlier provision can be taken for granted.
    pub(super) first_provision: bool,
    /// The marker's content before this run (empty when none).
    pub(super) marker_before: String,
    /// A shell expression for the login user's home directory.
    pub(super) home_of: String,
    pub(super) known_file: PathBuf,
    pub(super) host: String,
    pub(super) port: u16,
    /// The user's key is in authorized_keys (or will be before anything needs it).
    pub(super) key_installed: bool,
    pub(super) dry: bool,
    pub(super) notes: Vec<String>,
    pub(super) list: Vec<StepReport>,
    /// What Docker ran before adoption: the record, or (until the `docker-stack` step writes
    /// it) what Docker runs now; `None`: no Docker stack and no record.
    pub(super) docker: Option<adopt::DockerStack>,
    /// `docker` holds a record read from the robot, not one still to write.
    pub(super) docker_recorded: bool,
    /// One line per privilege or mount the adoption dropped.
    pub(super) warnings: Vec<String>,
    /// The release the adoption committed in this run.
    pub(super) adopted_release: Option<u64>,
}

impl<'a> Cx<'a> {
    /// Detects what the robot is (kernel, CPU, OS, how to become root, an earlier provision)
    /// over `session`, failing before anything is changed when it cannot be provisioned.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn detect(
        args: &'a ProvisionArgs,
        reporter: &'a dyn Reporter,
        session: &'a Session,
        target: Target,
        opts: SshOptions,
        key: UserKey,
        user: String,
        profile: RobotProfile,
    ) -> Result<Cx<'a>> {
        reporter.event(Event::start("detect", "detect arch, OS and sudo", None));
        let addr = session.addr().to_owned();
        let out = session
            .run("uname -s; uname -m; (. /etc/os-release 2>/dev/null && echo \"${PRETTY_NAME:-unknown}\") || echo unknown; id -u")
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines().map(str::trim);
        let kernel = lines.next().unwrap_or_default().to_owned();
        let machine = lines.next().unwrap_or_default().to_owned();
        let os = lines.next().unwrap_or("unknown").to_owned();
        let uid = lines.next().unwrap_or_default().to_owned();
        if kernel != "Linux" {
            return Err(ProvisionError::NotLinux { addr, kernel }.into());
        }
        let arch =
            AgentArch::from_uname(&machine).ok_or_else(|| ProvisionError::UnsupportedArch {
                addr: addr.clone(),
                machine: machine.clone(),
            })?;
        let agent = find_agent(arch)?;
        let root = become_root(session, &uid, args, &addr, &user).await?;
        let robot = Robot {
            session,
            root,
            addr: addr.clone(),
        };
        let marker_before = robot
            .root_ok(
                "detect",
                &format!("cat {MARKER_PATH} 2>/dev/null || true"),
                &[],
            )
            .await?;
        let first_provision = marker_before.trim().is_empty();
        let home_of = format!(
            "$(getent passwd {u} | cut -d: -f6)",
            u = super::sh_quote(&user)
        );
        let mut cx = Cx {
            args,
            reporter,
            robot,
            known_file: opts.user_known_hosts(),
            host: target_host(&addr),
            port: target_port(&addr),
            target,
            opts,
            key,
            user,
            uid,
            arch,
            agent,
            profile,
            os: os.clone(),
            first_provision,
            marker_before,
            home_of,
            key_installed: false,
            dry: args.dry_run,
            notes: Vec::new(),
            list: Vec::new(),
            docker: None,
            docker_recorded: false,
            warnings: Vec::new(),
            adopted_release: None,
        };
        if !args.restore_docker {
            adopt::detect(&mut cx).await?;
        }
        cx.done(
            "detect",
            false,
            format!(
                "{machine} ({arch}), {os}, {}",
                if first_provision {
                    "not provisioned"
                } else {
                    "provisioned before"
                }
            ),
        );
        Ok(cx)
    }

    /// Runs every step of [`STEPS`]: check, then (unless a dry run) apply.
    pub(super) async fn run_steps(&mut self) -> Result<()> {
        for &step in STEPS {
            if !step.wanted(self) {
                continue;
            }
            let label = step.label(self);
            self.reporter
                .event(Event::start(step.name(), label.as_str(), None));
            let mut plan = step.check(self).await?;
            if plan.act && !self.dry {
                step.apply(self, &mut plan).await?;
            }
            self.done(step.name(), plan.change, plan.detail);
        }
        Ok(())
    }

    /// `--restore-docker`: the one step of that mode ([`adopt::restore`]).
    pub(super) async fn restore_docker(&mut self) -> Result<()> {
        let name = "restore-docker";
        self.reporter
            .event(Event::start(name, "give the robot back to Docker", None));
        let changed = adopt::restore(self).await?;
        let detail = if changed.is_empty() {
            "Docker's stack already runs as recorded; nothing changed".to_owned()
        } else {
            changed.join("; ")
        };
        self.done(name, !changed.is_empty(), detail);
        Ok(())
    }

    /// Records a step's outcome and reports it.
    fn done(&mut self, step: &str, changed: bool, detail: String) {
        let outcome = match (changed, self.dry) {
            (false, _) => "ok",
            (true, false) => "changed",
            (true, true) => "would change",
        };
        self.reporter.event(Event::finish(step, outcome));
        self.list.push(StepReport {
            step: step.to_owned(),
            changed,
            detail,
        });
    }

    /// Whether `step` changed something in this run.
    pub(super) fn changed(&self, step: &str) -> bool {
        self.list.iter().any(|s| s.step == step && s.changed)
    }
}

/// How the login user becomes root: it is root, `sudo -n` works, or sudo takes the password
/// `--password-stdin` gave.
async fn become_root(
    session: &Session,
    uid: &str,
    args: &ProvisionArgs,
    addr: &str,
    user: &str,
) -> Result<Root> {
    if uid == "0" {
        return Ok(Root::Already);
    }
    if session.run("sudo -n true").await?.status.success() {
        return Ok(Root::NoPassword);
    }
    let no_sudo = |password_given| ProvisionError::NoSudo {
        addr: addr.to_owned(),
        user: user.to_owned(),
        password_given,
    };
    let Some(pw) = &args.password else {
        return Err(no_sudo(false).into());
    };
    let out = session
        .run_with_input("sudo -k -S -p '' true", format!("{pw}\n").as_bytes())
        .await?;
    if !out.status.success() {
        return Err(no_sudo(true).into());
    }
    Ok(Root::Password(pw.clone()))
}
