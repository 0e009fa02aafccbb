use chrono::Duration;
use serde_json::json;

use crate::{CheckFuture, Ctx, ensure, expect_problem, outcome};

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

pub fn missing_bearer(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let id = uuid::Uuid::new_v4();
                for op in oneprotect_contracts::contract::OPERATIONS.iter().filter(|o| o.security.is_some()) {
                    let path = op.path.replace("{agent_id}", &id.to_string()).replace("{enrollment_token_id}", &id.to_string());
                    let body = op.request_schema.map(|_| json!({}));
                    let a = ctx.call(op.operation_id, op.method, &path, None, body.as_ref()).await?;
                    expect_problem(&a, 401, "unauthenticated").map_err(|e| format!("{}: {e}", op.operation_id))?;
                }
                Ok(())
            }
            .await,
        )
    })
}

pub fn alg_none(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let claims = json!({"sub": "attacker", "tenant_id": "tenant-a", "roles": ["tenant_admin"], "exp": chrono::Utc::now().timestamp() + 3600, "iss": "oneprotect-dev", "aud": "oneprotect-api"});
                for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "None"}), json!({"alg": "nOnE"})] {
                    let token = format!("{}.{}.", b64(&header), b64(&claims));
                    expect_problem(&ctx.call("listAgents", "GET", "/api/v1/agents", Some(&token), None).await?, 401, "unauthenticated")?;
                }
                Ok(())
            }
            .await,
        )
    })
}

pub fn forged_admin(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let claims = oneprotect_server::admin_auth::AdminClaims {
                    sub: "attacker".into(),
                    tenant_id: "tenant-a".into(),
                    roles: vec!["tenant_admin".into()],
                    exp: chrono::Utc::now().timestamp() + 3600,
                    iss: "oneprotect-dev".into(),
                    aud: "oneprotect-api".into(),
                    nbf: None,
                };
                let key = crate::random_nonce() + &crate::random_nonce();
                let forged = oneprotect_server::admin_auth::mint_hs256(key.as_bytes(), &claims).map_err(|e| e.to_string())?;
                expect_problem(&ctx.call("listAgents", "GET", "/api/v1/agents", Some(&forged), None).await?, 401, "unauthenticated")?;
                let parts: Vec<&str> = ctx.admin(false).split('.').collect();
                ensure(parts.len() == 3, "the admin credential is a JWT")?;
                let mut payload: serde_json::Value = {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).map_err(|e| e.to_string())?;
                    serde_json::from_slice(&bytes).map_err(|e| e.to_string())?
                };
                payload["tenant_id"] = json!("tenant-zz-conformance");
                let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
                expect_problem(&ctx.call("listAgents", "GET", "/api/v1/agents", Some(&tampered), None).await?, 401, "unauthenticated")
            }
            .await,
        )
    })
}

pub fn tampered_runtime(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, runtime, _) = ctx.enroll(false).await?;
                let parts: Vec<&str> = runtime.split('.').collect();
                ensure(parts.len() == 5, "runtime tokens have five parts")?;
                let flipped = if parts[4].starts_with('A') { "B" } else { "A" };
                let bad_sig = format!("{}.{}.{}.{}.{flipped}{}", parts[0], parts[1], parts[2], parts[3], &parts[4][1..]);
                expect_problem(&ctx.heartbeat(&agent, &bad_sig, 1).await?, 401, "runtime_token_invalid")?;
                let mut claims: serde_json::Value = {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[3]).map_err(|e| e.to_string())?;
                    serde_json::from_slice(&bytes).map_err(|e| e.to_string())?
                };
                claims["exp"] = json!(claims["exp"].as_i64().unwrap_or(0) + 86_400 * 365);
                let bad_payload = format!("{}.{}.{}.{}.{}", parts[0], parts[1], parts[2], b64(&claims), parts[4]);
                expect_problem(&ctx.heartbeat(&agent, &bad_payload, 2).await?, 401, "runtime_token_invalid")?;
                let unknown_key = format!("{}.{}.kconformance0.{}.{}", parts[0], parts[1], parts[3], parts[4]);
                expect_problem(&ctx.heartbeat(&agent, &unknown_key, 3).await?, 401, "runtime_token_invalid")?;
                ensure(ctx.heartbeat(&agent, &runtime, 4).await?.status == 200, "the genuine token still works")
            }
            .await,
        )
    })
}

pub fn wrong_scope(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let secret = match ctx.needs("the runtime secret", &ctx.local.runtime_secret) {
            Ok(s) => s,
            Err(o) => return o,
        };
        outcome(
            async {
                let (agent, _, enrolled) = ctx.enroll(false).await?;
                let now = ctx.local.clock.as_ref().map(|c| oneprotect_server::clock::Clock::now(c.as_ref())).unwrap_or_else(chrono::Utc::now);
                let mut claims = crate::faults::claims_from_enrollment(&enrolled, now)?;
                claims.scope = "agent_admin".into();
                let token = crate::faults::sign_runtime(&secret, &claims);
                ctx.remember(&token);
                expect_problem(&ctx.heartbeat(&agent, &token, 1).await?, 403, "scope_forbidden")
            }
            .await,
        )
    })
}

pub fn admin_at_agent(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, _, _) = ctx.enroll(false).await?;
                expect_problem(&ctx.heartbeat(&agent, ctx.admin(false), 1).await?, 403, "not_service_account")
            }
            .await,
        )
    })
}

pub fn revoked_identity(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, runtime, _) = ctx.enroll(false).await?;
                ensure(ctx.heartbeat(&agent, &runtime, 1).await?.status == 200, "heartbeat refused before revocation")?;
                let r = ctx
                    .call("revokeAgent", "POST", &format!("/api/v1/agents/{agent}/revoke"), Some(ctx.admin(false)), Some(&json!({"reason": "conformance"})))
                    .await?;
                ensure(r.status == 200 && r.body["status"] == "revoked", "revocation failed")?;
                expect_problem(&ctx.heartbeat(&agent, &runtime, 2).await?, 403, "identity_revoked")?;
                let nonce = crate::random_nonce();
                let body = json!({"csr_pem": crate::ctx::p256_csr(), "nonce": nonce});
                expect_problem(
                    &ctx.call("rotateAgentCertificate", "POST", &format!("/api/v1/agents/{agent}/certificate/rotate"), Some(&runtime), Some(&body)).await?,
                    403,
                    "identity_revoked",
                )
            }
            .await,
        )
    })
}

pub fn revoked_token(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (secret, id) = ctx.issue_token(false, 5).await?;
                ctx.call("revokeEnrollmentToken", "POST", &format!("/api/v1/agent-enrollment/tokens/{id}/revoke"), Some(ctx.admin(false)), Some(&json!({})))
                    .await?;
                expect_problem(&ctx.exchange(&ctx.exchange_body(&secret)).await?, 401, "enrollment_token_invalid")
            }
            .await,
        )
    })
}

pub fn malformed_csr(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (secret, id) = ctx.issue_token(false, 1).await?;
                for csr in ["-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n", "not a pem"] {
                    let mut body = ctx.exchange_body(&secret);
                    body["csr_pem"] = json!(csr);
                    expect_problem(&ctx.exchange(&body).await?, 400, "csr_invalid")?;
                }
                let tokens = ctx.list(false, "listEnrollmentTokens", "/api/v1/agent-enrollment/tokens?limit=200").await?;
                ensure(tokens.iter().any(|t| t["enrollment_token_id"] == id.as_str() && t["use_count"] == 0), "a rejected CSR consumed a use")?;
                ensure(ctx.exchange(&ctx.exchange_body(&secret)).await?.status == 201, "the token no longer works")
            }
            .await,
        )
    })
}

pub fn bad_bodies(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let url = format!("{}/api/v1/agent-enrollment/exchange", ctx.base);
                let op = "exchangeEnrollmentToken";
                expect_problem(
                    &ctx.call_raw(op, "POST", &url, None, Some(("{\"enrollment_token\":".into(), "application/json"))).await?,
                    400,
                    "request_invalid",
                )?;
                expect_problem(&ctx.call_raw(op, "POST", &url, None, Some(("x".repeat(70 * 1024), "application/json"))).await?, 413, "payload_too_large")?;
                expect_problem(&ctx.call_raw(op, "POST", &url, None, Some(("hello".into(), "text/plain"))).await?, 415, "unsupported_media_type")?;
                let mut extra = ctx.exchange_body("opet_placeholder");
                extra["tenant_id"] = json!("tenant-b");
                expect_problem(&ctx.exchange(&extra).await?, 400, "request_invalid")
            }
            .await,
        )
    })
}

pub fn identity_override(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, runtime, _) = ctx.enroll(false).await?;
                for field in ["tenant_id", "agent_id", "collector_id", "asset_id", "site_id"] {
                    let mut body = json!({"sequence": 1, "collected_at": chrono::Utc::now(), "hostname": "h", "agent_version": "c"});
                    body[field] = json!(uuid::Uuid::new_v4().to_string());
                    let a = ctx.call("postAgentHeartbeat", "POST", &format!("/api/v1/agents/{agent}/telemetry/heartbeat"), Some(&runtime), Some(&body)).await?;
                    expect_problem(&a, 400, "identity_override_rejected").map_err(|e| format!("{field}: {e}"))?;
                }
                Ok(())
            }
            .await,
        )
    })
}

pub fn viewer(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let secret = match ctx.needs("the admin signing secret", &ctx.local.admin_secret) {
            Ok(s) => s,
            Err(o) => return o,
        };
        outcome(
            async {
                let now = ctx.local.clock.as_ref().map(|c| oneprotect_server::clock::Clock::now(c.as_ref())).unwrap_or_else(chrono::Utc::now);
                let token = crate::faults::mint_admin(ctx, &secret, "tenant-a", "tenant_viewer", now + Duration::hours(1));
                ensure(ctx.call("listAgents", "GET", "/api/v1/agents", Some(&token), None).await?.status == 200, "a viewer cannot read")?;
                expect_problem(
                    &ctx.call("issueEnrollmentToken", "POST", "/api/v1/agent-enrollment/tokens", Some(&token), Some(&json!({"ttl_seconds": 600}))).await?,
                    403,
                    "forbidden",
                )
            }
            .await,
        )
    })
}

pub fn missing_secret(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let base = match ctx.needs("a platform without the runtime secret", &ctx.local.secretless_base) {
            Ok(b) => b,
            Err(o) => return o,
        };
        outcome(
            async {
                let (secret, id) = ctx.issue_token(false, 1).await?;
                let body = ctx.exchange_body(&secret);
                let a = ctx
                    .call_raw(
                        "exchangeEnrollmentToken",
                        "POST",
                        &format!("{base}/api/v1/agent-enrollment/exchange"),
                        None,
                        Some((body.to_string(), "application/json")),
                    )
                    .await?;
                expect_problem(&a, 503, "runtime_secret_unavailable")?;
                let tokens = ctx.list(false, "listEnrollmentTokens", "/api/v1/agent-enrollment/tokens?limit=200").await?;
                ensure(tokens.iter().any(|t| t["enrollment_token_id"] == id.as_str() && t["use_count"] == 0), "the refused exchange consumed a use")
            }
            .await,
        )
    })
}

pub fn unknown_routes(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let resp = ctx.http.get(format!("{}/api/v1/does-not-exist", ctx.base)).send().await.map_err(|e| e.without_url().to_string())?;
                ensure(resp.status().as_u16() == 404, "unknown path is not 404")?;
                let body: serde_json::Value = resp.json().await.map_err(|_| "the 404 is not JSON".to_string())?;
                oneprotect_contracts::contract::validate_schema("Problem", &body).map_err(|_| "the 404 is not a Problem".to_string())?;
                let resp = ctx.http.delete(format!("{}/api/v1/agents", ctx.base)).send().await.map_err(|e| e.without_url().to_string())?;
                ensure(resp.status().as_u16() == 405, "wrong method is not 405")?;
                let body: serde_json::Value = resp.json().await.map_err(|_| "the 405 is not JSON".to_string())?;
                oneprotect_contracts::contract::validate_schema("Problem", &body).map_err(|_| "the 405 is not a Problem".to_string())
            }
            .await,
        )
    })
}
