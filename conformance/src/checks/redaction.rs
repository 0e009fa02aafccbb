use serde_json::json;

use crate::{CheckFuture, Ctx, ensure, outcome};

/// Runs the canonical scenario (issue, exchange, heartbeat, a refused
/// exchange) so that there is material to scan.
async fn scenario(ctx: &Ctx) -> Result<(), String> {
    let (agent, runtime, _) = ctx.enroll(false).await?;
    ensure(ctx.heartbeat(&agent, &runtime, 1).await?.status == 200, "heartbeat refused")?;
    let (secret, _) = ctx.issue_token(false, 1).await?;
    let mut bad = ctx.exchange_body(&secret);
    bad["csr_pem"] = json!("-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n");
    ctx.exchange(&bad).await?;
    Ok(())
}

fn scan(ctx: &Ctx, source: &str, text: &str) -> Result<(), String> {
    for s in ctx.secrets() {
        ensure(!text.contains(&s), format!("a secret ({} chars) appears in {source}", s.len()))?;
    }
    Ok(())
}

pub fn secret_shown_once(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (secret, id) = ctx.issue_token(false, 1).await?;
                let tokens = ctx.list(false, "listEnrollmentTokens", "/api/v1/agent-enrollment/tokens?limit=200").await?;
                let text = serde_json::to_string(&tokens).unwrap_or_default();
                ensure(text.contains(&id), "the issued token is listed")?;
                ensure(!text.contains(&secret), "the enrollment secret appears in the token list")?;
                let revoked = ctx
                    .call("revokeEnrollmentToken", "POST", &format!("/api/v1/agent-enrollment/tokens/{id}/revoke"), Some(ctx.admin(false)), Some(&json!({})))
                    .await?;
                ensure(!revoked.body.to_string().contains(&secret), "the enrollment secret appears in the revoke answer")
            }
            .await,
        )
    })
}

pub fn audit_and_events_clean(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                scenario(ctx).await?;
                let audit = ctx.list(false, "listAuditEvents", "/api/v1/audit-events?limit=200").await?;
                let events = ctx.list(false, "listEvents", "/api/v1/events?limit=200").await?;
                ensure(!audit.is_empty() && !events.is_empty(), "the scenario left audit records and events")?;
                for e in &events {
                    oneprotect_contracts::events::validate(e).map_err(|v| format!("an emitted event does not match its schema: {v}"))?;
                }
                scan(ctx, "the audit trail", &serde_json::to_string(&audit).unwrap_or_default())?;
                scan(ctx, "the event stream", &serde_json::to_string(&events).unwrap_or_default())?;
                let agents = ctx.list(false, "listAgents", "/api/v1/agents?limit=200").await?;
                scan(ctx, "the agent list", &serde_json::to_string(&agents).unwrap_or_default())
            }
            .await,
        )
    })
}

pub fn store_clean(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let store = match ctx.needs("storage inspection", &ctx.local.store) {
            Ok(s) => s,
            Err(o) => return o,
        };
        outcome(
            async {
                scenario(ctx).await?;
                let rows = store.dump_all_rows().await.map_err(|e| format!("cannot inspect the store: {e}"))?;
                ensure(rows.len() > 5, "the store holds the scenario's rows")?;
                for row in &rows {
                    scan(ctx, &format!("a stored row of {}", row.split(':').next().unwrap_or("?")), row)?;
                }
                Ok(())
            }
            .await,
        )
    })
}

pub fn logs_clean(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let logs = match ctx.needs("captured server logs", &ctx.local.logs) {
            Ok(l) => l,
            Err(o) => return o,
        };
        outcome(
            async {
                scenario(ctx).await?;
                let text = String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
                ensure(!text.is_empty(), "the server logged something")?;
                scan(ctx, "the server logs", &text)?;
                ensure(!text.to_ascii_lowercase().contains("bearer "), "a bearer credential appears in the server logs")
            }
            .await,
        )
    })
}

pub fn problems_do_not_echo(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let marker = format!("opet_{}_CONFORMANCE_MARKER_{}", ctx.run_id, "x".repeat(240));
                let mut body = ctx.exchange_body("placeholder");
                body["enrollment_token"] = json!(marker);
                let a = ctx.exchange(&body).await?;
                ensure(a.status == 400, format!("an over-long token is 400, got {}", a.status))?;
                ensure(!a.body.to_string().contains("CONFORMANCE_MARKER"), "the rejection echoes the submitted value")
            }
            .await,
        )
    })
}
