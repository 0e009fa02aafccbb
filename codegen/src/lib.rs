//! Validates the OneProtect contracts in `specs/` and generates the Rust in
//! `generated/src/` from them.
//!
//! The pipeline is `load` → rules (`openapi`, `events`, `examples`) →
//! `generate`. Every rule reports a [`Diagnostic`] naming the file, the JSON
//! pointer and the fix; nothing is generated from contracts that fail them.

pub mod bundle;
pub mod compat;
pub mod config;
pub mod diagnostics;
pub mod events;
pub mod examples;
pub mod gen_server;
pub mod generate;
pub mod load;
pub mod locate;
pub mod openapi;

use std::path::Path;

pub use diagnostics::{Diagnostic, Diagnostics};

/// Contracts that passed every rule, ready for generation.
#[derive(Debug, Clone)]
pub struct Contracts {
    /// The layout and conventions they were checked against.
    pub config: config::Config,
    pub raw: load::RawContracts,
    pub api: openapi::ApiModel,
    pub events: Vec<events::EventModel>,
    /// `components/schemas` as a JSON Schema bundle.
    pub bundle: serde_json::Value,
}

/// Loads and checks every contract under `specs_dir`.
/// Loads and checks every contract under `specs_dir` with the OneProtect
/// conventions (`config::Config::default()`).
pub fn validate(specs_dir: &Path, display_root: &str) -> Result<Contracts, Diagnostics> {
    let config = config::Config { specs: specs_dir.to_path_buf(), ..config::Config::default() };
    validate_with(&config, display_root)
}

/// Loads and checks the contract `config` describes.
pub fn validate_with(config: &config::Config, display_root: &str) -> Result<Contracts, Diagnostics> {
    validate_unlocated(config, display_root).map_err(|mut d| {
        d.locate(&config.specs, display_root);
        d
    })
}

fn validate_unlocated(config: &config::Config, display_root: &str) -> Result<Contracts, Diagnostics> {
    let raw = load::load(&config.specs, display_root, config.events)?;
    let mut diags = Diagnostics::default();
    let api = openapi::check(&raw, config, &mut diags);
    let events = if config.events { events::check(&raw, &mut diags) } else { Vec::new() };
    let bundle = bundle::openapi_bundle(&raw.openapi);
    if let Some(api) = &api {
        examples::check(&raw, api, &events, &bundle, &mut diags);
    }
    diags.into_result()?;
    let api = api.ok_or_else(Diagnostics::default)?;
    Ok(Contracts { config: config.clone(), raw, api, events, bundle })
}
