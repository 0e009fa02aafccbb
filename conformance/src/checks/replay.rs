use oneprotect_contracts::contract::ProblemCode;
use oneprotect_contracts::contract::ops;
use serde_json::json;

use super::BOTH;
use crate::ctx::Listing;
use crate::{Check, Checked, Ctx, Tenant, ensure, expect_problem};

pub(super) const CHECKS: &[Check] = &[
    check!(
        "replay.nonce-reuse-rejected",
        Replay,
        BOTH,
        "an exchange nonce is single use (409 nonce_replayed) and the replay consumes nothing",
        nonce_reuse
    ),
    check!(
        "replay.single-use-token-exhausted",
        Replay,
        BOTH,
        "a max_uses=1 token enrolls once; the second use is 401 enrollment_token_invalid",
        token_exhausted
    ),
    check!(
        "replay.duplicate-heartbeat-acknowledged-once",
        Replay,
        BOTH,
        "a repeated heartbeat sequence is acknowledged as duplicate and emits no second event",
        duplicate_heartbeat
    ),
    check!(
        "replay.nonce-scoped-to-tenant",
        Replay,
        BOTH,
        "a nonce used with one token is refused with another token of the same tenant, consuming nothing",
        nonce_scoped_to_tenant
    ),
    check!(
        "replay.rotation-nonce-reuse-rejected",
        Replay,
        BOTH,
        "a rotation nonce is single use",
        rotation_nonce
    ),
];

async fn use_count(ctx: &Ctx, id: &str) -> Result<u64, String> {
    let tokens = ctx.list(Tenant::A, Listing::Tokens).await?;
    tokens
        .iter()
        .find(|t| t["enrollment_token_id"] == id)
        .and_then(|t| t["use_count"].as_u64())
        .ok_or_else(|| "token not listed".to_owned())
}

pub async fn nonce_reuse(ctx: &Ctx) -> Checked {
    let (secret, id) = ctx.issue_token(Tenant::A, 3).await?;
    let body = ctx.exchange_body(&secret)?;
    let first = ctx.exchange(&body).await?;
    ensure(first.status == 201, format!("first exchange {}", first.status))?;
    let replay = ctx.exchange(&body).await?;
    expect_problem(&replay, 409, ProblemCode::NonceReplayed)?;
    ensure(use_count(ctx, &id).await? == 1, "the replayed exchange consumed a token use")
}

pub async fn token_exhausted(ctx: &Ctx) -> Checked {
    let (secret, _) = ctx.issue_token(Tenant::A, 1).await?;
    ensure(ctx.exchange(&ctx.exchange_body(&secret)?).await?.status == 201, "first exchange refused")?;
    expect_problem(
        &ctx.exchange(&ctx.exchange_body(&secret)?).await?,
        401,
        ProblemCode::EnrollmentTokenInvalid,
    )
}

pub async fn duplicate_heartbeat(ctx: &Ctx) -> Checked {
    let (agent, runtime, enrolled) = ctx.enroll(Tenant::A).await?;
    let first = ctx.heartbeat(&agent, &runtime, 41).await?;
    ensure(first.status == 200 && first.body["duplicate"] == false, "first heartbeat not accepted")?;
    let again = ctx.heartbeat(&agent, &runtime, 41).await?;
    ensure(
        again.status == 200 && again.body["duplicate"] == true,
        "the repeated sequence is not acknowledged as a duplicate",
    )?;
    let asset = enrolled["agent"]["asset_id"].as_str().unwrap_or_default().to_owned();
    let events = ctx.list(Tenant::A, Listing::Events).await?;
    let n = events
        .iter()
        .filter(|e| e["type"] == "asset.telemetry.received" && e["subject"] == asset.as_str())
        .count();
    ensure(n == 1, format!("{n} telemetry events for one distinct sequence"))
}

pub async fn rotation_nonce(ctx: &Ctx) -> Checked {
    let (agent, runtime, _) = ctx.enroll(Tenant::A).await?;
    let nonce = crate::random_nonce();
    ctx.remember(&nonce);
    let body = json!({"csr_pem": ctx.csr(), "nonce": nonce});
    let route = ops::rotate_agent_certificate(&agent);
    let rotated = ctx.call(&route, Some(&runtime), Some(&body)).await?;
    ensure(rotated.status == 200, format!("rotation {} {}", rotated.status, rotated.code()))?;
    let new = rotated.body["runtime_token"]["token"].as_str().unwrap_or_default().to_owned();
    ctx.remember(&new);
    expect_problem(&ctx.call(&route, Some(&new), Some(&body)).await?, 409, ProblemCode::NonceReplayed)
}

pub async fn nonce_scoped_to_tenant(ctx: &Ctx) -> Checked {
    let (first, _) = ctx.issue_token(Tenant::A, 1).await?;
    let (second, second_id) = ctx.issue_token(Tenant::A, 1).await?;
    let body = ctx.exchange_body(&first)?;
    let enrolled = ctx.exchange(&body).await?;
    ensure(enrolled.status == 201, format!("first exchange {} {}", enrolled.status, enrolled.code()))?;
    let mut again = ctx.exchange_body(&second)?;
    again["nonce"] = body["nonce"].clone();
    expect_problem(&ctx.exchange(&again).await?, 409, ProblemCode::NonceReplayed)?;
    ensure(use_count(ctx, &second_id).await? == 0, "the refused exchange consumed a use of the second token")
}
