use chrono::Duration;
use oneprotect_contracts::contract::ProblemCode;
use oneprotect_contracts::contract::ops;

use super::{BOTH, LOCAL};
use crate::{Check, Checked, Ctx, Tenant, Verdict, ensure, expect_problem};

pub(super) const CHECKS: &[Check] = &[
    check!(
        "expiry.enrollment-token-expires",
        Expiry,
        LOCAL,
        "an enrollment token past its TTL is refused with the uniform 401",
        enrollment_token
    ),
    check!(
        "expiry.enrollment-token-refused-at-its-expiry-instant",
        Expiry,
        LOCAL,
        "an enrollment token is refused from the very instant it expires",
        token_refused_at_expiry_instant
    ),
    check!(
        "expiry.enrollment-token-expires-in-real-time",
        Expiry,
        BOTH,
        "a token issued for 60 s is refused with the uniform 401 once 61 s have passed (a real wait: --allow-waits)",
        token_expires_in_real_time,
        waits: true
    ),
    check!(
        "expiry.runtime-token-expires",
        Expiry,
        LOCAL,
        "a runtime token past its TTL is 401 runtime_token_invalid",
        runtime_token
    ),
    check!(
        "expiry.rotated-token-superseded-after-grace",
        Expiry,
        LOCAL,
        "after rotation the old runtime token works only during the grace period",
        rotation_grace
    ),
    check!(
        "expiry.silent-identity-goes-stale",
        Expiry,
        LOCAL,
        "an identity silent past the staleness window is refused with 403 identity_stale",
        stale_identity
    ),
    check!(
        "expiry.expired-admin-token-rejected",
        Expiry,
        LOCAL,
        "an expired tenant-admin JWT is 401",
        admin_token
    ),
    check!(
        "expiry.admin-token-not-yet-valid-rejected",
        Expiry,
        LOCAL,
        "a tenant-admin JWT before its nbf (beyond the clock-skew leeway) is 401",
        admin_not_yet_valid
    ),
];

pub async fn enrollment_token(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("a controllable clock", &ctx.local.clock)?;
    let (secret, _) = ctx.issue_token(Tenant::A, 5).await?;
    clock.advance(Duration::seconds(601));
    expect_problem(
        &ctx.exchange(&ctx.exchange_body(&secret)?).await?,
        401,
        ProblemCode::EnrollmentTokenInvalid,
    )
}

pub async fn runtime_token(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("a controllable clock", &ctx.local.clock)?;
    let (agent, runtime, enrolled) = ctx.enroll(Tenant::A).await?;
    ensure(ctx.heartbeat(&agent, &runtime, 1).await?.status == 200, "fresh token refused")?;
    let expires = enrolled["runtime_token"]["expires_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .ok_or("no expiry")?;
    let now = oneprotect_server::clock::Clock::now(clock.as_ref());
    clock.advance(expires.with_timezone(&chrono::Utc) - now + Duration::seconds(1));
    expect_problem(&ctx.heartbeat(&agent, &runtime, 2).await?, 401, ProblemCode::RuntimeTokenInvalid)
}

pub async fn rotation_grace(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("a controllable clock", &ctx.local.clock)?;
    let (agent, old, _) = ctx.enroll(Tenant::A).await?;
    let nonce = crate::random_nonce();
    ctx.remember(&nonce);
    let body = serde_json::json!({"csr_pem": ctx.csr(), "nonce": nonce});
    let rotated = ctx.call(&ops::rotate_agent_certificate(&agent), Some(&old), Some(&body)).await?;
    ensure(rotated.status == 200, "rotation refused")?;
    let new = rotated.body["runtime_token"]["token"].as_str().unwrap_or_default().to_owned();
    ctx.remember(&new);
    ensure(
        ctx.heartbeat(&agent, &old, 1).await?.status == 200,
        "the old token is refused during the grace period",
    )?;
    clock.advance(Duration::minutes(6));
    expect_problem(&ctx.heartbeat(&agent, &old, 2).await?, 401, ProblemCode::RuntimeTokenInvalid)?;
    ensure(ctx.heartbeat(&agent, &new, 3).await?.status == 200, "the new token is refused")
}

pub async fn stale_identity(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("a controllable clock", &ctx.local.clock)?;
    let secret = ctx.needs("the runtime secret", &ctx.local.runtime_secret)?;
    let (agent, _, enrolled) = ctx.enroll(Tenant::A).await?;
    clock.advance(Duration::days(8));
    let now = oneprotect_server::clock::Clock::now(clock.as_ref());
    let claims = crate::faults::claims_from_enrollment(&enrolled, now)?;
    let fresh = crate::faults::sign_runtime(&secret, &claims);
    ctx.remember(&fresh);
    expect_problem(&ctx.heartbeat(&agent, &fresh, 1).await?, 403, ProblemCode::IdentityStale)
}

pub async fn admin_token(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("a controllable clock", &ctx.local.clock)?;
    let secret = ctx.needs("the admin signing secret", &ctx.local.admin_secret)?;
    let now = oneprotect_server::clock::Clock::now(clock.as_ref());
    let token =
        crate::faults::mint_admin(ctx, &secret, "tenant-a", "tenant_admin", now - Duration::minutes(5));
    expect_problem(
        &ctx.call(&ops::list_agents(), Some(&token), None).await?,
        401,
        ProblemCode::Unauthenticated,
    )
}

pub async fn token_refused_at_expiry_instant(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("a controllable clock", &ctx.local.clock)?;
    // Issued now for 600 s: after exactly 600 s the clock stands on its expiry.
    let (secret, _) = ctx.issue_token(Tenant::A, 5).await?;
    clock.advance(Duration::seconds(600));
    expect_problem(
        &ctx.exchange(&ctx.exchange_body(&secret)?).await?,
        401,
        ProblemCode::EnrollmentTokenInvalid,
    )
}

pub async fn admin_not_yet_valid(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("a controllable clock", &ctx.local.clock)?;
    let secret = ctx.needs("the admin signing secret", &ctx.local.admin_secret)?;
    let now = oneprotect_server::clock::Clock::now(clock.as_ref());
    let token = crate::faults::mint_admin_with(
        ctx,
        &secret,
        "tenant-a",
        "tenant_admin",
        now + Duration::hours(2),
        Some(now + Duration::hours(1)),
    );
    expect_problem(
        &ctx.call(&ops::list_agents(), Some(&token), None).await?,
        401,
        ProblemCode::Unauthenticated,
    )
}

pub async fn token_expires_in_real_time(ctx: &Ctx) -> Checked {
    if !ctx.allow_waits {
        return Err(Verdict::NotRequested("waits 61 s of real time; run with --allow-waits".into()));
    }
    let (secret, _) = ctx.issue_token_for(Tenant::A, 5, 60).await?;
    (ctx.sleeper)(std::time::Duration::from_secs(61)).await;
    expect_problem(
        &ctx.exchange(&ctx.exchange_body(&secret)?).await?,
        401,
        ProblemCode::EnrollmentTokenInvalid,
    )
}
