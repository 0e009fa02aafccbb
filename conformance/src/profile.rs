//! Run profiles: what a reviewer certifies against, written once and kept
//! with the audit (the target, how to reach it, and the failures the
//! deployment is known and allowed to have, each with its reason), and the
//! rules of a certified run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::report::Report;
use crate::{Check, Outcome, Target};

/// A failure the deployment is known to have, and why it is accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFailure {
    pub check: String,
    pub reason: String,
}

/// A YAML profile. Paths are relative to the profile's own directory.
/// Credentials are named by file only, never written into the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub target: Option<String>,
    pub base_url: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub admin_token_a_file: Option<PathBuf>,
    pub admin_token_b_file: Option<PathBuf>,
    pub database: Option<String>,
    pub agent_bin: Option<PathBuf>,
    /// The NATS server the deployment relays its events to.
    pub nats_url: Option<String>,
    pub nats_stream: Option<String>,
    #[serde(default)]
    pub allow_waits: bool,
    #[serde(default)]
    pub expected_failures: Vec<ExpectedFailure>,
}

impl Profile {
    /// Reads and checks a profile: every expected failure names a check of
    /// the catalogue, once, with a reason.
    pub fn load(path: &Path, catalogue: &[Check]) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("profile {}: {e}", path.display()))?;
        let mut profile: Profile =
            serde_norway::from_str(&text).map_err(|e| format!("profile {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut profile.ca_bundle,
            &mut profile.admin_token_a_file,
            &mut profile.admin_token_b_file,
            &mut profile.agent_bin,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &profile.expected_failures {
            if !catalogue.iter().any(|c| c.id == f.check) {
                return Err(format!(
                    "profile {}: expected failure {:?} is not a check of this catalogue",
                    path.display(),
                    f.check
                ));
            }
            if f.reason.trim().is_empty() {
                return Err(format!(
                    "profile {}: expected failure {} has no reason",
                    path.display(),
                    f.check
                ));
            }
            if !seen.insert(f.check.as_str()) {
                return Err(format!("profile {}: {} is declared twice", path.display(), f.check));
            }
        }
        Ok(profile)
    }

    pub fn expected(&self) -> BTreeMap<&str, &str> {
        self.expected_failures.iter().map(|f| (f.check.as_str(), f.reason.as_str())).collect()
    }
}

/// Turns each declared failure into an expected failure, with its reason.
pub fn apply_expected_failures(report: &mut Report, expected: &BTreeMap<&str, &str>) {
    for r in &mut report.results {
        if let (Outcome::Fail(detail), Some(reason)) = (&r.outcome, expected.get(r.id.as_str())) {
            r.outcome = Outcome::ExpectedFailure(format!("{detail} (declared: {reason})"));
        }
    }
}

/// What keeps a run from certifying its target: a check the target could
/// run that did not run, a failure nobody declared, a declared failure
/// that passed (the profile is stale), or a run error.
pub fn certification_problems(
    report: &Report,
    target: Target,
    expected: &BTreeMap<&str, &str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for r in &report.results {
        match &r.outcome {
            Outcome::NotRequested(why) => {
                problems.push(format!("{}: the target could run it but this run did not ({why})", r.id))
            }
            Outcome::Fail(_) => {
                problems.push(format!("{}: failed, and the profile does not declare it", r.id))
            }
            Outcome::Pass if expected.contains_key(r.id.as_str()) => problems.push(format!(
                "{}: declared as an expected failure but passed; remove it from the profile",
                r.id
            )),
            _ => {}
        }
    }
    for id in expected.keys() {
        if !report.results.iter().any(|r| r.id == *id) {
            problems.push(format!(
                "{id}: declared as an expected failure but not run against the {target:?} target"
            ));
        }
    }
    problems.extend(report.run_errors.iter().map(|e| format!("run error: {e}")));
    problems.extend(report.cleanup_failures.iter().map(|e| format!("cleanup: {e}")));
    problems
}
