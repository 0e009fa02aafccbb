use chrono::Duration;
use oneprotect_contracts::contract::ProblemCode;
use oneprotect_contracts::contract::ops;
use serde_json::json;

use super::{BOTH, LOCAL};
use crate::ctx::Listing;
use crate::{Check, Checked, Ctx, Tenant, Verdict, ensure, expect_problem};

/// Run after every other check that exchanges: once the limit trips, the
/// run's own address is refused for the rest of the window.
pub(super) const RATE_LIMIT_CHECKS: &[Check] = &[check!(
    "fail-closed.failed-exchanges-are-rate-limited",
    FailClosed,
    BOTH,
    "repeated failed exchanges are answered 429 with a Retry-After before 200 attempts",
    failed_exchanges_rate_limited
)];

pub(super) const CHECKS: &[Check] = &[
    check!(
        "fail-closed.missing-bearer-is-401",
        FailClosed,
        BOTH,
        "every protected operation without a bearer is 401 unauthenticated",
        missing_bearer
    ),
    check!(
        "fail-closed.credential-judged-before-body",
        FailClosed,
        BOTH,
        "a protected operation with a bad credential and a malformed body is 401: nothing is judged before the credential",
        credential_before_body
    ),
    check!(
        "fail-closed.alg-none-admin-token-rejected",
        FailClosed,
        BOTH,
        "an unsigned (alg none) admin token is 401",
        alg_none
    ),
    check!(
        "fail-closed.forged-admin-token-rejected",
        FailClosed,
        BOTH,
        "an admin token signed with another key is 401",
        forged_admin
    ),
    check!(
        "fail-closed.tampered-runtime-token-rejected",
        FailClosed,
        BOTH,
        "a runtime token with a changed payload or signature is 401",
        tampered_runtime
    ),
    check!(
        "fail-closed.wrong-scope-runtime-token-rejected",
        FailClosed,
        LOCAL,
        "a validly signed runtime token of another scope is 403 scope_forbidden",
        wrong_scope
    ),
    check!(
        "fail-closed.admin-token-at-agent-endpoint-rejected",
        FailClosed,
        BOTH,
        "an admin JWT presented to an agent endpoint is 403 not_service_account",
        admin_at_agent
    ),
    check!(
        "fail-closed.revoked-identity-refused",
        FailClosed,
        BOTH,
        "after revocation the agent's next heartbeat is 403 identity_revoked",
        revoked_identity
    ),
    check!(
        "fail-closed.revoked-token-refused",
        FailClosed,
        BOTH,
        "a revoked enrollment token is refused with the uniform 401",
        revoked_token
    ),
    check!(
        "fail-closed.malformed-csr-keeps-the-token",
        FailClosed,
        BOTH,
        "a broken CSR is 400 csr_invalid and consumes no token use",
        malformed_csr
    ),
    check!(
        "fail-closed.malformed-and-oversize-bodies-rejected",
        FailClosed,
        BOTH,
        "malformed JSON is 400, an oversize body 413, a wrong media type 415, all as Problem",
        bad_bodies
    ),
    check!(
        "fail-closed.identity-override-rejected",
        FailClosed,
        BOTH,
        "a heartbeat body carrying identity fields is 400 identity_override_rejected",
        identity_override
    ),
    check!(
        "fail-closed.viewer-cannot-write",
        FailClosed,
        LOCAL,
        "a tenant_viewer can list but every write operation is 403 forbidden and changes nothing",
        viewer
    ),
    check!(
        "fail-closed.collector-binding-enforced",
        FailClosed,
        LOCAL,
        "a runtime token bound to another collector or asset is 403 collector_mismatch",
        collector_binding
    ),
    check!(
        "fail-closed.missing-runtime-secret-is-503",
        FailClosed,
        LOCAL,
        "without the runtime secret the exchange is 503 and writes nothing",
        missing_secret
    ),
    check!(
        "fail-closed.unknown-routes-are-problems",
        FailClosed,
        BOTH,
        "unknown paths are 404 and wrong methods 405, as Problem JSON",
        unknown_routes
    ),
];

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

pub async fn missing_bearer(ctx: &Ctx) -> Checked {
    let id = uuid::Uuid::new_v4();
    for op in oneprotect_contracts::contract::OPERATIONS.iter().filter(|o| o.security.is_some()) {
        let route = op.route(|_| id.to_string());
        let body = op.request_schema.map(|_| json!({}));
        let a = ctx.call(&route, None, body.as_ref()).await?;
        expect_problem(&a, 401, ProblemCode::Unauthenticated).map_err(|e| e.context(op.operation_id))?;
    }
    Ok(())
}

/// A credential no deployment issues: well-formed for each scheme, signed by nobody.
const NOT_A_CREDENTIAL_ADMIN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjb25mb3JtYW5jZSJ9.bm90LWEtc2lnbmF0dXJl";
const NOT_A_CREDENTIAL_RUNTIME: &str = "oprt.v1.conformance.e30.bm90LWEtc2lnbmF0dXJl";

pub async fn credential_before_body(ctx: &Ctx) -> Checked {
    let id = uuid::Uuid::new_v4().to_string();
    let mut tried = 0;
    for op in oneprotect_contracts::contract::OPERATIONS
        .iter()
        .filter(|o| o.security.is_some() && o.request_schema.is_some())
    {
        let route = op.route(|_| id.clone());
        let (bearer, expected) = match op.security {
            // Where agents authenticate by certificate, the missing one is judged first.
            Some("agentRuntimeBearer") if op.client_certificate && ctx.agent_auth().needs_certificate() => {
                (NOT_A_CREDENTIAL_RUNTIME, ProblemCode::Unauthenticated)
            }
            Some("agentRuntimeBearer") => (NOT_A_CREDENTIAL_RUNTIME, ProblemCode::RuntimeTokenInvalid),
            _ => (NOT_A_CREDENTIAL_ADMIN, ProblemCode::Unauthenticated),
        };
        // An array is no object schema's instance: judged first, it would be 400.
        let a = ctx.call_raw(&route, Some(bearer), Some(("[]".into(), "application/json"))).await?;
        if a.status == 400 {
            return Err(format!("{}: got 400 {} for a bad credential", op.operation_id, a.code()).into());
        }
        expect_problem(&a, 401, expected).map_err(|e| e.context(op.operation_id))?;
        tried += 1;
    }
    ensure(tried >= 4, format!("only {tried} protected operations with a body in the contract"))
}

/// The issuer, audience and tenant of credential A: forgeries that differ
/// from a genuine credential only in how they are signed.
fn genuine_claims(ctx: &Ctx) -> Result<serde_json::Value, Verdict> {
    use base64::Engine;
    let payload = ctx.admin(Tenant::A).split('.').nth(1).ok_or("the admin credential is not a JWT")?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).map_err(|e| e.to_string())?;
    let genuine: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok(json!({"sub": "attacker@conformance", "tenant_id": genuine["tenant_id"], "roles": ["tenant_admin"],
              "exp": genuine["exp"], "iss": genuine["iss"], "aud": genuine["aud"]}))
}

pub async fn alg_none(ctx: &Ctx) -> Checked {
    let claims = genuine_claims(ctx)?;
    for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "None"}), json!({"alg": "nOnE"})] {
        let token = format!("{}.{}.", b64(&header), b64(&claims));
        expect_problem(
            &ctx.call(&ops::list_agents(), Some(&token), None).await?,
            401,
            ProblemCode::Unauthenticated,
        )?;
    }
    Ok(())
}

pub async fn forged_admin(ctx: &Ctx) -> Checked {
    let claims: oneprotect_server::admin_auth::AdminClaims =
        serde_json::from_value(genuine_claims(ctx)?).map_err(|e| e.to_string())?;
    let key = crate::random_nonce() + &crate::random_nonce();
    let forged =
        oneprotect_server::admin_auth::mint_hs256(key.as_bytes(), &claims).map_err(|e| e.to_string())?;
    expect_problem(
        &ctx.call(&ops::list_agents(), Some(&forged), None).await?,
        401,
        ProblemCode::Unauthenticated,
    )?;
    let parts: Vec<&str> = ctx.admin(Tenant::A).split('.').collect();
    ensure(parts.len() == 3, "the admin credential is a JWT")?;
    let mut payload: serde_json::Value = {
        use base64::Engine;
        let bytes =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?
    };
    payload["tenant_id"] = json!("tenant-zz-conformance");
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    expect_problem(
        &ctx.call(&ops::list_agents(), Some(&tampered), None).await?,
        401,
        ProblemCode::Unauthenticated,
    )
}

/// Checks whose premise is that the runtime token is the agent's
/// credential do not apply where the certificate alone is.
fn runtime_token_is_a_credential(ctx: &Ctx) -> Checked {
    match ctx.agent_auth() {
        crate::ctx::AgentAuth::Mtls => Err(Verdict::Skip(
            "the deployment authenticates agents by their certificate alone (ONEPROTECT_AGENT_AUTH=mtls): a runtime token is no credential there".into(),
        )),
        _ => Ok(()),
    }
}

pub async fn tampered_runtime(ctx: &Ctx) -> Checked {
    runtime_token_is_a_credential(ctx)?;
    let (agent, runtime, _) = ctx.enroll(Tenant::A).await?;
    let parts: Vec<&str> = runtime.split('.').collect();
    ensure(parts.len() == 5, "runtime tokens have five parts")?;
    let flipped = if parts[4].starts_with('A') { "B" } else { "A" };
    let bad_sig = format!("{}.{}.{}.{}.{flipped}{}", parts[0], parts[1], parts[2], parts[3], &parts[4][1..]);
    expect_problem(&ctx.heartbeat(&agent, &bad_sig, 1).await?, 401, ProblemCode::RuntimeTokenInvalid)?;
    let mut claims: serde_json::Value = {
        use base64::Engine;
        let bytes =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[3]).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?
    };
    claims["exp"] = json!(claims["exp"].as_i64().unwrap_or(0) + 86_400 * 365);
    let bad_payload = format!("{}.{}.{}.{}.{}", parts[0], parts[1], parts[2], b64(&claims), parts[4]);
    expect_problem(&ctx.heartbeat(&agent, &bad_payload, 2).await?, 401, ProblemCode::RuntimeTokenInvalid)?;
    let unknown_key = format!("{}.{}.kconformance0.{}.{}", parts[0], parts[1], parts[3], parts[4]);
    expect_problem(&ctx.heartbeat(&agent, &unknown_key, 3).await?, 401, ProblemCode::RuntimeTokenInvalid)?;
    // A MAC compared only over the length presented accepts a cut one, or
    // an empty one with any claims.
    let truncated = format!("{}.{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[3], &parts[4][..8]);
    expect_problem(&ctx.heartbeat(&agent, &truncated, 4).await?, 401, ProblemCode::RuntimeTokenInvalid)
        .map_err(|e| e.context("truncated MAC"))?;
    let empty = format!("{}.{}.{}.{}.", parts[0], parts[1], parts[2], b64(&claims));
    expect_problem(&ctx.heartbeat(&agent, &empty, 5).await?, 401, ProblemCode::RuntimeTokenInvalid)
        .map_err(|e| e.context("empty MAC with forged claims"))?;
    ensure(ctx.heartbeat(&agent, &runtime, 10).await?.status == 200, "the genuine token still works")
}

pub async fn wrong_scope(ctx: &Ctx) -> Checked {
    let secret = ctx.needs("the runtime secret", &ctx.local.runtime_secret)?;
    let (agent, _, enrolled) = ctx.enroll(Tenant::A).await?;
    let now = ctx.now();
    let mut claims = crate::faults::claims_from_enrollment(&enrolled, now)?;
    claims.scope = "agent_admin".into();
    let token = crate::faults::sign_runtime(&secret, &claims);
    ctx.remember(&token);
    expect_problem(&ctx.heartbeat(&agent, &token, 1).await?, 403, ProblemCode::ScopeForbidden)
}

pub async fn admin_at_agent(ctx: &Ctx) -> Checked {
    runtime_token_is_a_credential(ctx)?;
    let (agent, _, _) = ctx.enroll(Tenant::A).await?;
    expect_problem(
        &ctx.heartbeat(&agent, ctx.admin(Tenant::A), 1).await?,
        403,
        ProblemCode::NotServiceAccount,
    )
}

pub async fn revoked_identity(ctx: &Ctx) -> Checked {
    let (agent, runtime, _) = ctx.enroll(Tenant::A).await?;
    ensure(ctx.heartbeat(&agent, &runtime, 1).await?.status == 200, "heartbeat refused before revocation")?;
    let r = ctx
        .call(&ops::revoke_agent(&agent), Some(ctx.admin(Tenant::A)), Some(&json!({"reason": "conformance"})))
        .await?;
    ensure(r.status == 200 && r.body["status"] == "revoked", "revocation failed")?;
    expect_problem(&ctx.heartbeat(&agent, &runtime, 2).await?, 403, ProblemCode::IdentityRevoked)?;
    let nonce = crate::random_nonce();
    let body = json!({"csr_pem": ctx.csr(), "nonce": nonce});
    expect_problem(
        &ctx.call(&ops::rotate_agent_certificate(&agent), Some(&runtime), Some(&body)).await?,
        403,
        ProblemCode::IdentityRevoked,
    )
}

pub async fn revoked_token(ctx: &Ctx) -> Checked {
    let (secret, id) = ctx.issue_token(Tenant::A, 5).await?;
    ctx.call(&ops::revoke_enrollment_token(&id), Some(ctx.admin(Tenant::A)), Some(&json!({}))).await?;
    expect_problem(
        &ctx.exchange(&ctx.exchange_body(&secret)?).await?,
        401,
        ProblemCode::EnrollmentTokenInvalid,
    )
}

pub async fn malformed_csr(ctx: &Ctx) -> Checked {
    let (secret, id) = ctx.issue_token(Tenant::A, 1).await?;
    for csr in [
        "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n",
        "not a pem",
    ] {
        let mut body = ctx.exchange_body(&secret)?;
        body["csr_pem"] = json!(csr);
        expect_problem(&ctx.exchange(&body).await?, 400, ProblemCode::CsrInvalid)?;
    }
    let tokens = ctx.list(Tenant::A, Listing::Tokens).await?;
    ensure(
        tokens.iter().any(|t| t["enrollment_token_id"] == id.as_str() && t["use_count"] == 0),
        "a rejected CSR consumed a use",
    )?;
    ensure(ctx.exchange(&ctx.exchange_body(&secret)?).await?.status == 201, "the token no longer works")
}

pub async fn bad_bodies(ctx: &Ctx) -> Checked {
    let op = ops::exchange_enrollment_token();
    expect_problem(
        &ctx.call_raw(&op, None, Some(("{\"enrollment_token\":".into(), "application/json"))).await?,
        400,
        ProblemCode::RequestInvalid,
    )?;
    expect_problem(
        &ctx.call_raw(&op, None, Some(("x".repeat(70 * 1024), "application/json"))).await?,
        413,
        ProblemCode::PayloadTooLarge,
    )?;
    expect_problem(
        &ctx.call_raw(&op, None, Some(("hello".into(), "text/plain"))).await?,
        415,
        ProblemCode::UnsupportedMediaType,
    )?;
    let mut extra = ctx.exchange_body("opet_placeholder")?;
    extra["tenant_id"] = json!("tenant-b");
    expect_problem(&ctx.exchange(&extra).await?, 400, ProblemCode::RequestInvalid)
}

pub async fn identity_override(ctx: &Ctx) -> Checked {
    let (agent, runtime, _) = ctx.enroll(Tenant::A).await?;
    for field in ["tenant_id", "agent_id", "collector_id", "asset_id", "site_id"] {
        let mut body =
            json!({"sequence": 1, "collected_at": chrono::Utc::now(), "hostname": "h", "agent_version": "c"});
        body[field] = json!(uuid::Uuid::new_v4().to_string());
        let a = ctx.call(&ops::post_agent_heartbeat(&agent), Some(&runtime), Some(&body)).await?;
        expect_problem(&a, 400, ProblemCode::IdentityOverrideRejected).map_err(|e| e.context(field))?;
    }
    Ok(())
}

pub async fn viewer(ctx: &Ctx) -> Checked {
    let secret = ctx.needs("the admin signing secret", &ctx.local.admin_secret)?;
    let now = ctx.now();
    let token =
        crate::faults::mint_admin(ctx, &secret, "tenant-a", "tenant_viewer", now + Duration::hours(1));
    ensure(ctx.call(&ops::list_agents(), Some(&token), None).await?.status == 200, "a viewer cannot read")?;
    // Real targets for every write, so a 403 cannot be a 404 in disguise.
    let (agent, runtime, _) = ctx.enroll(Tenant::A).await?;
    let (_, token_id) = ctx.issue_token(Tenant::A, 1).await?;
    let writes = oneprotect_contracts::contract::OPERATIONS
        .iter()
        .filter(|op| op.security == Some("tenantAdminBearer") && op.method != "GET");
    let mut tried = 0;
    for op in writes {
        let route = op.route(|name| if name == "agent_id" { agent.clone() } else { token_id.clone() });
        let body = match op.request_schema {
            Some("EnrollmentTokenIssueRequest") => {
                Some(json!({"ttl_seconds": 600, "label": format!("{} viewer attempt", ctx.run_id)}))
            }
            Some(_) => Some(json!({"reason": "conformance: viewer attempt"})),
            None => None,
        };
        let a = ctx.call(&route, Some(&token), body.as_ref()).await?;
        expect_problem(&a, 403, ProblemCode::Forbidden).map_err(|e| e.context(op.operation_id))?;
        // The role is judged with the credential, before the body.
        let malformed = ctx.call_raw(&route, Some(&token), Some(("[]".into(), "application/json"))).await?;
        expect_problem(&malformed, 403, ProblemCode::Forbidden)
            .map_err(|e| e.context(format!("{} with a malformed body", op.operation_id)))?;
        tried += 1;
    }
    ensure(tried >= 3, format!("only {tried} write operations in the contract"))?;
    ensure(
        ctx.heartbeat(&agent, &runtime, 1).await?.status == 200,
        "the agent stopped working after the viewer's revoke attempt",
    )?;
    let tokens = ctx.list(Tenant::A, Listing::Tokens).await?;
    ensure(
        tokens.iter().any(|t| t["enrollment_token_id"] == token_id.as_str() && t["status"] == "active"),
        "the viewer revoked the token",
    )
}

pub async fn collector_binding(ctx: &Ctx) -> Checked {
    let secret = ctx.needs("the runtime secret", &ctx.local.runtime_secret)?;
    let (agent, _, enrolled) = ctx.enroll(Tenant::A).await?;
    let now = ctx.now();
    for (what, sequence) in [("collector", 1), ("asset", 2)] {
        let mut claims = crate::faults::claims_from_enrollment(&enrolled, now)?;
        match what {
            "collector" => claims.collector_id = uuid::Uuid::new_v4(),
            _ => claims.asset_id = uuid::Uuid::new_v4(),
        }
        let token = crate::faults::sign_runtime(&secret, &claims);
        ctx.remember(&token);
        expect_problem(&ctx.heartbeat(&agent, &token, sequence).await?, 403, ProblemCode::CollectorMismatch)
            .map_err(|e| e.context(format!("another {what}")))?;
    }
    Ok(())
}

pub async fn missing_secret(ctx: &Ctx) -> Checked {
    let base = ctx.needs("a platform without the runtime secret", &ctx.local.secretless_base)?;
    let (secret, id) = ctx.issue_token(Tenant::A, 1).await?;
    let body = ctx.exchange_body(&secret)?;
    let a = ctx
        .call_raw_at(
            &base,
            &ops::exchange_enrollment_token(),
            None,
            Some((body.to_string(), "application/json")),
        )
        .await?;
    expect_problem(&a, 503, ProblemCode::RuntimeSecretUnavailable)?;
    let tokens = ctx.list(Tenant::A, Listing::Tokens).await?;
    ensure(
        tokens.iter().any(|t| t["enrollment_token_id"] == id.as_str() && t["use_count"] == 0),
        "the refused exchange consumed a use",
    )
}

pub async fn unknown_routes(ctx: &Ctx) -> Checked {
    for (method, path, status) in [("GET", "/api/v1/does-not-exist", 404), ("DELETE", "/api/v1/agents", 405)]
    {
        let (answered, _, text) = ctx.send(method, &format!("{}{path}", ctx.base), None, None).await?;
        ensure(answered == status, format!("{method} {path} is {answered}, not {status}"))?;
        let body: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| format!("the {status} is not JSON"))?;
        oneprotect_contracts::contract::validate_schema("Problem", &body)
            .map_err(|_| format!("the {status} is not a Problem"))?;
    }
    Ok(())
}

/// The most failed exchanges the rate-limit check sends.
const RATE_LIMIT_ATTEMPTS: usize = 200;

pub async fn failed_exchanges_rate_limited(ctx: &Ctx) -> Checked {
    // A token id made for this check, never a real token's: the limit this
    // trips locks nobody else out.
    let (secret, _) = ctx.issue_token(Tenant::A, 1).await?;
    // `opet_<id>_<secret>`: the secret is base64url and can itself contain `_`.
    let mut fields = secret.splitn(3, '_');
    let wrong = match (fields.next(), fields.next()) {
        (Some(prefix), Some(id)) => format!("{prefix}_{id}_{}", "A".repeat(43)),
        _ => return Err("the enrollment token has no id part".into()),
    };
    let route = ops::exchange_enrollment_token();
    for attempt in 1..=RATE_LIMIT_ATTEMPTS {
        let body = ctx.exchange_body(&wrong)?;
        let a = ctx.call_once(&route, None, Some((body.to_string(), "application/json"))).await?;
        match a.status {
            429 => {
                let seconds =
                    a.retry_after.as_deref().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
                ensure(
                    seconds >= 1,
                    format!("429 after {attempt} failures with Retry-After {:?}", a.retry_after),
                )?;
                return expect_problem(&a, 429, ProblemCode::RateLimited);
            }
            401 => {}
            other => {
                return Err(
                    format!("a wrong secret answered {other} {} (attempt {attempt})", a.code()).into()
                );
            }
        }
    }
    Err(format!("no 429 after {RATE_LIMIT_ATTEMPTS} failed exchanges").into())
}
