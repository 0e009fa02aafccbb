use serde_json::json;

use crate::{CheckFuture, Ctx, ensure, expect_problem, outcome};

pub fn agent_read(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, _, _) = ctx.enroll(false).await?;
                let cross = ctx.call("getAgent", "GET", &format!("/api/v1/agents/{agent}"), Some(ctx.admin(true)), None).await?;
                expect_problem(&cross, 404, "not_found")?;
                let missing = ctx.call("getAgent", "GET", &format!("/api/v1/agents/{}", uuid::Uuid::new_v4()), Some(ctx.admin(true)), None).await?;
                ensure(
                    cross.body["detail"] == missing.body["detail"] && cross.body["title"] == missing.body["title"],
                    "a foreign id is distinguishable from a missing one",
                )?;
                let own = ctx.call("getAgent", "GET", &format!("/api/v1/agents/{agent}"), Some(ctx.admin(false)), None).await?;
                ensure(own.status == 200, "the owning tenant can read its agent")
            }
            .await,
        )
    })
}

pub fn revokes(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, runtime, _) = ctx.enroll(false).await?;
                let (_, token_id) = ctx.issue_token(false, 1).await?;
                let b = ctx.admin(true);
                expect_problem(
                    &ctx.call("revokeAgent", "POST", &format!("/api/v1/agents/{agent}/revoke"), Some(b), Some(&json!({}))).await?,
                    404,
                    "not_found",
                )?;
                expect_problem(
                    &ctx.call("revokeEnrollmentToken", "POST", &format!("/api/v1/agent-enrollment/tokens/{token_id}/revoke"), Some(b), Some(&json!({})))
                        .await?,
                    404,
                    "not_found",
                )?;
                ensure(ctx.heartbeat(&agent, &runtime, 1).await?.status == 200, "the agent still works after the foreign revoke attempt")?;
                let tokens = ctx.list(false, "listEnrollmentTokens", "/api/v1/agent-enrollment/tokens?limit=200").await?;
                ensure(tokens.iter().any(|t| t["enrollment_token_id"] == token_id.as_str() && t["status"] == "active"), "the token is still active")
            }
            .await,
        )
    })
}

pub fn lists(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, runtime, enrolled) = ctx.enroll(false).await?;
                ctx.heartbeat(&agent, &runtime, 1).await?;
                let tenant_a = enrolled["agent"]["tenant_id"].as_str().unwrap_or_default().to_owned();
                for (op, path) in [
                    ("listAgents", "/api/v1/agents?limit=200"),
                    ("listEnrollmentTokens", "/api/v1/agent-enrollment/tokens?limit=200"),
                    ("listAuditEvents", "/api/v1/audit-events?limit=200"),
                    ("listEvents", "/api/v1/events?limit=200"),
                ] {
                    let items = ctx.list(true, op, path).await?;
                    let text = serde_json::to_string(&items).unwrap_or_default();
                    ensure(!text.contains(&agent), format!("{op} of tenant B shows tenant A's agent"))?;
                    ensure(
                        items.iter().all(|i| i.get("tenant_id").or_else(|| i.get("tenantid")).is_none_or(|t| t != tenant_a.as_str())),
                        format!("{op} of tenant B shows tenant A's rows"),
                    )?;
                }
                Ok(())
            }
            .await,
        )
    })
}

pub fn cross_heartbeat(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (_, runtime_a, _) = ctx.enroll(false).await?;
                let (agent_b, _, _) = ctx.enroll(true).await?;
                expect_problem(&ctx.heartbeat(&agent_b, &runtime_a, 1).await?, 403, "actor_mismatch")
            }
            .await,
        )
    })
}
