//! Keeping containers as their restart policies say: adopting the shims an earlier daemon left
//! ([`Manager::resume`]) and, every few hundred milliseconds, reaping exits and restarting
//! with back-off ([`Manager::supervise`]).

use super::*;

impl Manager {
    /// The daemon's first pass: adopts what an earlier daemon left running and, as Docker
    /// does when its daemon starts, brings back `restart: always` containers that were stopped
    /// by hand (`unless-stopped` ones stay stopped).
    pub fn resume(&self) -> Vec<String> {
        for name in self.names().unwrap_or_default() {
            let _g = self.lock();
            let (Ok(record), Ok(mut state)) = (self.record(&name), self.state(&name)) else {
                continue;
            };
            if record.config.restart == RestartPolicy::Always
                && state.stopped_by_user
                && state.status == Status::Exited
            {
                state.stopped_by_user = false;
                if let Err(e) = self.save_state(&name, &state) {
                    return vec![format!("{name}: {e}")];
                }
            }
        }
        self.supervise()
    }

    /// Notices exited containers and applies restart policies; the daemon calls this a few
    /// times a second.
    pub fn supervise(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let Ok(names) = self.names() else {
            return notes;
        };
        for name in names {
            match self.supervise_one(&name) {
                Ok(Some(note)) => notes.push(note),
                Ok(None) => {}
                // Removed meanwhile.
                Err(ContainerError::NotFound(_)) => {}
                Err(e) => notes.push(format!("{name}: {e}")),
            }
        }
        notes
    }

    pub(super) fn supervise_one(&self, name: &str) -> Result<Option<String>, ContainerError> {
        let _g = self.lock();
        let record = self.record(name)?;
        let mut state = self.state(name)?;
        let now = Instant::now();
        if state.status == Status::Running {
            if self.alive(name) {
                return Ok(None);
            }
            let exit: Option<ExitRecord> = read_json(&self.dir(name).join("exit.json")).ok();
            // The shim deletes the runtime's container; without a shim (killed, or power lost)
            // it is ours to delete.
            let _ = self.runtime.delete(record.rid());
            let _ = unmount(&self.dir(name).join("rootfs"));
            state.status = Status::Exited;
            state.pid = None;
            state.exit_code = exit.as_ref().map(|e| e.code);
            state.finished_at = Some(
                exit.map(|e| e.finished_at)
                    .unwrap_or_else(|| crate::util::time::rfc3339(crate::util::time::now_secs())),
            );
            self.save_state(name, &state)?;
            if self.should_restart(&record.config, &state) {
                let ran = state
                    .started_at
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map(|t| crate::util::time::now_secs() - t)
                    .unwrap_or(0);
                let delay = if ran as u64 >= BACKOFF_RESET.as_secs() {
                    Duration::ZERO
                } else {
                    backoff(state.restart_count)
                };
                self.inner()
                    .restart_at
                    .insert(name.to_string(), now + delay);
            } else if record.config.auto_remove {
                drop(_g);
                self.remove(name, true)?;
                return Ok(Some(format!("{name}: exited, removed")));
            }
            return Ok(Some(format!(
                "{name}: exited with {}",
                state
                    .exit_code
                    .map_or("an unknown status".to_string(), |c| format!("code {c}"))
            )));
        }
        let mut due = self.inner().restart_at.get(name).copied();
        // Back-offs live in this process: a restart an earlier daemon had scheduled (or a
        // policy restart whose start failed) is scheduled again here.
        if due.is_none()
            && state.status == Status::Exited
            && self.should_restart(&record.config, &state)
        {
            let at = now + backoff(state.restart_count);
            self.inner().restart_at.insert(name.to_string(), at);
            due = Some(at);
        }
        if let Some(at) = due
            && at <= now
        {
            self.inner().restart_at.remove(name);
            if state.status == Status::Exited && self.should_restart(&record.config, &state) {
                return match self.start_locked(name, true, None) {
                    Ok(_) => Ok(Some(format!("{name}: restarted by its policy"))),
                    Err(e) => {
                        // Try again later, backing off further.
                        let mut s = self.state(name)?;
                        s.restart_count += 1;
                        self.save_state(name, &s)?;
                        self.inner()
                            .restart_at
                            .insert(name.to_string(), now + backoff(s.restart_count));
                        Ok(Some(format!("{name}: restart failed: {e}")))
                    }
                };
            }
        }
        Ok(None)
    }

    pub(super) fn should_restart(&self, cfg: &ContainerConfig, state: &State) -> bool {
        if state.stopped_by_user {
            return false;
        }
        match cfg.restart {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                state.exit_code != Some(0) && max_retries.is_none_or(|m| state.restart_count < m)
            }
        }
    }
}
