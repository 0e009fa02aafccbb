//! The versioning policy: a breaking (or unclassified) change ships only
//! when the contract says it is intended.
//!
//! - `openapi.yaml`: its `info.version` major number is raised.
//! - `asyncapi.yaml`: its `info.version` major number is raised.
//! - An event schema file is never broken in place: events already in a
//!   stream were validated against it. The change goes into
//!   `<type>.v<N+1>.schema.json` beside the old file. Removing a version
//!   file needs an AsyncAPI major version.

use serde::Serialize;

use super::{Change, Level, Report, Spec, major_version};
use crate::load::{ASYNCAPI_FILE, EVENTS_DIR, OPENAPI_FILE};

/// A change the policy refuses, and how to resolve it.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub change: Change,
    pub resolution: String,
}

/// The changes of `report` that the versioning policy refuses.
pub fn judge(report: &Report, base: &Spec, rev: &Spec) -> Vec<Refusal> {
    let bumped = |file: &str| {
        let version = |s: &Spec| major_version(s.doc(file).and_then(|d| d.pointer("/info/version")));
        matches!((version(base), version(rev)), (Some(b), Some(r)) if r > b)
    };
    let api_major = bumped(OPENAPI_FILE);
    let events_major = bumped(ASYNCAPI_FILE);
    let mut refused = Vec::new();
    for c in report.changes.iter().filter(|c| matches!(c.level, Level::Breaking | Level::Unclassified)) {
        let resolution = if c.file == OPENAPI_FILE {
            (!api_major).then(|| next_major(base, OPENAPI_FILE, "the HTTP API"))
        } else if c.file == ASYNCAPI_FILE || c.rule == "event-schema-removed" {
            (!events_major).then(|| next_major(base, ASYNCAPI_FILE, "the event catalogue"))
        } else if c.file.starts_with(&format!("{EVENTS_DIR}/")) {
            Some(format!(
                "published event schemas are not broken in place: restore {EVENTS_DIR}/{} and put the change in {}",
                c.file.trim_start_matches(&format!("{EVENTS_DIR}/")),
                next_event_version(&c.file)
            ))
        } else {
            Some("review the change: no versioning rule covers this file".to_string())
        };
        if let Some(mut resolution) = resolution {
            if c.level == Level::Unclassified {
                resolution = format!(
                    "no rule classifies this change: if it is compatible, teach codegen/src/compat a rule for it; otherwise {resolution}"
                );
            }
            refused.push(Refusal { change: c.clone(), resolution });
        }
    }
    refused
}

fn next_major(base: &Spec, file: &str, what: &str) -> String {
    let major = major_version(base.doc(file).and_then(|d| d.pointer("/info/version"))).unwrap_or(0);
    format!(
        "make the change compatible, or declare a breaking release of {what}: set `info.version` in {file} to {}.0.0",
        major + 1
    )
}

/// `events/agent.enrolled.v1.schema.json` → `events/agent.enrolled.v2.schema.json`.
pub fn next_event_version(file: &str) -> String {
    let stem = file.trim_end_matches(".schema.json");
    match stem.rsplit_once(".v").and_then(|(t, v)| v.parse::<u32>().ok().map(|n| (t, n))) {
        Some((ty, n)) => format!("{ty}.v{}.schema.json", n + 1),
        None => format!("{stem}.v2.schema.json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_event_version_file_counts_up_from_the_current_one() {
        assert_eq!(
            next_event_version("events/agent.enrolled.v1.schema.json"),
            "events/agent.enrolled.v2.schema.json"
        );
        assert_eq!(
            next_event_version("events/agent.enrolled.v9.schema.json"),
            "events/agent.enrolled.v10.schema.json"
        );
    }
}
