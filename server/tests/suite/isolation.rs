//! Tenant isolation: cross-tenant reads answer 404, and on PostgreSQL the
//! application role cannot see another tenant's rows even with raw SQL.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

async fn another_tenants_agents_and_tokens_answer_404_and_never_appear_in_lists(backend: Backend) {
    let h = Harness::start(backend).await;
    let (agent, _, _) = h.enroll(TENANT_A).await;
    let (_, token_id) = h.issue_token(TENANT_A, 1).await;
    let b = h.admin(TENANT_B);
    assert_problem(
        &h.call(&ops::get_agent(&agent), Some(&b), None).await,
        StatusCode::NOT_FOUND,
        ProblemCode::NotFound,
    );
    assert_problem(
        &h.call(&ops::revoke_agent(&agent), Some(&b), Some(&json!({}))).await,
        StatusCode::NOT_FOUND,
        ProblemCode::NotFound,
    );
    assert_problem(
        &h.call(&ops::revoke_enrollment_token(&token_id), Some(&b), Some(&json!({}))).await,
        StatusCode::NOT_FOUND,
        ProblemCode::NotFound,
    );
    let missing = uuid::Uuid::new_v4();
    let unknown = h.call(&ops::get_agent(missing), Some(&b), None).await;
    let cross = h.call(&ops::get_agent(&agent), Some(&b), None).await;
    assert_eq!(unknown.1["detail"], cross.1["detail"], "a foreign id looks exactly like a missing one");
    for route in [ops::list_agents(), ops::list_enrollment_tokens(), ops::list_events()] {
        let op = route.operation_id();
        let (status, v) = h.call(&route, Some(&b), None).await;
        assert_eq!(status, StatusCode::OK);
        let text = v.to_string();
        assert!(
            !text.contains(&agent) && !text.contains(&token_id) && !text.contains(TENANT_A),
            "{op} leaks tenant A: {text}"
        );
    }
    // Tenant B's audit records B's own failed attempts (with the ids B sent),
    // and nothing of tenant A's.
    let audit = h.audit(TENANT_B).await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(
        audit.iter().all(|a| a["tenant_id"] == TENANT_B
            && a["outcome"] == "failure"
            && a["reason_code"] == "not_found")
    );
    assert!(
        !h.audit(TENANT_A).await.iter().any(|a| a["actor_id"] == "admin@tenant-b"),
        "B's attempts are not written into A's trail"
    );
    let (_, v) = h.call(&ops::get_agent(&agent), Some(&h.admin(TENANT_A)), None).await;
    assert_eq!(v["status"], "enrolled", "tenant B's attempt changed nothing");
    // The 404 is not enough: the token B tried to revoke is still active and still enrolls.
    assert_eq!(
        h.token_metadata(TENANT_A, &token_id).await["status"],
        "active",
        "tenant B's revoke wrote nothing"
    );
}

async fn pagination_walks_every_item_once_and_rejects_forged_cursors(backend: Backend) {
    let h = Harness::start(backend).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(h.issue_token(TENANT_A, 1).await.1);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let route = match &cursor {
            Some(c) => ops::list_enrollment_tokens().query("limit", 2).query("cursor", c),
            None => ops::list_enrollment_tokens().query("limit", 2),
        };
        let (_, v) = h.call(&route, Some(&h.admin(TENANT_A)), None).await;
        seen.extend(
            v["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|t| t["enrollment_token_id"].as_str().expect("id").to_owned()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let forged = h
        .call(&ops::list_enrollment_tokens().query("cursor", "bm9wZQ"), Some(&h.admin(TENANT_A)), None)
        .await;
    assert_problem(&forged, StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid);
}

crate::both_backends!(
    another_tenants_agents_and_tokens_answer_404_and_never_appear_in_lists,
    pagination_walks_every_item_once_and_rejects_forged_cursors
);

/// PostgreSQL only: raw SQL as the application role sees no other tenant's
/// rows in any tenant table, and none at all without a tenant set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_app_role_raw_sql_sees_no_row_of_another_tenant() {
    use sqlx::{Connection, Executor, Row};
    let h = Harness::start(Backend::Postgres).await;
    let (agent, runtime, _) = h.enroll(TENANT_A).await;
    assert_eq!(h.heartbeat(&agent, &runtime, 1).await.0, StatusCode::OK);
    let (agent_b, runtime_b, _) = h.enroll(TENANT_B).await;
    assert_eq!(h.heartbeat(&agent_b, &runtime_b, 1).await.0, StatusCode::OK);
    let pg = h.pg.as_ref().expect("pg");
    let mut conn = sqlx::PgConnection::connect(&pg.app_url()).await.expect("connect as app role");
    let tables = [
        "agent_enrollment_tokens",
        "agent_identities",
        "agent_device_certificates",
        "agent_enrollment_nonces",
        "audit_events",
        "event_outbox",
        "assets",
    ];
    for table in tables {
        let total: i64 = conn
            .fetch_one(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .await
            .expect("count")
            .get(0);
        assert_eq!(total, 0, "{table}: no tenant set, no rows");
        let mut tx = conn.begin().await.expect("begin");
        tx.execute(sqlx::query("SELECT set_config('oneprotect.tenant_id', $1, true)").bind(TENANT_B))
            .await
            .expect("set tenant");
        let foreign: i64 = tx
            .fetch_one(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table} WHERE tenant_id <> '{TENANT_B}'"
            )))
            .await
            .expect("count")
            .get(0);
        let own: i64 = tx
            .fetch_one(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .await
            .expect("count")
            .get(0);
        assert_eq!(foreign, 0, "{table}: tenant B sees none of tenant A's rows");
        assert!(own > 0, "{table}: tenant B sees its own rows");
        let moved = tx
            .execute(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET tenant_id = '{TENANT_A}' WHERE tenant_id = '{TENANT_B}'"
            )))
            .await;
        assert!(moved.is_err(), "{table}: a row cannot be moved into another tenant");
        tx.rollback().await.expect("rollback");
    }
    let flags = conn
        .fetch_one("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        .await
        .expect("flags");
    assert_eq!((flags.get::<bool, _>(0), flags.get::<bool, _>(1)), (false, false));
    let forced: i64 = conn
        .fetch_one("SELECT count(*) FROM pg_class WHERE relname = ANY(ARRAY['agent_enrollment_tokens','agent_identities','agent_device_certificates','agent_revocations','agent_enrollment_nonces','audit_events','event_outbox','assets']) AND relrowsecurity AND relforcerowsecurity")
        .await
        .expect("rls flags")
        .get(0);
    assert_eq!(forced, 8, "every tenant table has RLS enabled and forced");
    let resolved: Option<String> = sqlx::query_scalar("SELECT oneprotect_enrollment_token_tenant($1)")
        .bind(uuid::Uuid::new_v4())
        .fetch_one(&mut conn)
        .await
        .expect("resolver");
    assert_eq!(resolved, None);
}

/// PostgreSQL only: a database lost while the server runs (dropped, its
/// connections terminated) is answered 503 `store_unavailable` on every
/// kind of call, never 500: callers retry a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_database_lost_while_running_answers_503_store_unavailable() {
    use sqlx::{Connection, Executor};
    let h = Harness::start(Backend::Postgres).await;
    let (agent, runtime, _) = h.enroll(TENANT_A).await;
    assert_eq!(h.heartbeat(&agent, &runtime, 1).await.0, StatusCode::OK);
    let pg = h.pg.as_ref().expect("pg");
    let admin_url = std::env::var("ONEPROTECT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("connect as the test superuser");
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", pg.name)))
        .await
        .expect("drop the database under the server");

    for sequence in [2, 3] {
        let (status, body) = h.heartbeat(&agent, &runtime, sequence).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "heartbeat {sequence}: {body}");
        assert_eq!(body["code"], "store_unavailable", "{body}");
    }
    let listed = h
        .http
        .get(format!("{}/api/v1/agents", h.base))
        .bearer_auth(h.viewer(TENANT_A))
        .send()
        .await
        .expect("send");
    assert_eq!(listed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = listed.json().await.expect("problem");
    assert_eq!(body["code"], "store_unavailable", "{body}");
    let ready = h.http.get(format!("{}/readyz", h.base)).send().await.expect("send");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}
