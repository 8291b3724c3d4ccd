//! Running CNI plugins: a chain of ADDs (each ADD result the next one's `prevResult`) or DELs in
//! reverse, each plugin exec'd with the CNI 1.0 environment and its configuration on stdin.

use super::*;

impl Network {
    /// Run `cmd` through every plugin of `config` (DEL in reverse). ADD chains results through
    /// `prevResult` and returns the last; CHECK and DEL give every plugin `prev` (the cached
    /// ADD result). DEL goes on after a failing plugin, so that as much as possible is cleaned
    /// up, and returns the first error.
    pub(super) fn run_chain(
        &self,
        cmd: Cmd,
        container_id: &str,
        netns: Option<&Path>,
        config: &Value,
        ports: &[PortMapping],
        prev: Option<&Value>,
    ) -> Result<Value, NetError> {
        let mut list: Vec<&Value> = plugins(config).collect();
        if cmd == Cmd::Del {
            list.reverse();
        }
        let mut prev = prev.cloned();
        let mut first_err = None;
        for plugin in list {
            if cmd == Cmd::Check && CHECK_SKIPS.contains(&plugin_type(plugin)) {
                continue;
            }
            let stdin = plugin_config(config, plugin, prev.as_ref(), ports);
            match self.exec_plugin(cmd, plugin_type(plugin), container_id, netns, &stdin) {
                Ok(result) if cmd == Cmd::Add => prev = Some(result),
                Ok(_) => {}
                Err(e) if cmd == Cmd::Del => {
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(prev.unwrap_or(Value::Null)),
        }
    }

    /// Execute one plugin (SPEC.md "Execution protocol"): parameters in `CNI_*` variables, the
    /// configuration on stdin, a result or an error on stdout. The plugin inherits this thread's
    /// network namespace, which is the "host" side it configures.
    pub(super) fn exec_plugin(
        &self,
        cmd: Cmd,
        plugin: &str,
        container_id: &str,
        netns: Option<&Path>,
        stdin: &Value,
    ) -> Result<Value, NetError> {
        let path = self.find_plugin(plugin)?;
        let mut c = Command::new(&path);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                c.env_remove(key);
            }
        }
        let cni_path = std::env::join_paths(&self.plugin_dirs).unwrap_or_default();
        c.env("CNI_COMMAND", cmd.as_str())
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns.map(Path::as_os_str).unwrap_or_default())
            .env("CNI_IFNAME", CONTAINER_IFNAME)
            .env("CNI_PATH", cni_path)
            .env("PATH", path_with_sbin())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|source| NetError::Spawn {
            path: path.clone(),
            source,
        })?;
        let bytes = serde_json::to_vec(stdin).expect("a JSON value serialises");
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading its input shows up in its exit status.
            match input.write_all(&bytes) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(NetError::Spawn { path, source: e });
                }
                _ => {}
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|source| NetError::Spawn { path, source })?;
        if !out.status.success() {
            if let Ok(e) = serde_json::from_slice::<CniError>(&out.stdout) {
                return Err(NetError::Plugin {
                    plugin: plugin.to_owned(),
                    command: cmd.as_str(),
                    container: container_id.to_owned(),
                    code: e.code,
                    msg: e.msg,
                    details: e.details,
                });
            }
            let text = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
                &out.stderr
            } else {
                &out.stdout
            };
            return Err(NetError::PluginCrashed {
                plugin: plugin.to_owned(),
                command: cmd.as_str(),
                container: container_id.to_owned(),
                status: out.status.to_string(),
                stderr: tail(text),
            });
        }
        if cmd != Cmd::Add {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|source| NetError::BadResult {
            plugin: plugin.to_owned(),
            command: cmd.as_str(),
            source,
        })
    }
}
