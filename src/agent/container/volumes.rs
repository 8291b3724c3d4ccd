//! Named volumes: `$DT_AGENT_ROOT/volumes/<name>/`, listed with the containers that mount
//! them, created on first use, removed only when no container mounts them.

use super::*;

impl Manager {
    /// Named volumes and the containers using them.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, ContainerError> {
        let dir = self.volumes_dir();
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in self.names()? {
            if let Ok(r) = self.record(&name) {
                for v in &r.config.volumes {
                    if let VolumeSource::Named(n) = &v.source {
                        users.entry(n.to_string()).or_default().push(name.clone());
                    }
                }
            }
        }
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at("list", &dir)? {
            let e = e.at("list", &dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            out.push(VolumeInfo {
                used_by: users.remove(&name).unwrap_or_default(),
                path: e.path(),
                name,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates a named volume (no-op when it exists).
    pub fn volume_create(&self, name: &str) -> Result<VolumeInfo, ContainerError> {
        check_name(name)?;
        let p = self.volumes_dir().join(name);
        crate::util::fs::create_dir_all(&p)?;
        Ok(VolumeInfo {
            name: name.to_string(),
            path: p,
            used_by: Vec::new(),
        })
    }

    /// Deletes a named volume and its data; refused while a container uses it.
    pub fn volume_remove(&self, name: &str) -> Result<(), ContainerError> {
        check_name(name)?;
        let _g = self.lock();
        let v = self
            .volumes()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ContainerError::Volume {
                name: name.into(),
                reason: "no such volume".into(),
            })?;
        if !v.used_by.is_empty() {
            return Err(ContainerError::Volume {
                name: name.into(),
                reason: format!("in use by {}: remove those first", v.used_by.join(", ")),
            });
        }
        fs::remove_dir_all(&v.path).at("remove", &v.path)?;
        Ok(())
    }
}
