//! The OneProtect endpoint agent: enroll once, then heartbeat host
//! telemetry; fail closed when the platform rejects the identity.
//!
//! It is a lightweight telemetry reporter — not a shell, patcher, deployer,
//! EDR or log forwarder.

pub mod backoff;
pub mod config;
pub mod enroll;
pub mod exit;
pub mod faults;
pub mod fingerprint;
pub mod platform;
pub mod run;
pub mod state;
pub mod telemetry;
