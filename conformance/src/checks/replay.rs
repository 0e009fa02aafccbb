use serde_json::json;

use crate::{CheckFuture, Ctx, ensure, expect_problem, outcome};

async fn use_count(ctx: &Ctx, id: &str) -> Result<u64, String> {
    let tokens = ctx.list(false, "listEnrollmentTokens", "/api/v1/agent-enrollment/tokens?limit=200").await?;
    tokens.iter().find(|t| t["enrollment_token_id"] == id).and_then(|t| t["use_count"].as_u64()).ok_or_else(|| "token not listed".to_owned())
}

pub fn nonce_reuse(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (secret, id) = ctx.issue_token(false, 3).await?;
                let body = ctx.exchange_body(&secret);
                let first = ctx.exchange(&body).await?;
                ensure(first.status == 201, format!("first exchange {}", first.status))?;
                let replay = ctx.exchange(&body).await?;
                expect_problem(&replay, 409, "nonce_replayed")?;
                ensure(use_count(ctx, &id).await? == 1, "the replayed exchange consumed a token use")
            }
            .await,
        )
    })
}

pub fn token_exhausted(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (secret, _) = ctx.issue_token(false, 1).await?;
                ensure(ctx.exchange(&ctx.exchange_body(&secret)).await?.status == 201, "first exchange refused")?;
                expect_problem(&ctx.exchange(&ctx.exchange_body(&secret)).await?, 401, "enrollment_token_invalid")
            }
            .await,
        )
    })
}

pub fn duplicate_heartbeat(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, runtime, enrolled) = ctx.enroll(false).await?;
                let first = ctx.heartbeat(&agent, &runtime, 41).await?;
                ensure(first.status == 200 && first.body["duplicate"] == false, "first heartbeat not accepted")?;
                let again = ctx.heartbeat(&agent, &runtime, 41).await?;
                ensure(again.status == 200 && again.body["duplicate"] == true, "the repeated sequence is not acknowledged as a duplicate")?;
                let asset = enrolled["agent"]["asset_id"].as_str().unwrap_or_default().to_owned();
                let events = ctx.list(false, "listEvents", "/api/v1/events?limit=200").await?;
                let n = events.iter().filter(|e| e["type"] == "asset.telemetry.received" && e["subject"] == asset.as_str()).count();
                ensure(n == 1, format!("{n} telemetry events for one distinct sequence"))
            }
            .await,
        )
    })
}

pub fn rotation_nonce(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        outcome(
            async {
                let (agent, runtime, _) = ctx.enroll(false).await?;
                let nonce = crate::random_nonce();
                ctx.remember(&nonce);
                let body = json!({"csr_pem": crate::ctx::p256_csr(), "nonce": nonce});
                let path = format!("/api/v1/agents/{agent}/certificate/rotate");
                let rotated = ctx.call("rotateAgentCertificate", "POST", &path, Some(&runtime), Some(&body)).await?;
                ensure(rotated.status == 200, format!("rotation {} {}", rotated.status, rotated.code()))?;
                let new = rotated.body["runtime_token"]["token"].as_str().unwrap_or_default().to_owned();
                ctx.remember(&new);
                expect_problem(&ctx.call("rotateAgentCertificate", "POST", &path, Some(&new), Some(&body)).await?, 409, "nonce_replayed")
            }
            .await,
        )
    })
}
