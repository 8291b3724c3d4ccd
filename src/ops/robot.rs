//! Reaching a robot: a ROBOT argument resolved (a virtual Duckiebot's name, `[user@]host[:port]`,
//! or a bare hostname found over mDNS), an SSH session with pinned host keys, and
//! `dt-agent serve --stdio` on the other end speaking the wire protocol.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::verbs::RobotApi;
use crate::api::{Answer, LogLine, Request, decode};
use crate::ssh::{ExecChannel, Session, SshOptions, Target};
use crate::wire::RobotHello;
use crate::wire::client::Connection;

/// How long mDNS may take to find a robot by name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The SSH flags every robot command takes.
#[derive(Clone, Debug, Default)]
pub struct SshArgs {
    /// `-i`: an identity file to try first.
    pub identity: Option<PathBuf>,
    /// `--known-hosts`: the user's known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// `--accept-new-host-key`.
    pub accept_new_host_key: bool,
}

/// A robot with a session and the agent answering.
pub struct RobotLink {
    /// The name as given.
    pub name: String,
    /// Where we connected (`user@host:port`).
    pub target: Target,
    /// The SSH session (kept open for the connection's lifetime).
    pub session: Session,
    /// The agent.
    pub conn: Connection<ExecChannel>,
    /// What the agent said about the robot.
    pub hello: RobotHello,
}

/// Where `robot` is, and how to log in: sims first, then the argument itself, then mDNS for a
/// bare name.
pub fn resolve(robot: &str, args: &SshArgs) -> Result<(Target, SshOptions)> {
    let home = super::dts_home();
    let mut opts = SshOptions::from_env(&home);
    opts.accept_new_host_key = args.accept_new_host_key;
    if let Some(k) = &args.known_hosts {
        opts.known_hosts = Some(k.clone());
    }
    if let Some(i) = &args.identity {
        opts.identities.insert(0, i.clone());
    }
    if let Some(sim) = crate::sim::resolve(robot) {
        if !sim.is_running() {
            anyhow::bail!(
                "virtual Duckiebot `{robot}` is not running: `dts sim up {robot}` (or `dts sim down {robot}`)"
            );
        }
        if let Some(key) = crate::sim::identity_for(robot) {
            opts.identities.push(key);
        }
        return Ok((sim.target(), opts));
    }
    // The key `dts duckiebot provision` made for a user who had none is this user's key for
    // every robot it provisioned.
    let provisioned_key = home.join("robot_key");
    if provisioned_key.is_file() {
        opts.identities.push(provisioned_key);
    }
    let mut target = Target::parse(robot)?;
    let bare = !target.host.contains('.')
        && !target.host.contains(':')
        && target.host.parse::<IpAddr>().is_err()
        && target.host != "localhost";
    if bare {
        let found = crate::discover::browse::resolve_address(&target.host, RESOLVE_TIMEOUT)
            .with_context(|| {
                format!(
                    "cannot find robot `{}`: no `{}.local` answered and mDNS discovery found nothing in {}s (is it on and on this network? `dts fleet discover`)",
                    target.host,
                    target.host,
                    RESOLVE_TIMEOUT.as_secs()
                )
            })?;
        // Pinned by name, not by the address DHCP handed out this time (ssh/mod.rs).
        opts.host_key_alias = Some(format!(
            "{}.local",
            crate::discover::browse::robot_name(&target.host)
        ));
        if let crate::discover::browse::Resolved::Discovered(_, robot) = &found {
            opts.advertised_fingerprint = robot
                .agent
                .as_ref()
                .and_then(|a| a.host_key_fingerprint.clone());
        }
        target.host = found.address().to_string();
    }
    Ok((target, opts))
}

/// Connects to `robot` and starts the agent's protocol.
pub async fn connect(robot: &str, args: &SshArgs) -> Result<RobotLink> {
    let (target, opts) = resolve(robot, args)?;
    connect_resolved(robot, target, &opts).await
}

/// [`connect`] to a robot [`resolve`]d before (`dts fleet` resolves every robot once, up
/// front, rather than each task blocking on its own mDNS lookup).
pub async fn connect_resolved(robot: &str, target: Target, opts: &SshOptions) -> Result<RobotLink> {
    let session = Session::connect(&target, opts)
        .await
        .with_context(|| format!("robot `{robot}`"))?;
    let command = if session.user() == "root" {
        "dt-agent serve --stdio"
    } else {
        "sudo -n dt-agent serve --stdio"
    };
    let channel = session
        .exec(command)
        .await
        .with_context(|| format!("robot `{robot}`: starting `{command}`"))?;
    let (conn, hello) = Connection::open(channel).await.with_context(|| {
        format!(
            "robot `{robot}`: `{command}` did not answer; is dt-agent installed and may {} run it with sudo? (`dts duckiebot provision`)",
            session.user()
        )
    })?;
    Ok(RobotLink {
        name: robot.to_string(),
        target,
        session,
        conn,
        hello,
    })
}

/// Runs `work` (protocol traffic on `session`'s channel), failing it if the connection dies
/// first: a cut link must end a deploy with an error, never leave it waiting.
pub async fn guarded<T, E>(session: &Session, work: impl Future<Output = Result<T, E>>) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::select! {
        r = work => Ok(r?),
        lost = session.closed() => Err(lost.into()),
    }
}

/// The laptop's way to a robot's daemon: requests relayed by `dt-agent serve` over the wire,
/// each ended by a lost SSH connection rather than left waiting ([`guarded`]).
impl RobotApi for RobotLink {
    async fn request<T: Answer>(&mut self, req: &Request) -> Result<T> {
        let v = guarded(&self.session, self.conn.daemon(req)).await?;
        decode(v).with_context(|| format!("robot `{}`", self.name))
    }

    async fn stream_logs(
        &mut self,
        req: &Request,
        on_line: &mut (dyn FnMut(LogLine) + Send),
    ) -> Result<Option<i32>> {
        guarded(&self.session, self.conn.daemon_logs(req, on_line)).await
    }

    async fn request_with_notices<T: Answer>(
        &mut self,
        req: &Request,
        on_notice: &mut (dyn FnMut(String) + Send),
    ) -> Result<T> {
        let v = guarded(&self.session, self.conn.daemon_with_notices(req, on_notice)).await?;
        decode(v).with_context(|| format!("robot `{}`", self.name))
    }

    fn takes_notices(&self) -> bool {
        true
    }
}
