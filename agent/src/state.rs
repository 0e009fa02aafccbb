//! The agent's identity on disk: every file is created with mode 0600 (never
//! briefly wider), written to a temporary file, fsynced, renamed into place,
//! and the directory fsynced, so a crash leaves the old or the new version.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub const IDENTITY_FILE: &str = "identity.json";
pub const KEY_FILE: &str = "agent.key";
pub const TOKEN_FILE: &str = "runtime.token";
pub const CERTIFICATE_FILE: &str = "certificate.json";
/// The X.509 certificate the platform CA issued (PEM), presented for mutual TLS.
pub const CERTIFICATE_PEM_FILE: &str = "agent.pem";
/// The platform CA chain the exchange returned (PEM).
pub const CA_CHAIN_FILE: &str = "ca-chain.pem";
pub const SEQUENCE_FILE: &str = "sequence";
/// When the platform last accepted a heartbeat, and its sequence (for `status`).
pub const LAST_HEARTBEAT_FILE: &str = "last-heartbeat.json";

/// Non-secret facts about the enrolled identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub agent_id: uuid::Uuid,
    pub tenant_id: String,
    pub collector_id: uuid::Uuid,
    pub asset_id: uuid::Uuid,
    pub certificate_id: uuid::Uuid,
    pub platform_url: String,
    pub enrolled_at: DateTime<Utc>,
    /// When the current runtime token was issued (enrollment or rotation).
    pub runtime_token_issued_at: DateTime<Utc>,
    pub runtime_token_expires_at: DateTime<Utc>,
    pub runtime_token_key_id: String,
    /// The certificate's validity (absent for identities enrolled with a
    /// platform that issued no certificate).
    #[serde(default)]
    pub certificate_not_before: Option<DateTime<Utc>>,
    #[serde(default)]
    pub certificate_not_after: Option<DateTime<Utc>>,
}

/// Everything `run` needs.
pub struct AgentState {
    pub identity: Identity,
    pub runtime_token: SecretString,
    pub private_key_pem: SecretString,
    /// The certificate presented for mutual TLS, when the platform issued one.
    pub certificate_pem: Option<String>,
}

/// What the platform issued with an identity: the certificate record, and
/// the certificate and CA chain themselves.
pub struct IssuedCertificate<'a> {
    pub record: &'a serde_json::Value,
    pub certificate_pem: &'a str,
    pub ca_chain_pem: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} is readable by other users (mode {mode:o}); it must be 0600")]
    TooOpen { path: String, mode: u32 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.display().to_string(), source }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn is_enrolled(&self) -> bool {
        self.file(IDENTITY_FILE).exists()
    }

    /// Creates the directory owner-only (0700).
    pub fn ensure(&self) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// Atomically replaces `name` with `bytes`, owner-only from creation.
    pub fn write_private(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        write_private_atomic(&self.file(name), bytes)
    }

    fn read_private(&self, name: &str) -> Result<String, StateError> {
        let path = self.file(name);
        check_owner_only(&path)?;
        std::fs::read_to_string(&path).map_err(io(&path))
    }

    /// Persists a whole new identity (enrollment).
    pub fn save(
        &self,
        identity: &Identity,
        runtime_token: &SecretString,
        private_key_pem: &SecretString,
        certificate: &IssuedCertificate<'_>,
    ) -> Result<(), StateError> {
        self.ensure()?;
        self.write_private(KEY_FILE, private_key_pem.expose_secret().as_bytes())?;
        self.write_private(TOKEN_FILE, runtime_token.expose_secret().as_bytes())?;
        self.save_certificate(certificate)?;
        if !self.file(SEQUENCE_FILE).exists() {
            self.write_private(SEQUENCE_FILE, b"0")?;
        }
        // Written last: its presence means the identity is complete.
        self.write_private(IDENTITY_FILE, &serde_json::to_vec_pretty(identity).unwrap_or_default())
    }

    /// The certificate record, the certificate and the CA chain, 0600.
    pub fn save_certificate(&self, certificate: &IssuedCertificate<'_>) -> Result<(), StateError> {
        self.write_private(
            CERTIFICATE_FILE,
            &serde_json::to_vec_pretty(certificate.record).unwrap_or_default(),
        )?;
        self.write_private(CERTIFICATE_PEM_FILE, certificate.certificate_pem.as_bytes())?;
        self.write_private(CA_CHAIN_FILE, certificate.ca_chain_pem.as_bytes())?;
        if crate::faults::active("certificate-world-readable") {
            crate::faults::loosen(&self.file(CERTIFICATE_FILE));
        }
        Ok(())
    }

    pub fn load(&self) -> Result<AgentState, StateError> {
        let identity_path = self.file(IDENTITY_FILE);
        let identity: Identity = serde_json::from_str(&self.read_private(IDENTITY_FILE)?).map_err(|e| {
            StateError::Invalid { path: identity_path.display().to_string(), reason: e.to_string() }
        })?;
        let runtime_token = SecretString::from(self.read_private(TOKEN_FILE)?.trim().to_owned());
        let private_key_pem = SecretString::from(self.read_private(KEY_FILE)?);
        let certificate_pem = if self.file(CERTIFICATE_PEM_FILE).exists() {
            Some(self.read_private(CERTIFICATE_PEM_FILE)?)
        } else {
            None
        };
        Ok(AgentState { identity, runtime_token, private_key_pem, certificate_pem })
    }

    pub fn load_identity(&self) -> Result<Identity, StateError> {
        let path = self.file(IDENTITY_FILE);
        serde_json::from_str(&self.read_private(IDENTITY_FILE)?)
            .map_err(|e| StateError::Invalid { path: path.display().to_string(), reason: e.to_string() })
    }

    /// The next heartbeat sequence, persisted before it is used so a restart
    /// never reuses a number the platform already accepted.
    /// Records that the platform accepted heartbeat `sequence` at `at`.
    pub fn record_accepted_heartbeat(&self, sequence: u64, at: DateTime<Utc>) -> Result<(), StateError> {
        let text = serde_json::json!({ "accepted_at": at, "sequence": sequence }).to_string();
        self.write_private(LAST_HEARTBEAT_FILE, text.as_bytes())
    }

    /// The last accepted heartbeat, when one was recorded.
    pub fn last_accepted_heartbeat(&self) -> Option<serde_json::Value> {
        std::fs::read_to_string(self.file(LAST_HEARTBEAT_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    pub fn next_sequence(&self) -> Result<u64, StateError> {
        let path = self.file(SEQUENCE_FILE);
        let current = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| StateError::Invalid {
                path: path.display().to_string(),
                reason: "not a number".into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&path)(e)),
        };
        let next = current.saturating_add(1);
        self.write_private(SEQUENCE_FILE, next.to_string().as_bytes())?;
        Ok(next)
    }
}

/// Refuses secret files that other users could read.
pub fn check_owner_only(path: &Path) -> Result<(), StateError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StateError::TooOpen { path: path.display().to_string(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// temp file (0600 at creation) → write → fsync → rename → fsync directory.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        #[cfg(unix)]
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rewrites a file atomically keeping its current permissions (the config
/// after the enrollment token is removed).
pub fn rewrite_keeping_mode(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let permissions = std::fs::metadata(path).map_err(io(path))?.permissions();
    write_private_atomic(path, bytes)?;
    std::fs::set_permissions(path, permissions).map_err(io(path))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    fn identity() -> Identity {
        let t = DateTime::from_timestamp(1_790_000_000, 0).expect("time");
        Identity {
            agent_id: uuid::Uuid::from_u128(1),
            tenant_id: "tenant-fixture".into(),
            collector_id: uuid::Uuid::from_u128(2),
            asset_id: uuid::Uuid::from_u128(3),
            certificate_id: uuid::Uuid::from_u128(4),
            platform_url: "https://p.example".into(),
            enrolled_at: t,
            runtime_token_issued_at: t,
            runtime_token_expires_at: t,
            runtime_token_key_id: "k1".into(),
            certificate_not_before: Some(t),
            certificate_not_after: Some(t),
        }
    }

    fn fixture_certificate() -> IssuedCertificate<'static> {
        static RECORD: std::sync::LazyLock<serde_json::Value> =
            std::sync::LazyLock::new(|| serde_json::json!({}));
        IssuedCertificate {
            record: &RECORD,
            certificate_pem: "-----BEGIN CERTIFICATE-----\nfixture\n-----END CERTIFICATE-----\n",
            ca_chain_pem: "-----BEGIN CERTIFICATE-----\nfixture CA\n-----END CERTIFICATE-----\n",
        }
    }

    #[test]
    fn every_state_file_is_owner_only_and_the_directory_is_0700() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(tmp.path().join("state"));
        state
            .save(
                &identity(),
                &SecretString::from("fixture-token"),
                &SecretString::from("fixture-key"),
                &fixture_certificate(),
            )
            .expect("save");
        assert_eq!(mode(state.path()), 0o700);
        for f in [
            IDENTITY_FILE,
            KEY_FILE,
            TOKEN_FILE,
            CERTIFICATE_FILE,
            CERTIFICATE_PEM_FILE,
            CA_CHAIN_FILE,
            SEQUENCE_FILE,
        ] {
            assert_eq!(mode(&state.file(f)), 0o600, "{f}");
        }
        let loaded = state.load().expect("load");
        assert_eq!(loaded.identity, identity());
        assert_eq!(loaded.runtime_token.expose_secret(), "fixture-token");
    }

    #[test]
    fn files_are_never_briefly_wider_than_0600() {
        // A watcher scans the directory while files are written; a writer
        // that created with the default mode and chmod-ed afterwards would
        // be seen with group/other bits set.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut widest, mut seen) = (0u32, 0usize);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if let Ok(meta) = entry.metadata() {
                            widest |= meta.permissions().mode() & 0o077;
                            seen += 1;
                        }
                    }
                }
                (widest, seen)
            })
        };
        for i in 0..300 {
            write_private_atomic(&dir.join(format!("secret-{}", i % 3)), b"fixture").expect("write");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (widest, seen) = watcher.join().expect("watcher");
        assert!(seen > 0, "the watcher observed files");
        assert_eq!(widest, 0, "no file was ever readable by group or others");
    }

    #[test]
    fn replacement_is_atomic_and_leaves_no_temporary_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("runtime.token");
        write_private_atomic(&target, b"old").expect("write");
        write_private_atomic(&target, b"new").expect("replace");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "new");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_world_readable_secret_file_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(tmp.path());
        state
            .save(&identity(), &SecretString::from("t"), &SecretString::from("k"), &fixture_certificate())
            .expect("save");
        std::fs::set_permissions(state.file(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(state.load(), Err(StateError::TooOpen { mode: 0o644, .. })));
    }

    #[test]
    fn the_sequence_increases_across_reopenings() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(StateDir::new(tmp.path()).next_sequence().expect("seq"), 1);
        assert_eq!(StateDir::new(tmp.path()).next_sequence().expect("seq"), 2);
        assert_eq!(mode(&tmp.path().join(SEQUENCE_FILE)), 0o600);
    }
}
