//! The platform's behaviour, proven over HTTP against the real server, once
//! on SQLite and once on PostgreSQL (every test is generated for both).

mod harness;

mod batching;
mod exchange;
mod heartbeat;
mod isolation;
mod mtls;
mod pki;
mod redaction;
mod relay;
mod replicas;
mod retention;
mod tokens;
