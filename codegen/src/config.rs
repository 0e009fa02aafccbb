//! `codegen.toml`: where a contract lives and the conventions it follows.
//! Every key is optional; the defaults are the OneProtect contracts'.
//!
//! ```toml
//! specs = "specs"                  # openapi.yaml (+ asyncapi.yaml, events/, examples/)
//! out = "generated/src"            # where `generate` writes
//! rustfmt_config = "rustfmt.toml"
//! events = true                    # false: an HTTP API without asyncapi.yaml and events/
//! name = "the OneProtect contracts"
//!
//! [problem]
//! schema = "Problem"               # the RFC 9457 error schema every 4xx/5xx uses
//! type_prefix = "urn:oneprotect:problem:"
//!
//! [statuses]                       # what every operation of a kind must document
//! every = [500]
//! authenticated = [401]
//! body = [400, 413, 415]
//! parameters = [400]
//! tenant_admin = [403]
//! tenant_admin_resource = [404]    # tenant-admin operations whose path names a resource
//! agent = [403]
//! ```
//!
//! Paths are relative to the directory holding the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file `oneprotect-codegen` reads when `--config` is not given.
pub const DEFAULT_FILE: &str = "codegen.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub specs: PathBuf,
    pub out: PathBuf,
    pub rustfmt_config: PathBuf,
    /// Whether the contract has events (`asyncapi.yaml`, `events/`, `examples/events/`).
    pub events: bool,
    /// How generated documentation names the contract.
    pub name: String,
    pub problem: Problem,
    pub statuses: Statuses,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Problem {
    /// The component schema of every 4xx/5xx body.
    pub schema: String,
    /// Prefix of its `type` URI; the code follows it.
    pub type_prefix: String,
}

/// The statuses an operation must document, by what it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Statuses {
    pub every: Vec<u16>,
    pub authenticated: Vec<u16>,
    pub body: Vec<u16>,
    pub parameters: Vec<u16>,
    pub tenant_admin: Vec<u16>,
    pub tenant_admin_resource: Vec<u16>,
    pub agent: Vec<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            specs: PathBuf::from("specs"),
            out: PathBuf::from("generated/src"),
            rustfmt_config: PathBuf::from("rustfmt.toml"),
            events: true,
            name: "the OneProtect contracts".to_string(),
            problem: Problem::default(),
            statuses: Statuses::default(),
        }
    }
}

impl Default for Problem {
    fn default() -> Self {
        Self { schema: "Problem".to_string(), type_prefix: "urn:oneprotect:problem:".to_string() }
    }
}

impl Default for Statuses {
    fn default() -> Self {
        Self {
            every: vec![500],
            authenticated: vec![401],
            body: vec![400, 413, 415],
            parameters: vec![400],
            tenant_admin: vec![403],
            tenant_admin_resource: vec![404],
            agent: vec![403],
        }
    }
}

impl Config {
    /// Reads `path`; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [&mut config.specs, &mut config.out, &mut config.rustfmt_config] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if config.problem.schema.is_empty() || !crate::openapi::is_pascal_ident(&config.problem.schema) {
            return Err(format!(
                "{}: problem.schema `{}` is not a PascalCase schema name",
                path.display(),
                config.problem.schema
            ));
        }
        Ok(config)
    }

    /// `--config` when given, else `codegen.toml` in the working directory
    /// when it exists, else the defaults.
    pub fn resolve(explicit: Option<&Path>) -> Result<Config, String> {
        match explicit {
            Some(p) => Config::load(p),
            None if Path::new(DEFAULT_FILE).is_file() => Config::load(Path::new(DEFAULT_FILE)),
            None => Ok(Config::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_oneprotect_defaults_and_an_unknown_key_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("codegen.toml");
        std::fs::write(&path, "").expect("write");
        let c = Config::load(&path).expect("loads");
        assert_eq!(c.problem, Problem::default());
        assert_eq!(c.statuses, Statuses::default());
        assert_eq!(c.specs, dir.path().join("specs"));
        std::fs::write(&path, "evnts = false\n").expect("write");
        assert!(Config::load(&path).expect_err("typo refused").contains("evnts"));
    }
}
