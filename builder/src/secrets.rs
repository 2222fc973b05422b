//! Cluster secrets, kept beside the inventory (mode 0600) and never printed. The k3s token is
//! generated once and reused, because every node of a cluster must share it and it also
//! encrypts the etcd bootstrap data (back it up with the snapshots).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub k3s_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_s3_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_s3_secret_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sops_age_key: Option<String>,
    /// BMC accounts by node hostname (`power.<node>.username/password`). Only builder reads
    /// them; nothing here is rendered into the bundle.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub power: BTreeMap<String, PowerCredentials>,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PowerCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for PowerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PowerCredentials { .. redacted .. }")
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { .. redacted .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Default location: `<inventory stem>.secrets.yaml` beside the inventory, or
/// `./ironseed.secrets.yaml` for the embedded default inventory.
pub fn default_path(inventory: Option<&Path>) -> PathBuf {
    match inventory {
        Some(p) => {
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("inventory");
            p.with_file_name(format!("{stem}.secrets.yaml"))
        }
        None => PathBuf::from("ironseed.secrets.yaml"),
    }
}

impl Secrets {
    pub fn generate() -> Secrets {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        Secrets {
            // The first server accepts only the short (password) token form.
            k3s_token: images::bundle::hex(&bytes),
            etcd_s3_access_key: None,
            etcd_s3_secret_key: None,
            sops_age_key: None,
            power: BTreeMap::new(),
        }
    }

    /// Read the secrets file; `None` when it does not exist. Never writes.
    pub fn load(path: &Path) -> Result<Option<Secrets>, SecretsError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SecretsError::Io {
                    path: shown,
                    source,
                });
            }
        };
        let s: Secrets = serde_saphyr::from_str(&text).map_err(|e| {
            // Only the location: serde-saphyr's snippet would print the secret line.
            let loc = e
                .location()
                .map(|l| format!("line {} column {}: ", l.line(), l.column()))
                .unwrap_or_default();
            SecretsError::Invalid {
                path: shown.clone(),
                message: format!("{loc}not a valid secrets file (keys: k3s_token, etcd_s3_access_key, etcd_s3_secret_key, sops_age_key, power)"),
            }
        })?;
        if s.k3s_token.len() < 16 || s.k3s_token.contains(char::is_whitespace) {
            return Err(SecretsError::Invalid {
                path: shown,
                message: "k3s_token must be at least 16 characters without spaces".into(),
            });
        }
        Ok(Some(s))
    }

    /// Read the secrets file, or create it with a fresh token when it does not exist.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Secrets, bool), SecretsError> {
        if let Some(s) = Secrets::load(path)? {
            return Ok((s, false));
        }
        let shown = path.display().to_string();
        let s = Secrets::generate();
        let mut text = String::from(
            "# ironseed cluster secrets. Keep this file private and backed up together with\n\
             # the etcd snapshots: the token also encrypts the cluster's bootstrap data.\n",
        );
        text.push_str(
            &serde_saphyr::to_string(&s).map_err(|e| SecretsError::Invalid {
                path: shown.clone(),
                message: e.to_string(),
            })?,
        );
        // write_atomic's temporary file is created 0600 (mkstemp), so the token is never
        // readable by others, not even before the final rename.
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(|source| {
            SecretsError::Io {
                path: shown,
                source,
            }
        })?;
        Ok((s, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_reused_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lab.secrets.yaml");
        let (a, created) = Secrets::load_or_create(&p).unwrap();
        assert!(created);
        let (b, created) = Secrets::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(a.k3s_token, b.k3s_token);
        assert_eq!(a.k3s_token.len(), 48);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn debug_and_errors_never_show_the_token() {
        let s = Secrets::generate();
        assert!(!format!("{s:?}").contains(&s.k3s_token));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.secrets.yaml");
        std::fs::write(&p, "k3s_token: supersecretvalue123\nwrong: 1\n").unwrap();
        let e = Secrets::load_or_create(&p).unwrap_err().to_string();
        assert!(!e.contains("supersecretvalue123"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    /// Protects the BMC passwords: neither Debug of the secrets nor of one account, nor a parse
    /// error in the `power:` section, prints them.
    #[test]
    fn power_credentials_are_read_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lab.secrets.yaml");
        std::fs::write(
            &p,
            "k3s_token: 0123456789abcdef0123\npower:\n  r730:\n    username: root\n    password: calvin-hunter2\n",
        )
        .unwrap();
        let s = Secrets::load(&p).unwrap().unwrap();
        let c = &s.power["r730"];
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("root", "calvin-hunter2")
        );
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        std::fs::write(
            &p,
            "k3s_token: 0123456789abcdef0123\npower:\n  r730:\n    password: calvin-hunter2\n    pin: 1\n",
        )
        .unwrap();
        let e = Secrets::load(&p).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn default_path_sits_beside_the_inventory() {
        assert_eq!(
            default_path(Some(Path::new("/etc/ironseed/lab.yaml"))),
            PathBuf::from("/etc/ironseed/lab.secrets.yaml")
        );
    }
}
