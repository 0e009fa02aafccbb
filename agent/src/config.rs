//! `agent.yaml`: where the platform is, where state lives, how often to
//! beat. Errors name the key. Environment variables override the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub const DEFAULT_INTERVAL_SECONDS: u64 = 60;
const MIN_INTERVAL_SECONDS: u64 = 1;
const MAX_INTERVAL_SECONDS: u64 = 86_400;
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 30;
const MIN_REQUEST_TIMEOUT_SECONDS: u64 = 1;
const MAX_REQUEST_TIMEOUT_SECONDS: u64 = 300;

#[cfg(windows)]
pub const DEFAULT_CONFIG_PATH: &str = r"C:\ProgramData\OneProtect\agent.yaml";
#[cfg(not(windows))]
pub const DEFAULT_CONFIG_PATH: &str = "/etc/oneprotect/agent.yaml";

#[cfg(windows)]
pub const DEFAULT_STATE_DIR: &str = r"C:\ProgramData\OneProtect\state";
#[cfg(not(windows))]
pub const DEFAULT_STATE_DIR: &str = "/var/lib/oneprotect";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    platform_url: Option<String>,
    enrollment_token: Option<String>,
    enrollment_token_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    heartbeat_interval: Option<u64>,
    request_timeout: Option<u64>,
    ca_bundle: Option<PathBuf>,
    log_level: Option<String>,
}

#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub platform_url: String,
    /// Present only until enrollment succeeds.
    pub enrollment_token: Option<SecretString>,
    pub enrollment_token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    /// Every call to the platform, connection included, ends within this.
    pub request_timeout: Duration,
    pub ca_bundle: Option<PathBuf>,
    pub log_level: String,
    /// The enrollment token came from the config file itself.
    pub token_in_file: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: `{key}` {reason}")]
    Key { path: String, key: &'static str, reason: String },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// `https://…`, or `http://` to a loopback host only.
pub fn check_platform_url(url: &str) -> Result<(), String> {
    let (scheme, rest) =
        url.split_once("://").ok_or("must be an absolute URL such as https://platform.example")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => authority,
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback_host(host) => Ok(()),
        "http" => Err("must use https (plain http is accepted only for loopback addresses)".into()),
        _ => Err("must start with https://".into()),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Unreadable { path: display.clone(), reason: e.to_string() })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let raw: RawConfig = if text.trim().is_empty() {
            serde_norway::from_str("{}")
                .map_err(|e| ConfigError::Invalid { path: display.clone(), reason: e.to_string() })?
        } else {
            serde_norway::from_str(text)
                .map_err(|e| ConfigError::Invalid { path: display.clone(), reason: e.to_string() })?
        };
        let key = |key: &'static str, reason: String| ConfigError::Key { path: display.clone(), key, reason };

        let platform_url = env("ONEPROTECT_AGENT_PLATFORM_URL")
            .or(raw.platform_url)
            .ok_or_else(|| key("platform_url", "is required".into()))?;
        let platform_url = platform_url.trim_end_matches('/').to_owned();
        check_platform_url(&platform_url).map_err(|r| key("platform_url", r))?;

        let heartbeat_interval = match env("ONEPROTECT_AGENT_HEARTBEAT_INTERVAL") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| key("heartbeat_interval", "must be a whole number of seconds".into()))?,
            None => raw.heartbeat_interval.unwrap_or(DEFAULT_INTERVAL_SECONDS),
        };
        if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&heartbeat_interval) {
            return Err(key(
                "heartbeat_interval",
                format!("must be between {MIN_INTERVAL_SECONDS} and {MAX_INTERVAL_SECONDS} seconds"),
            ));
        }

        let request_timeout = match env("ONEPROTECT_AGENT_REQUEST_TIMEOUT") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| key("request_timeout", "must be a whole number of seconds".into()))?,
            None => raw.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECONDS),
        };
        if !(MIN_REQUEST_TIMEOUT_SECONDS..=MAX_REQUEST_TIMEOUT_SECONDS).contains(&request_timeout) {
            return Err(key(
                "request_timeout",
                format!(
                    "must be between {MIN_REQUEST_TIMEOUT_SECONDS} and {MAX_REQUEST_TIMEOUT_SECONDS} seconds"
                ),
            ));
        }

        let log_level = env("ONEPROTECT_AGENT_LOG_LEVEL").or(raw.log_level).unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(key("log_level", "must be one of error, warn, info, debug, trace".into()));
        }

        let ca_bundle = env("ONEPROTECT_AGENT_CA_BUNDLE").map(PathBuf::from).or(raw.ca_bundle);
        if let Some(ca) = &ca_bundle
            && !ca.is_file()
        {
            return Err(key("ca_bundle", format!("{} is not a readable file", ca.display())));
        }

        let token_in_file = raw.enrollment_token.as_deref().is_some_and(|t| !t.trim().is_empty());
        let enrollment_token = env("ONEPROTECT_AGENT_ENROLLMENT_TOKEN")
            .or(raw.enrollment_token)
            .filter(|t| !t.trim().is_empty())
            .map(|t| SecretString::from(t.trim().to_owned()));
        Ok(Self {
            path: path.to_path_buf(),
            platform_url,
            token_in_file: token_in_file && env("ONEPROTECT_AGENT_ENROLLMENT_TOKEN").is_none(),
            enrollment_token,
            enrollment_token_file: env("ONEPROTECT_AGENT_ENROLLMENT_TOKEN_FILE")
                .map(PathBuf::from)
                .or(raw.enrollment_token_file),
            state_dir: env("ONEPROTECT_AGENT_STATE_DIR")
                .map(PathBuf::from)
                .or(raw.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            heartbeat_interval: Duration::from_secs(heartbeat_interval),
            request_timeout: Duration::from_secs(request_timeout),
            ca_bundle,
            log_level,
        })
    }
}

/// The config text without its top-level `enrollment_token` entry (and any
/// continuation lines of a multi-line value). Every other line, comments
/// included, is kept byte for byte.
pub fn remove_enrollment_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        let is_top_level_key = !line.starts_with([' ', '\t', '#']) && !line.trim().is_empty();
        if skipping {
            if is_top_level_key || line.trim_start().starts_with("---") {
                skipping = false;
            } else {
                continue;
            }
        }
        if is_top_level_key
            && (line.starts_with("enrollment_token:")
                || line.starts_with("\"enrollment_token\":")
                || line.starts_with("'enrollment_token':"))
        {
            skipping = true;
            continue;
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("agent.yaml"))
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = parse("platform_url: https://platform.example/\n").expect("valid");
        assert_eq!(c.platform_url, "https://platform.example");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(60));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert!(c.enrollment_token.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| parse(text).expect_err("invalid").to_string();
        assert!(err("state_dir: /tmp\n").contains("`platform_url` is required"));
        assert!(err("platform_url: http://platform.example\n").contains("`platform_url` must use https"));
        assert!(
            err("platform_url: https://p.example\nheartbeat_interval: 0\n")
                .contains("`heartbeat_interval` must be between")
        );
        assert!(
            err("platform_url: https://p.example\nheartbeat_interval: soon\n").contains("heartbeat_interval")
        );
        assert!(
            err("platform_url: https://p.example\nrequest_timeout: 0\n")
                .contains("`request_timeout` must be between 1 and 300")
        );
        assert!(
            err("platform_url: https://p.example\nrequest_timeout: 301\n")
                .contains("`request_timeout` must be between 1 and 300")
        );
        assert_eq!(
            parse("platform_url: https://p.example\nrequest_timeout: 300\n").map(|c| c.request_timeout),
            Ok(Duration::from_secs(300))
        );
        assert!(err("platform_url: https://p.example\nlog_level: loud\n").contains("`log_level`"));
        assert!(
            err("platform_url: https://p.example\nca_bundle: /nonexistent/ca.pem\n").contains("`ca_bundle`")
        );
        assert!(
            err("platform_url: https://p.example\nplatfrom_url: typo\n").contains("platfrom_url"),
            "unknown keys are named"
        );
    }

    #[test]
    fn plain_http_is_allowed_only_to_loopback() {
        assert!(check_platform_url("http://127.0.0.1:8080").is_ok());
        assert!(check_platform_url("http://localhost:8080").is_ok());
        assert!(check_platform_url("http://[::1]:8080").is_ok());
        assert!(check_platform_url("http://10.0.0.5:8080").is_err());
        assert!(check_platform_url("ftp://platform.example").is_err());
    }

    #[test]
    fn a_token_in_the_file_is_read_and_marked_for_removal() {
        let c = parse("platform_url: https://p.example\nenrollment_token: opet_fixture\n").expect("valid");
        assert_eq!(
            c.enrollment_token.as_ref().map(|t| t.expose_secret().to_owned()),
            Some("opet_fixture".into())
        );
        assert!(c.token_in_file);
        assert_eq!(format!("{:?}", c.enrollment_token), "Some(SecretBox<str>([REDACTED]))");
    }

    #[test]
    fn removing_the_token_keeps_every_other_line_and_comment() {
        let text = "# OneProtect agent\nplatform_url: https://p.example  # the platform\nenrollment_token: opet_fixture_value\nstate_dir: /var/lib/oneprotect\n# trailing comment\n";
        let out = remove_enrollment_token(text);
        assert_eq!(
            out,
            "# OneProtect agent\nplatform_url: https://p.example  # the platform\nstate_dir: /var/lib/oneprotect\n# trailing comment\n"
        );
        let multi = "platform_url: https://p.example\nenrollment_token: >-\n  opet_fixture_\n  folded\nheartbeat_interval: 30\n";
        assert_eq!(
            remove_enrollment_token(multi),
            "platform_url: https://p.example\nheartbeat_interval: 30\n"
        );
        let nested = "platform_url: https://p.example\nextra:\n  enrollment_token: not-top-level\n";
        assert_eq!(remove_enrollment_token(nested), nested, "only the top-level key is removed");
    }
}
