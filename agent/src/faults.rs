//! Deliberately faulty behaviours, each one rule broken the way a developer
//! could break it, so the conformance harness can prove that its agent
//! checks fail on them. Compiled only with the `fault-injection` feature,
//! which no release build enables: without it `active` is a constant
//! `false` and every hook compiles away.
//!
//! The harness builds a separate agent with the feature and chooses one
//! fault per process with `OPAGENT_FAULT_INJECTION=<name>`.

/// Every fault this build can inject, by the name the harness uses.
pub const NAMES: &[&str] = &[
    "certificate-world-readable",
    "token-left-in-config",
    "nonce-logged",
    "nonce-reused-on-retry",
    "exits-1-on-401",
    "exits-3-on-403",
    "heartbeat-ignores-retry-after",
    "exits-on-5xx",
    "sigterm-exits-1",
    "cpu-usage-summed-over-cores",
    "renewal-never-fires",
    "renewed-key-world-readable",
    "sigterm-ignored-while-waiting",
    "sequence-restarts-at-one",
    "enroll-ignores-retry-after",
    "follows-redirects",
    "reads-whole-body",
    "request-never-times-out",
    "no-client-certificate",
    "renewal-ignores-certificate",
];

#[cfg(feature = "fault-injection")]
pub fn active(name: &str) -> bool {
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    debug_assert!(NAMES.contains(&name), "unknown fault {name}");
    CHOSEN.get_or_init(|| std::env::var("OPAGENT_FAULT_INJECTION").ok()).as_deref() == Some(name)
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub const fn active(_name: &str) -> bool {
    false
}

/// Loosens a file's mode (the faults that leave a key readable).
pub fn loosen(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    #[cfg(not(unix))]
    let _ = path;
}
