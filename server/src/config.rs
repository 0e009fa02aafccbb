//! Configuration from flags and `ONEPROTECT_*` variables. Secrets come from
//! the environment or files, never from flags (flags show up in `ps`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::secrets::{MIN_KEY_BYTES, b64, random_bytes};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_SQLITE_FILE: &str = "oneprotect.db";
pub const DEFAULT_ISSUER: &str = "oneprotect-dev";
pub const DEFAULT_AUDIENCE: &str = "oneprotect-api";
pub const DEV_SECRETS_FILE: &str = ".oneprotect-dev/secrets.json";
/// The development directory (secrets, development CA), owner-only.
pub const DEV_DIR: &str = ".oneprotect-dev";

/// Which database a URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: Option<&str>) -> Result<Self, String> {
        match url {
            None | Some("") => Ok(Self::Sqlite(PathBuf::from(DEFAULT_SQLITE_FILE))),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Self::Postgres(u.to_owned()))
            }
            Some(u) => {
                let path = u.strip_prefix("sqlite://").or_else(|| u.strip_prefix("sqlite:")).unwrap_or(u);
                if path.is_empty() {
                    return Err("the SQLite URL names no file".into());
                }
                Ok(Self::Sqlite(PathBuf::from(path)))
            }
        }
    }
}

impl DatabaseUrl {
    /// What the logs may say about the store: its kind and, for SQLite, the
    /// file; never a PostgreSQL URL, which can carry a password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite {}", path.display()),
            Self::Postgres(_) => "postgres".to_owned(),
        }
    }
}

/// The database URL: the flag or `ONEPROTECT_DATABASE_URL`, else the
/// contents of the file `ONEPROTECT_DATABASE_URL_FILE` names, else — in
/// development mode only — the default SQLite file.
pub fn database_url(given: Option<&str>, dev: bool) -> Result<String, String> {
    if let Some(u) = given.filter(|u| !u.is_empty()) {
        return Ok(u.to_owned());
    }
    if let Some(bytes) = env_secret("ONEPROTECT_DATABASE_URL")? {
        return String::from_utf8(bytes)
            .map_err(|_| "ONEPROTECT_DATABASE_URL_FILE holds no UTF-8 text".to_owned());
    }
    if dev {
        return Ok(DEFAULT_SQLITE_FILE.to_owned());
    }
    Err("no database is configured: set ONEPROTECT_DATABASE_URL (or ONEPROTECT_DATABASE_URL_FILE); outside development mode the server does not create ./oneprotect.db by itself".into())
}

/// `ONEPROTECT_*` variables read outside the command-line definitions.
const OTHER_VARIABLES: [&str; 8] = [
    "ONEPROTECT_LOG",
    "ONEPROTECT_DATABASE_URL_FILE",
    "ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET",
    "ONEPROTECT_AGENT_RUNTIME_TOKEN_PREVIOUS_SECRETS",
    "ONEPROTECT_ADMIN_JWT_SECRET",
    "ONEPROTECT_ADMIN_JWT_PUBLIC_KEY_FILE",
    "ONEPROTECT_ADMIN_JWKS_FILE",
    "ONEPROTECT_TOKEN_HASH_KEY",
];

/// `ONEPROTECT_*` variables in `vars` that nothing reads (a typo would
/// otherwise fall back to a default silently). `cli` names the variables
/// the command line reads; every secret also has its `_FILE` form.
pub fn unknown_variables(vars: impl Iterator<Item = String>, cli: &[String]) -> Vec<String> {
    let known = |name: &str| {
        let base = name.strip_suffix("_FILE").unwrap_or(name);
        cli.iter().any(|c| c == name) || OTHER_VARIABLES.contains(&name) || OTHER_VARIABLES.contains(&base)
    };
    let mut unknown: Vec<String> = vars.filter(|v| v.starts_with("ONEPROTECT_") && !known(v)).collect();
    unknown.sort();
    unknown
}

/// Where the admin JWT verification key comes from.
#[derive(Debug, Clone)]
pub enum AdminKeySource {
    Hs256Secret(Vec<u8>),
    PublicKeyPem(PathBuf),
    Jwks(PathBuf),
}

/// Secret material as read from the environment.
#[derive(Debug, Default)]
pub struct SecretInputs {
    pub runtime_secret: Option<Vec<u8>>,
    pub runtime_previous: Vec<Vec<u8>>,
    pub admin_key: Option<AdminKeySource>,
    pub token_hash_key: Option<Vec<u8>>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `NAME` or the contents of the file named by `NAME_FILE`.
pub fn env_secret(name: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(v) = env(name) {
        return Ok(Some(v.into_bytes()));
    }
    if let Some(path) = env(&format!("{name}_FILE")) {
        let bytes = std::fs::read(&path).map_err(|e| format!("{name}_FILE: cannot read {path}: {e}"))?;
        let trimmed = String::from_utf8_lossy(&bytes).trim_end().as_bytes().to_vec();
        return Ok(Some(trimmed));
    }
    Ok(None)
}

fn check_len(name: &str, v: &[u8]) -> Result<(), String> {
    if v.len() < MIN_KEY_BYTES {
        return Err(format!(
            "{name} must be at least {MIN_KEY_BYTES} bytes (generate one with `openssl rand -base64 48`)"
        ));
    }
    Ok(())
}

impl SecretInputs {
    pub fn from_env() -> Result<Self, String> {
        let runtime_secret = env_secret("ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET")?;
        if let Some(s) = &runtime_secret {
            check_len("ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET", s)?;
        }
        let runtime_previous: Vec<Vec<u8>> = env_secret("ONEPROTECT_AGENT_RUNTIME_TOKEN_PREVIOUS_SECRETS")?
            .map(|v| {
                String::from_utf8_lossy(&v)
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default();
        for p in &runtime_previous {
            check_len("each ONEPROTECT_AGENT_RUNTIME_TOKEN_PREVIOUS_SECRETS entry", p)?;
        }
        let admin_key = if let Some(s) = env_secret("ONEPROTECT_ADMIN_JWT_SECRET")? {
            check_len("ONEPROTECT_ADMIN_JWT_SECRET", &s)?;
            Some(AdminKeySource::Hs256Secret(s))
        } else if let Some(p) = env("ONEPROTECT_ADMIN_JWT_PUBLIC_KEY_FILE") {
            Some(AdminKeySource::PublicKeyPem(PathBuf::from(p)))
        } else {
            env("ONEPROTECT_ADMIN_JWKS_FILE").map(|p| AdminKeySource::Jwks(PathBuf::from(p)))
        };
        let token_hash_key = env_secret("ONEPROTECT_TOKEN_HASH_KEY")?;
        if let Some(k) = &token_hash_key {
            check_len("ONEPROTECT_TOKEN_HASH_KEY", k)?;
        }
        Ok(Self { runtime_secret, runtime_previous, admin_key, token_hash_key })
    }

    pub fn is_empty(&self) -> bool {
        self.runtime_secret.is_none()
            && self.runtime_previous.is_empty()
            && self.admin_key.is_none()
            && self.token_hash_key.is_none()
    }
}

/// Development secrets, generated once and kept (mode 0600) next to the
/// SQLite file so that a restart keeps tokens and identities valid.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DevSecrets {
    pub admin_jwt_secret: String,
    pub runtime_token_secret: String,
    pub token_hash_key: String,
}

impl DevSecrets {
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()));
        }
        let secrets = Self {
            admin_jwt_secret: b64(&random_bytes::<48>()),
            runtime_token_secret: b64(&random_bytes::<48>()),
            token_hash_key: b64(&random_bytes::<48>()),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            // Owner-only, as the secrets inside it.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
        let text = serde_json::to_string_pretty(&secrets).map_err(|e| e.to_string())?;
        write_private(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(secrets)
    }
}

/// Creates a file readable only by its owner (0600 from creation on Unix).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
