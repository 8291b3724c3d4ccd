//! Client authentication, as OpenSSH orders it: the SSH agent's keys, then identity files
//! (`-i`, the config's `IdentityFile`, the default `~/.ssh/id_*`), then the password; RSA keys
//! signed with the strongest hash the server accepts. The error lists every attempt.

use super::*;

/// Agent keys, then identity files (`-i`, config, defaults), then the password. Stops at the
/// first success; otherwise the error lists every attempt.
pub(super) async fn authenticate(
    s: &mut Session,
    r: &Resolved,
    o: &SshOptions,
) -> Result<(), SshError> {
    let mut tried: Vec<String> = Vec::new();
    let mut offered: Vec<PublicKey> = Vec::new();
    // RSA signs with SHA-2 only (rsa-sha2-512/256): ssh-rsa (SHA-1) is refused by current
    // OpenSSH and we never offer it. Asked lazily: it waits for the server's EXT_INFO.
    let mut rsa_hash: Option<HashAlg> = None;
    let user = r.user.clone();

    // IdentitiesOnly: the agent may sign only with the identities' own keys.
    let only: Option<Vec<PublicKey>> = o.identities_only.then(|| {
        o.identities
            .iter()
            .filter_map(|p| {
                let public = std::fs::read_to_string(format!("{}.pub", p.display())).ok();
                match public.and_then(|t| PublicKey::from_openssh(t.trim()).ok()) {
                    Some(k) => Some(k),
                    None => match load_key(p, false) {
                        Ok(KeyFile::Key(k)) => Some(k.public_key().clone()),
                        _ => None,
                    },
                }
            })
            .collect()
    });
    if let Some(sock) = &o.agent_socket {
        match AgentClient::connect_uds(sock).await {
            Err(e) => tried.push(format!(
                "ssh-agent at `{}`: cannot connect: {e}",
                sock.display()
            )),
            Ok(mut agent) => match agent.request_identities().await {
                Err(e) => tried.push(format!("ssh-agent at `{}`: {e}", sock.display())),
                Ok(ids) if ids.is_empty() => tried.push(format!(
                    "ssh-agent at `{}`: it holds no keys",
                    sock.display()
                )),
                Ok(ids) => {
                    for id in ids {
                        let key = id.public_key().into_owned();
                        if let Some(only) = &only
                            && !only.iter().any(|k| k.key_data() == key.key_data())
                        {
                            continue;
                        }
                        let hash = rsa_hash_for(s, &key, &mut rsa_hash).await?;
                        let what = format!("agent key {}", describe_key(&key));
                        match s
                            .handle
                            .authenticate_publickey_with(&user, key.clone(), hash, &mut agent)
                            .await
                        {
                            Ok(res) if res.success() => return Ok(()),
                            Ok(_) => tried.push(format!("{what}: refused")),
                            Err(e) => tried.push(format!("{what}: the agent failed to sign: {e}")),
                        }
                        offered.push(key);
                        check_alive(s, &tried)?;
                    }
                }
            },
        }
    }

    let mut files: Vec<(PathBuf, bool)> = o.identities.iter().map(|p| (p.clone(), true)).collect();
    if !o.identities_only {
        files.extend(r.identity_files.iter().map(|p| (p.clone(), false)));
    }
    if o.default_identities && !o.identities_only {
        files.extend(DEFAULT_KEYS.iter().map(|k| (o.ssh_dir.join(k), false)));
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    for (path, explicit) in files {
        if seen.contains(&path) {
            continue;
        }
        seen.push(path.clone());
        let key = match load_key(&path, explicit)? {
            KeyFile::Missing => continue,
            KeyFile::Encrypted => {
                tried.push(format!(
                    "`{}`: passphrase-protected, and the agent did not hold it (run `ssh-add {}`)",
                    path.display(),
                    path.display()
                ));
                continue;
            }
            KeyFile::Bad(why) => {
                tried.push(format!("`{}`: {why}", path.display()));
                continue;
            }
            KeyFile::Key(k) => k,
        };
        let public = key.public_key().clone();
        if offered.iter().any(|k| k.key_data() == public.key_data()) {
            continue; // the agent already offered it: another try would only use up MaxAuthTries
        }
        let hash = rsa_hash_for(s, &public, &mut rsa_hash).await?;
        let what = format!("`{}` ({})", path.display(), describe_key(&public));
        let res = s
            .handle
            .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(*key), hash))
            .await;
        match res {
            Ok(res) if res.success() => return Ok(()),
            Ok(_) => tried.push(format!("{what}: refused")),
            Err(e) => {
                tried.push(format!("{what}: {}", describe(&e)));
                return Err(auth_error(s, tried));
            }
        }
        offered.push(public);
        check_alive(s, &tried)?;
    }

    if let Some(pw) = &o.password {
        match s.handle.authenticate_password(&user, pw).await {
            Ok(res) if res.success() => return Ok(()),
            Ok(_) => tried.push("password: refused".into()),
            Err(e) => tried.push(format!("password: {}", describe(&e))),
        }
    }
    Err(auth_error(s, tried))
}

fn auth_error(s: &Session, mut tried: Vec<String>) -> SshError {
    if let Some(reason) = lock(&s.shared).disconnect.clone() {
        tried.push(format!("then {reason}"));
    }
    SshError::Auth {
        addr: s.addr.clone(),
        user: s.user.clone(),
        tried,
    }
}

/// Stops trying once the server hung up (sshd's MaxAuthTries), with what was tried so far.
fn check_alive(s: &Session, tried: &[String]) -> Result<(), SshError> {
    if s.handle.is_closed() {
        return Err(auth_error(s, tried.to_vec()));
    }
    Ok(())
}

async fn rsa_hash_for(
    s: &Session,
    key: &PublicKey,
    cache: &mut Option<HashAlg>,
) -> Result<Option<HashAlg>, SshError> {
    if !key.algorithm().is_rsa() {
        return Ok(None);
    }
    if cache.is_none() {
        let best = s
            .handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| lost_or(&s.shared, &s.addr, e, "negotiating the RSA signature"))?;
        // A server that announces nothing still gets SHA-256: never SHA-1.
        *cache = Some(best.flatten().unwrap_or(HashAlg::Sha256));
    }
    Ok(*cache)
}

fn describe_key(k: &PublicKey) -> String {
    format!("{} {}", k.algorithm().as_str(), known_hosts::fingerprint(k))
}

enum KeyFile {
    Missing,
    Encrypted,
    Bad(String),
    Key(Box<PrivateKey>),
}

/// Reads a private key. Missing files are skipped unless given with `-i`, where a typo should
/// not silently fall through to other keys.
fn load_key(path: &Path, explicit: bool) -> Result<KeyFile, SshError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => return Ok(KeyFile::Missing),
        Err(e) if explicit => {
            return Err(SshError::Identity {
                path: path.to_owned(),
                message: format!("cannot read it: {e}"),
            });
        }
        Err(e) => return Ok(KeyFile::Bad(format!("cannot read it: {e}"))),
    };
    match russh::keys::decode_secret_key(&text, None) {
        Ok(k) => Ok(KeyFile::Key(Box::new(k))),
        Err(russh::keys::Error::KeyIsEncrypted) => Ok(KeyFile::Encrypted),
        Err(e) if explicit => Err(SshError::Identity {
            path: path.to_owned(),
            message: format!("not a private key we can use: {e}"),
        }),
        Err(e) => Ok(KeyFile::Bad(format!("not a usable private key: {e}"))),
    }
}
