//! The OneProtect platform server: enrollment tokens, the token-for-identity
//! exchange, identity-bound heartbeat, certificate rotation, audit and
//! events, on SQLite (embedded) or PostgreSQL (row-level security).
//!
//! Layers, outermost first: `http` (the generated `Api` trait, translation
//! only) → `service` (the rules) → `store` (one atomic write per use case).
//! `csr`, `runtime_token`, `admin_auth` and `secrets` are the security
//! primitives the rules use.

pub mod admin_auth;
pub mod app;
pub mod clock;
pub mod config;
pub mod csr;
pub mod error;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod ratelimit;
pub mod relay;
pub mod retention;
pub mod runtime_token;
pub mod secrets;
pub mod service;
pub mod source;
pub mod store;
pub mod tls;
