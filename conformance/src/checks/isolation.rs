use oneprotect_contracts::contract::ProblemCode;
use oneprotect_contracts::contract::ops;
use serde_json::json;

use super::{BOTH, LOCAL};
use crate::ctx::Listing;
use crate::{Check, Checked, Ctx, Tenant, ensure, expect_problem};

pub(super) const CHECKS: &[Check] = &[
    check!(
        "tenant-isolation.cross-tenant-agent-read-is-404",
        TenantIsolation,
        BOTH,
        "reading another tenant's agent answers 404, exactly like a missing one",
        agent_read
    ),
    check!(
        "tenant-isolation.cross-tenant-revokes-are-404",
        TenantIsolation,
        BOTH,
        "revoking another tenant's agent or token answers 404 and changes nothing",
        revokes
    ),
    check!(
        "tenant-isolation.lists-are-tenant-scoped",
        TenantIsolation,
        BOTH,
        "lists, audit and events show nothing of another tenant",
        lists
    ),
    check!(
        "tenant-isolation.refusal-audited-under-its-tenant",
        TenantIsolation,
        BOTH,
        "a tenant admin's refused action is audited once, under that tenant and not the other",
        refusal_audited_under_its_tenant
    ),
    check!(
        "tenant-isolation.row-level-security-forced",
        TenantIsolation,
        LOCAL,
        "on PostgreSQL every tenant table has row-level security enabled, forced and a policy",
        rls_forced
    ),
    check!(
        "tenant-isolation.cross-agent-heartbeat-refused",
        TenantIsolation,
        BOTH,
        "a runtime token cannot heartbeat for another agent (403 actor_mismatch)",
        cross_heartbeat
    ),
];

pub async fn agent_read(ctx: &Ctx) -> Checked {
    let (agent, _, _) = ctx.enroll(Tenant::A).await?;
    let cross = ctx.call(&ops::get_agent(&agent), Some(ctx.admin(Tenant::B)), None).await?;
    expect_problem(&cross, 404, ProblemCode::NotFound)?;
    let missing = ctx.call(&ops::get_agent(uuid::Uuid::new_v4()), Some(ctx.admin(Tenant::B)), None).await?;
    ensure(
        cross.body["detail"] == missing.body["detail"] && cross.body["title"] == missing.body["title"],
        "a foreign id is distinguishable from a missing one",
    )?;
    let own = ctx.call(&ops::get_agent(&agent), Some(ctx.admin(Tenant::A)), None).await?;
    ensure(own.status == 200, "the owning tenant can read its agent")
}

pub async fn revokes(ctx: &Ctx) -> Checked {
    let (agent, runtime, _) = ctx.enroll(Tenant::A).await?;
    let (_, token_id) = ctx.issue_token(Tenant::A, 1).await?;
    let b = ctx.admin(Tenant::B);
    expect_problem(
        &ctx.call(&ops::revoke_agent(&agent), Some(b), Some(&json!({}))).await?,
        404,
        ProblemCode::NotFound,
    )?;
    expect_problem(
        &ctx.call(&ops::revoke_enrollment_token(&token_id), Some(b), Some(&json!({}))).await?,
        404,
        ProblemCode::NotFound,
    )?;
    ensure(
        ctx.heartbeat(&agent, &runtime, 1).await?.status == 200,
        "the agent still works after the foreign revoke attempt",
    )?;
    let tokens = ctx.list(Tenant::A, Listing::Tokens).await?;
    ensure(
        tokens.iter().any(|t| t["enrollment_token_id"] == token_id.as_str() && t["status"] == "active"),
        "the token is still active",
    )
}

pub async fn lists(ctx: &Ctx) -> Checked {
    let (agent, runtime, enrolled) = ctx.enroll(Tenant::A).await?;
    ctx.heartbeat(&agent, &runtime, 1).await?;
    let tenant_a = enrolled["agent"]["tenant_id"].as_str().unwrap_or_default().to_owned();
    for listing in Listing::ALL {
        let op = listing.operation();
        let items = ctx.list(Tenant::B, listing).await?;
        let text = serde_json::to_string(&items).unwrap_or_default();
        ensure(!text.contains(&agent), format!("{op} of tenant B shows tenant A's agent"))?;
        ensure(
            items.iter().all(|i| {
                i.get("tenant_id").or_else(|| i.get("tenantid")).is_none_or(|t| t != tenant_a.as_str())
            }),
            format!("{op} of tenant B shows tenant A's rows"),
        )?;
    }
    Ok(())
}

pub async fn cross_heartbeat(ctx: &Ctx) -> Checked {
    let (_, runtime_a, _) = ctx.enroll(Tenant::A).await?;
    let (agent_b, _, _) = ctx.enroll(Tenant::B).await?;
    expect_problem(&ctx.heartbeat(&agent_b, &runtime_a, 1).await?, 403, ProblemCode::ActorMismatch)
}

pub async fn refusal_audited_under_its_tenant(ctx: &Ctx) -> Checked {
    let missing = uuid::Uuid::new_v4().to_string();
    let a = ctx.call(&ops::revoke_agent(&missing), Some(ctx.admin(Tenant::A)), Some(&json!({}))).await?;
    expect_problem(&a, 404, ProblemCode::NotFound)?;
    let audit_a = ctx.list(Tenant::A, Listing::Audit).await?;
    let records = audit_a.iter().filter(|r| r["target_id"] == missing.as_str()).count();
    ensure(records > 0, format!("the refused revoke of {missing} is not in tenant A's audit trail"))?;
    ensure(records == 1, format!("{records} audit records of one refused revoke in tenant A's trail"))?;
    ensure(
        audit_a.iter().any(|r| {
            r["target_id"] == missing.as_str() && r["outcome"] == "failure" && r["action"] == "agent.revoke"
        }),
        "the refusal's audit record is not an agent.revoke failure",
    )?;
    let audit_b = ctx.list(Tenant::B, Listing::Audit).await?;
    ensure(
        !serde_json::to_string(&audit_b).unwrap_or_default().contains(&missing),
        "tenant A's refusal is in tenant B's audit trail",
    )
}

/// Tables whose rows carry a tenant.
const TENANT_TABLES_SQL: &str = "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity, \
     (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = current_schema() AND c.relkind = 'r' \
     AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) \
     ORDER BY 1";

pub async fn rls_forced(ctx: &Ctx) -> Checked {
    if ctx.local.store.as_ref().is_some_and(|s| s.backend() == "sqlite") {
        return Err(crate::Verdict::Skip(
            "PostgreSQL only: the embedded SQLite store has no row-level security".into(),
        ));
    }
    let url = ctx.needs("the PostgreSQL catalogue", &ctx.local.postgres_inspection)?;
    use sqlx::Connection;
    let mut conn =
        sqlx::PgConnection::connect(&url).await.map_err(|e| format!("cannot read the catalogue: {e}"))?;
    let rows: Vec<(String, bool, bool, i64)> = sqlx::query_as(TENANT_TABLES_SQL)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| format!("catalogue query: {e}"))?;
    ensure(rows.len() >= 8, format!("only {} tables carry a tenant_id", rows.len()))?;
    for (table, enabled, forced, policies) in rows {
        ensure(enabled, format!("{table}: row-level security is not enabled"))?;
        ensure(forced, format!("{table}: row-level security is not forced (its owner bypasses it)"))?;
        ensure(policies > 0, format!("{table}: no row-level security policy"))?;
    }
    Ok(())
}
