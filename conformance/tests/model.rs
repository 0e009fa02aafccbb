//! Random sequences of operations (issue, revoke, exchange, heartbeat,
//! rotate, revoke agent, cross-tenant read, advance clock) run against a
//! small reference model of the rules and against the real server on both
//! backends; every status must agree. proptest shrinks a failing sequence
//! to a short, readable list of operations.

use oneprotect_contracts::contract::ops;
use std::collections::BTreeSet;

use chrono::Duration;
use oneprotect_conformance::local;
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Op {
    IssueToken { tenant_b: bool, max_uses: u32 },
    RevokeToken { token: usize },
    Exchange { token: usize, reuse_last_nonce: bool },
    Heartbeat { agent: usize, repeat_sequence: bool },
    Rotate { agent: usize },
    RevokeAgent { agent: usize, as_tenant_b: bool },
    ReadAgent { agent: usize, as_tenant_b: bool },
    AdvanceClock { minutes: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), 1u32..=3).prop_map(|(tenant_b, max_uses)| Op::IssueToken { tenant_b, max_uses }),
        1 => (0usize..8).prop_map(|token| Op::RevokeToken { token }),
        4 => (0usize..8, any::<bool>()).prop_map(|(token, reuse_last_nonce)| Op::Exchange { token, reuse_last_nonce }),
        3 => (0usize..8, any::<bool>()).prop_map(|(agent, repeat_sequence)| Op::Heartbeat { agent, repeat_sequence }),
        1 => (0usize..8).prop_map(|agent| Op::Rotate { agent }),
        1 => (0usize..8, any::<bool>()).prop_map(|(agent, as_tenant_b)| Op::RevokeAgent { agent, as_tenant_b }),
        1 => (0usize..8, any::<bool>()).prop_map(|(agent, as_tenant_b)| Op::ReadAgent { agent, as_tenant_b }),
        1 => (1i64..=12).prop_map(|minutes| Op::AdvanceClock { minutes }),
    ]
}

/// The rules of DESIGN section 4, as little code as possible.
#[derive(Default)]
struct Model {
    now_minutes: i64,
    tokens: Vec<ModelToken>,
    agents: Vec<ModelAgent>,
    used_nonces: BTreeSet<(bool, String)>,
    last_nonce: Option<String>,
}

struct ModelToken {
    tenant_b: bool,
    max_uses: u32,
    uses: u32,
    revoked: bool,
    expires_minutes: i64,
    secret: String,
    id: String,
}

struct ModelAgent {
    tenant_b: bool,
    revoked: bool,
    last_sequence: u64,
    id: String,
    runtime: String,
}

impl Model {
    fn token_valid(&self, t: &ModelToken) -> bool {
        !t.revoked && self.now_minutes < t.expires_minutes && t.uses < t.max_uses
    }
}

async fn run_sequence(database: Option<&str>, ops: &[Op]) -> Result<(), String> {
    let platform = local::start(database, None).await.map_err(|e| e.to_string())?;
    let ctx = &platform.ctx;
    let clock = ctx.local.clock.clone().ok_or("no clock")?;
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let mismatch = |expected: u16, actual: u16, code: &str| {
            format!("step {step} {op:?}: model says {expected}, server answered {actual} {code}")
        };
        match op {
            Op::IssueToken { tenant_b, max_uses } => {
                let (secret, id) = ctx.issue_token(tenant(*tenant_b), *max_uses).await?;
                m.tokens.push(ModelToken {
                    tenant_b: *tenant_b,
                    max_uses: *max_uses,
                    uses: 0,
                    revoked: false,
                    expires_minutes: m.now_minutes + 10,
                    secret,
                    id,
                });
            }
            Op::RevokeToken { token } => {
                let Some(t) = m.tokens.get_mut(*token) else { continue };
                let admin = ctx.admin(tenant(t.tenant_b)).to_owned();
                let a =
                    ctx.call(&ops::revoke_enrollment_token(&t.id), Some(&admin), Some(&json!({}))).await?;
                if a.status != 200 {
                    return Err(mismatch(200, a.status, a.code()));
                }
                t.revoked = true;
            }
            Op::Exchange { token, reuse_last_nonce } => {
                let Some(t) = m.tokens.get(*token) else { continue };
                let mut body = ctx.exchange_body(&t.secret).expect("a well-formed exchange body");
                if let (true, Some(n)) = (*reuse_last_nonce, &m.last_nonce) {
                    body["nonce"] = json!(n);
                }
                let nonce = body["nonce"].as_str().unwrap_or_default().to_owned();
                m.last_nonce = Some(nonce.clone());
                let expected = if !m.token_valid(t) {
                    401
                } else if m.used_nonces.contains(&(t.tenant_b, nonce.clone())) {
                    409
                } else {
                    201
                };
                let a = ctx.exchange(&body).await?;
                if a.status != expected {
                    return Err(mismatch(expected, a.status, a.code()));
                }
                if expected == 201 {
                    let tenant_b = t.tenant_b;
                    m.tokens[*token].uses += 1;
                    m.used_nonces.insert((tenant_b, nonce));
                    let id = a.body["agent"]["agent_id"].as_str().unwrap_or_default().to_owned();
                    let runtime = a.body["runtime_token"]["token"].as_str().unwrap_or_default().to_owned();
                    m.agents.push(ModelAgent { tenant_b, revoked: false, last_sequence: 0, id, runtime });
                }
            }
            Op::Heartbeat { agent, repeat_sequence } => {
                let Some(ag) = m.agents.get_mut(*agent) else { continue };
                let sequence = if *repeat_sequence && ag.last_sequence > 0 {
                    ag.last_sequence
                } else {
                    ag.last_sequence + 1
                };
                let a = ctx.heartbeat(&ag.id, &ag.runtime, sequence).await?;
                let expected = if ag.revoked { 403 } else { 200 };
                if a.status != expected {
                    return Err(mismatch(expected, a.status, a.code()));
                }
                if expected == 200 {
                    let duplicate = sequence <= ag.last_sequence;
                    if a.body["duplicate"] != duplicate {
                        return Err(format!(
                            "step {step} {op:?}: duplicate flag {} but the model says {duplicate}",
                            a.body["duplicate"]
                        ));
                    }
                    ag.last_sequence = ag.last_sequence.max(sequence);
                }
            }
            Op::Rotate { agent } => {
                let Some(ag) = m.agents.get_mut(*agent) else { continue };
                let nonce = oneprotect_conformance::random_nonce();
                let body = json!({"csr_pem": oneprotect_conformance::ctx::p256_csr(), "nonce": nonce});
                let a =
                    ctx.call(&ops::rotate_agent_certificate(&ag.id), Some(&ag.runtime), Some(&body)).await?;
                let expected = if ag.revoked { 403 } else { 200 };
                if a.status != expected {
                    return Err(mismatch(expected, a.status, a.code()));
                }
                if expected == 200 {
                    ag.runtime = a.body["runtime_token"]["token"].as_str().unwrap_or_default().to_owned();
                    m.used_nonces.insert((ag.tenant_b, nonce));
                }
            }
            Op::RevokeAgent { agent, as_tenant_b } => {
                let Some(ag) = m.agents.get_mut(*agent) else { continue };
                let a = ctx
                    .call(&ops::revoke_agent(&ag.id), Some(ctx.admin(tenant(*as_tenant_b))), Some(&json!({})))
                    .await?;
                let expected = if *as_tenant_b == ag.tenant_b { 200 } else { 404 };
                if a.status != expected {
                    return Err(mismatch(expected, a.status, a.code()));
                }
                if expected == 200 {
                    ag.revoked = true;
                }
            }
            Op::ReadAgent { agent, as_tenant_b } => {
                let Some(ag) = m.agents.get(*agent) else { continue };
                let a =
                    ctx.call(&ops::get_agent(&ag.id), Some(ctx.admin(tenant(*as_tenant_b))), None).await?;
                let expected = if *as_tenant_b == ag.tenant_b { 200 } else { 404 };
                if a.status != expected {
                    return Err(mismatch(expected, a.status, a.code()));
                }
                if expected == 200 {
                    let status = if ag.revoked {
                        "revoked"
                    } else if ag.last_sequence > 0 {
                        "active"
                    } else {
                        "enrolled"
                    };
                    if a.body["status"] != status {
                        return Err(format!(
                            "step {step} {op:?}: status {} but the model says {status}",
                            a.body["status"]
                        ));
                    }
                }
            }
            Op::AdvanceClock { minutes } => {
                clock.advance(Duration::minutes(*minutes));
                m.now_minutes += minutes;
            }
        }
    }
    // Final state: every token's use count agrees.
    for t in &m.tokens {
        let tokens = ctx.list(tenant(t.tenant_b), oneprotect_conformance::ctx::Listing::Tokens).await?;
        let listed = tokens
            .iter()
            .find(|x| x["enrollment_token_id"] == t.id.as_str())
            .ok_or("token missing from its tenant's list")?;
        if listed["use_count"].as_u64() != Some(u64::from(t.uses)) {
            return Err(format!(
                "token {} has use_count {} but the model says {}",
                t.id, listed["use_count"], t.uses
            ));
        }
    }
    Ok(())
}

fn cases(default: u32) -> u32 {
    std::env::var("ONEPROTECT_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn check(database: Option<&str>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    rt.block_on(run_sequence(database, &ops)).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_server_on_sqlite_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..30)) {
        check(None, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(6), max_shrink_iters: 50, ..ProptestConfig::default() })]

    #[test]
    fn the_server_on_postgres_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..30)) {
        let url = std::env::var("ONEPROTECT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        check(Some(&url), ops)?;
    }
}

fn tenant(b: bool) -> oneprotect_conformance::Tenant {
    if b { oneprotect_conformance::Tenant::B } else { oneprotect_conformance::Tenant::A }
}
