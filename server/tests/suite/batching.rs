//! Group commit keeps the rules: an acknowledged heartbeat is durable, a
//! revocation refuses every later heartbeat, and duplicates inside one
//! batch emit one event.

use std::sync::Arc;

use oneprotect_server::model::{
    AgentBinding, AgentIdentityRecord, AuditRecord, FirstContact, HeartbeatCommit, HeartbeatOutcome,
    IdentityRefusal, OutboxEvent,
};
use oneprotect_server::store::Store;
use reqwest::StatusCode;
use uuid::Uuid;

use crate::harness::*;

/// A heartbeat write for `identity`, presenting its current certificate,
/// with the records of a first contact.
fn commit(
    identity: &AgentIdentityRecord,
    now: chrono::DateTime<chrono::Utc>,
    sequence: i64,
) -> HeartbeatCommit {
    let (tenant, agent) = (identity.tenant_id.as_str(), identity.agent_id);
    let event = |t: &str| OutboxEvent {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: tenant.into(),
        event_type: t.into(),
        occurred_at: now,
        payload: r#"{"fixture":true}"#.into(),
    };
    HeartbeatCommit {
        tenant_id: tenant.into(),
        agent_id: agent,
        binding: AgentBinding {
            collector_id: identity.collector_id,
            asset_id: identity.asset_id,
            certificate_id: identity.certificate_id,
            stale_after: chrono::Duration::days(7),
            rotation_grace: None,
        },
        now,
        sequence,
        hostname: "batch.fixture".into(),
        agent_version: "0.1.0".into(),
        os_family: None,
        os_version: None,
        telemetry_event: event("asset.telemetry.received"),
        first_contact: Some(FirstContact {
            discovered_event: event("asset.discovered"),
            activation_audit: AuditRecord {
                audit_id: Uuid::new_v4(),
                tenant_id: tenant.into(),
                occurred_at: now,
                actor_type: oneprotect_server::model::ActorType::Agent,
                actor_id: agent.to_string(),
                action: oneprotect_server::model::AuditAction::AgentActivate,
                target_type: "agent".into(),
                target_id: None,
                outcome: oneprotect_server::model::AuditOutcome::Success,
                reason_code: None,
                request_id: "fixture".into(),
                details: Default::default(),
            },
        }),
    }
}

async fn stored_identity(store: &Arc<dyn Store>, agent: Uuid) -> AgentIdentityRecord {
    store.get_identity(TENANT_A, agent).await.expect("read").expect("identity")
}

async fn telemetry_events(store: &Arc<dyn Store>, tenant: &str) -> usize {
    store
        .list_events(tenant, None, 200)
        .await
        .map(|p| p.items.iter().filter(|e| e.event_type == "asset.telemetry.received").count())
        .unwrap_or(0)
}

/// Writers abandoned mid-stream and the store reopened: what was
/// acknowledged is there. (The process is not killed here: see
/// `acknowledged_heartbeats_survive_a_sigkill_of_the_server_process`.)
async fn acknowledged_heartbeats_survive_abandoned_writers_and_a_reopen(backend: Backend) {
    let mut h = Harness::start(backend).await;
    let mut agents = Vec::new();
    for _ in 0..8 {
        agents.push(Uuid::parse_str(&h.enroll(TENANT_A).await.0).expect("uuid"));
    }
    let store = h.store.clone();
    let acknowledged: Arc<std::sync::Mutex<Vec<(Uuid, i64)>>> = Arc::default();
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for agent in &agents {
        let (identity, now) = (stored_identity(&store, *agent).await, h.clock_now());
        let (store, agent, acknowledged, enough) =
            (store.clone(), *agent, acknowledged.clone(), enough.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 1..=1_000i64 {
                if let Ok(HeartbeatOutcome::Accepted) =
                    store.commit_heartbeat(commit(&identity, now, seq)).await
                {
                    let mut acked = acknowledged.lock().unwrap_or_else(|p| p.into_inner());
                    acked.push((agent, seq));
                    if acked.len() >= 60 {
                        enough.notify_one();
                    }
                }
            }
        }));
    }
    // "Crash" while batches are in flight: abandon every writer mid-stream.
    tokio::time::timeout(std::time::Duration::from_secs(30), enough.notified())
        .await
        .expect("60 heartbeats acknowledged");
    for t in &tasks {
        t.abort();
    }
    let acknowledged = acknowledged.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(acknowledged.len() >= 60);
    drop(store);
    let (clock, pg, sqlite_path, tmp) = h.take_for_restart();
    drop(h);
    let reopened = open_store(backend, pg.as_ref(), sqlite_path.as_deref()).await;
    for (agent, seq) in &acknowledged {
        let identity = reopened.get_identity(TENANT_A, *agent).await.expect("read").expect("identity");
        assert!(
            identity.last_sequence.unwrap_or(0) >= *seq,
            "acknowledged heartbeat {seq} of {agent} was lost"
        );
    }
    let events = reopened.list_events(TENANT_A, None, 200).await.expect("events").items;
    let stored = events.iter().filter(|e| e.event_type == "asset.telemetry.received").count();
    assert!(
        stored >= acknowledged.len().min(150),
        "every acknowledged heartbeat's event is durable ({stored} < {})",
        acknowledged.len()
    );
    let _ = (clock, tmp);
}

/// The server binary, serving `database_url` with the harness's fixture
/// secrets; returns the child and the address it serves on.
fn spawn_server(database_url: &str) -> (std::process::Child, String) {
    spawn_server_with(database_url, &[])
}

/// [`spawn_server`] with more environment.
pub fn spawn_server_with(database_url: &str, env: &[(&str, &str)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("fixture secrets are text");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_oneprotect-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--database-url", database_url])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ONEPROTECT_ADMIN_JWT_SECRET", text(ADMIN_SECRET))
        .env("ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET", text(RUNTIME_SECRET))
        .env("ONEPROTECT_TOKEN_HASH_KEY", text(HASH_KEY))
        .env("ONEPROTECT_ADMIN_JWT_ISSUER", ISSUER)
        .env("ONEPROTECT_ADMIN_JWT_AUDIENCE", AUDIENCE)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the server binary");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let listen = loop {
        let line = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the server exited before serving: {:?}", child.try_wait()));
        let record: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if record["fields"]["message"] == "serving" {
            break record["fields"]["listen"]
                .as_str()
                .expect("the serving line names the address")
                .to_owned();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, format!("http://{listen}"))
}

/// A database for the server binary, and eight agents of tenant A
/// enrolled in it in-process with the real clock (so the binary accepts
/// their runtime tokens).
pub struct EnrolledDatabase {
    pub tmp: tempfile::TempDir,
    pub sqlite_path: std::path::PathBuf,
    pub pg: Option<PgDatabase>,
    /// The URL the server binary is given.
    pub url: String,
    /// (agent id, runtime token) of each agent.
    pub agents: Vec<(String, String)>,
}

pub async fn enrolled_database(backend: Backend) -> EnrolledDatabase {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sqlite_path = tmp.path().join("oneprotect.db");
    let pg = match backend {
        Backend::Postgres => Some(PgDatabase::create().await),
        Backend::Sqlite => None,
    };
    let store = open_store(backend, pg.as_ref(), Some(&sqlite_path)).await;
    let clock = Arc::new(oneprotect_server::clock::ManualClock::new(chrono::Utc::now()));
    let h = Harness::serve(store, clock, Options::default(), None, None, None).await;
    let mut agents = Vec::new();
    for _ in 0..8 {
        let (agent, runtime, _) = h.enroll(TENANT_A).await;
        agents.push((agent, runtime));
    }
    drop(h);
    let url = match &pg {
        Some(pg) => pg.app_url(),
        None => sqlite_path.to_string_lossy().into_owned(),
    };
    EnrolledDatabase { tmp, sqlite_path, pg, url, agents }
}

/// A real crash: the server process is killed with SIGKILL while eight
/// agents heartbeat through it, then the store is reopened. Every
/// heartbeat the process answered 200 is durable, with its event.
async fn acknowledged_heartbeats_survive_a_sigkill_of_the_server_process(backend: Backend) {
    let EnrolledDatabase { tmp, sqlite_path, pg, url, agents } = enrolled_database(backend).await;
    let (mut child, base) = spawn_server(&url);

    let acknowledged: Arc<std::sync::Mutex<Vec<(String, u64)>>> = Arc::default();
    let enough = Arc::new(tokio::sync::Notify::new());
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for (agent, runtime) in agents.clone() {
        let (http, base, acknowledged, enough) =
            (http.clone(), base.clone(), acknowledged.clone(), enough.clone());
        tasks.push(tokio::spawn(async move {
            for sequence in 1..=10_000u64 {
                let body =
                    serde_json::json!({"sequence": sequence, "collected_at": chrono::Utc::now(), "hostname": "host-1.fixture", "agent_version": "0.1.0"});
                let url = format!("{base}/api/v1/agents/{agent}/telemetry/heartbeat");
                let Ok(resp) = http.post(url).bearer_auth(&runtime).json(&body).send().await else { return };
                if resp.status() != StatusCode::OK {
                    return;
                }
                let mut acked = acknowledged.lock().unwrap_or_else(|p| p.into_inner());
                acked.push((agent.clone(), sequence));
                if acked.len() >= 400 {
                    enough.notify_one();
                }
            }
        }));
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), enough.notified())
        .await
        .expect("400 heartbeats acknowledged");
    child.kill().expect("SIGKILL the server");
    let _ = child.wait();
    for t in &tasks {
        t.abort();
    }
    let acknowledged = acknowledged.lock().unwrap_or_else(|p| p.into_inner()).clone();

    let reopened = open_store(backend, pg.as_ref(), Some(&sqlite_path)).await;
    let mut events_per_agent = std::collections::BTreeMap::<String, usize>::new();
    let mut after = None;
    loop {
        let page = reopened.list_events(TENANT_A, after, 500).await.expect("events");
        for e in page.items.iter().filter(|e| e.event_type == "asset.telemetry.received") {
            let agent = serde_json::from_str::<serde_json::Value>(&e.payload)
                .ok()
                .and_then(|p| p["data"]["agent_id"].as_str().map(str::to_owned));
            *events_per_agent.entry(agent.unwrap_or_default()).or_default() += 1;
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    for (agent, _) in &agents {
        let highest = acknowledged.iter().filter(|(a, _)| a == agent).map(|(_, s)| *s).max().unwrap_or(0);
        let identity = reopened
            .get_identity(TENANT_A, Uuid::parse_str(agent).expect("uuid"))
            .await
            .expect("read")
            .expect("identity");
        assert!(
            identity.last_sequence.unwrap_or(0) >= highest as i64,
            "agent {agent}: heartbeat {highest} was acknowledged, then lost"
        );
        let events = events_per_agent.get(agent).copied().unwrap_or(0);
        assert!(
            events as u64 >= highest,
            "agent {agent}: {highest} heartbeats acknowledged, {events} telemetry events stored"
        );
    }
    drop(reopened);
    let _ = tmp;
}

async fn a_revocation_during_a_batch_refuses_every_later_heartbeat(backend: Backend) {
    let h = Harness::start(backend).await;
    let (agent, runtime, _) = h.enroll(TENANT_A).await;
    let agent_id = Uuid::parse_str(&agent).expect("uuid");
    let store = h.store.clone();
    let (identity, now) = (stored_identity(&store, agent_id).await, h.clock_now());
    let stream = {
        let (store, identity) = (store.clone(), identity.clone());
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for seq in 1..=300i64 {
                outcomes
                    .push((seq, store.commit_heartbeat(commit(&identity, now, seq)).await.expect("commit")));
            }
            outcomes
        })
    };
    let revoked =
        h.call(&ops::revoke_agent(&agent), Some(&h.admin(TENANT_A)), Some(&serde_json::json!({}))).await;
    assert_eq!(revoked.0, StatusCode::OK);
    // The very next request after the revocation is refused.
    assert_problem(
        &h.heartbeat(&agent, &runtime, 10_000).await,
        StatusCode::FORBIDDEN,
        ProblemCode::IdentityRevoked,
    );
    assert_eq!(
        store.commit_heartbeat(commit(&identity, now, 20_000)).await.expect("commit"),
        HeartbeatOutcome::Refused(IdentityRefusal::Revoked)
    );
    let outcomes = stream.await.expect("stream");
    // Acceptances stop at the revocation and never resume.
    let first_refused = outcomes
        .iter()
        .position(|(_, o)| *o == HeartbeatOutcome::Refused(IdentityRefusal::Revoked))
        .unwrap_or(outcomes.len());
    assert!(
        outcomes[first_refused..]
            .iter()
            .all(|(_, o)| *o == HeartbeatOutcome::Refused(IdentityRefusal::Revoked)),
        "no heartbeat was accepted after the revocation"
    );
    let identity = store.get_identity(TENANT_A, agent_id).await.expect("read").expect("identity");
    let last_accepted = outcomes[..first_refused].last().map(|(s, _)| *s);
    assert_eq!(identity.last_sequence, last_accepted, "the stored sequence is the last accepted one");
}

async fn duplicates_inside_one_batch_emit_a_single_event(backend: Backend) {
    let h = Harness::start(backend).await;
    let agent = Uuid::parse_str(&h.enroll(TENANT_A).await.0).expect("uuid");
    let store = h.store.clone();
    let (identity, now) = (stored_identity(&store, agent).await, h.clock_now());
    let before = telemetry_events(&store, TENANT_A).await;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (store, identity) = (store.clone(), identity.clone());
            tokio::spawn(
                async move { store.commit_heartbeat(commit(&identity, now, 1)).await.expect("commit") },
            )
        })
        .collect();
    let mut accepted = 0;
    let mut duplicates = 0;
    for t in tasks {
        match t.await.expect("task") {
            HeartbeatOutcome::Accepted => accepted += 1,
            HeartbeatOutcome::Duplicate => duplicates += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((accepted, duplicates), (1, 5));
    assert_eq!(telemetry_events(&store, TENANT_A).await, before + 1, "one event for one sequence");
}

async fn one_failing_heartbeat_does_not_fail_the_rest_of_its_batch(backend: Backend) {
    let h = Harness::start(backend).await;
    let store = h.store.clone();
    let agent = Uuid::parse_str(&h.enroll(TENANT_A).await.0).expect("uuid");
    let (identity, now) = (stored_identity(&store, agent).await, h.clock_now());
    let commits: Vec<HeartbeatCommit> = (1..=4).map(|seq| commit(&identity, now, seq)).collect();
    // Heartbeat 3 reuses heartbeat 1's event id: writing it violates the
    // outbox's primary key. One agent's heartbeats share a writer, and
    // `join!` queues them in order, so they travel in one batch.
    let mut clashing = commits[2].clone();
    clashing.telemetry_event.event_id = commits[0].telemetry_event.event_id.clone();
    let before = telemetry_events(&store, TENANT_A).await;
    let outcomes = tokio::join!(
        store.commit_heartbeat(commits[0].clone()),
        store.commit_heartbeat(commits[1].clone()),
        store.commit_heartbeat(clashing),
        store.commit_heartbeat(commits[3].clone()),
    );
    assert!(matches!(outcomes.0, Ok(HeartbeatOutcome::Accepted)), "{:?}", outcomes.0);
    assert!(matches!(outcomes.1, Ok(HeartbeatOutcome::Accepted)), "{:?}", outcomes.1);
    assert!(outcomes.2.is_err(), "the clashing heartbeat fails: {:?}", outcomes.2);
    assert!(matches!(outcomes.3, Ok(HeartbeatOutcome::Accepted)), "{:?}", outcomes.3);
    assert_eq!(
        telemetry_events(&store, TENANT_A).await,
        before + 3,
        "every acknowledged heartbeat is stored"
    );
    assert_eq!(stored_identity(&store, agent).await.last_sequence, Some(4));
}

async fn a_batch_mixing_tenants_writes_each_heartbeat_under_its_own_tenant(backend: Backend) {
    let h = Harness::start(backend).await;
    let store = h.store.clone();
    let now = h.clock_now();
    let mut commits = Vec::new();
    // Twelve agents spread over the writers' shards, so batches mix tenants.
    for tenant in [TENANT_A, TENANT_B].repeat(5).into_iter().chain([TENANT_B, TENANT_B]) {
        let agent = Uuid::parse_str(&h.enroll(tenant).await.0).expect("uuid");
        let identity = store.get_identity(tenant, agent).await.expect("read").expect("identity");
        commits.push(commit(&identity, now, 1));
    }
    let before = (telemetry_events(&store, TENANT_A).await, telemetry_events(&store, TENANT_B).await);
    let tasks: Vec<_> = commits
        .iter()
        .cloned()
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move { store.commit_heartbeat(c).await.expect("commit") })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), HeartbeatOutcome::Accepted);
    }
    assert_eq!(telemetry_events(&store, TENANT_A).await, before.0 + 5);
    assert_eq!(telemetry_events(&store, TENANT_B).await, before.1 + 7);
    for c in &commits {
        let identity = store.get_identity(&c.tenant_id, c.agent_id).await.expect("read").expect("identity");
        assert_eq!(identity.last_sequence, Some(1), "each identity is updated in its own tenant");
        let other = if c.tenant_id == TENANT_A { TENANT_B } else { TENANT_A };
        assert!(store.get_identity(other, c.agent_id).await.expect("read").is_none());
    }
}

async fn events_of(store: &Arc<dyn Store>, tenant: &str, event_type: &str) -> usize {
    store
        .list_events(tenant, None, 200)
        .await
        .map(|p| p.items.iter().filter(|e| e.event_type == event_type).count())
        .unwrap_or(0)
}

async fn activations(store: &Arc<dyn Store>, agent: Uuid) -> usize {
    let audit = store.list_audit(TENANT_A, None, 200).await.expect("audit").items;
    audit
        .iter()
        .filter(|a| {
            a.action == oneprotect_server::model::AuditAction::AgentActivate
                && a.actor_id == agent.to_string()
        })
        .count()
}

async fn a_first_heartbeat_without_its_first_contact_records_writes_nothing_and_asks_for_them(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    let store = h.store.clone();
    let agent = Uuid::parse_str(&h.enroll(TENANT_A).await.0).expect("uuid");
    let (identity, now) = (stored_identity(&store, agent).await, h.clock_now());
    let bare = |seq| HeartbeatCommit { first_contact: None, ..commit(&identity, now, seq) };
    let before =
        (telemetry_events(&store, TENANT_A).await, events_of(&store, TENANT_A, "asset.discovered").await);

    assert_eq!(
        store.commit_heartbeat(bare(1)).await.expect("commit"),
        HeartbeatOutcome::FirstContactRequired
    );
    assert_eq!(
        store.commit_heartbeat_unbatched(bare(1)).await.expect("commit"),
        HeartbeatOutcome::FirstContactRequired
    );
    assert_eq!(stored_identity(&store, agent).await, identity, "the identity is untouched");
    assert_eq!(
        (telemetry_events(&store, TENANT_A).await, events_of(&store, TENANT_A, "asset.discovered").await),
        before
    );
    assert_eq!(activations(&store, agent).await, 0);

    // With the records, the first heartbeat activates the identity and discovers its asset, once.
    assert_eq!(
        store.commit_heartbeat(commit(&identity, now, 1)).await.expect("commit"),
        HeartbeatOutcome::Accepted
    );
    // Later heartbeats need no first-contact records and write none.
    assert_eq!(store.commit_heartbeat(bare(2)).await.expect("commit"), HeartbeatOutcome::Accepted);
    assert_eq!(
        store.commit_heartbeat(commit(&identity, now, 3)).await.expect("commit"),
        HeartbeatOutcome::Accepted
    );
    assert_eq!(store.commit_heartbeat_unbatched(bare(4)).await.expect("commit"), HeartbeatOutcome::Accepted);
    assert_eq!(events_of(&store, TENANT_A, "asset.discovered").await, before.1 + 1, "one discovery");
    assert_eq!(telemetry_events(&store, TENANT_A).await, before.0 + 4);
    assert_eq!(activations(&store, agent).await, 1, "one activation");
    assert_eq!(stored_identity(&store, agent).await.last_sequence, Some(4));
}

crate::both_backends!(
    a_first_heartbeat_without_its_first_contact_records_writes_nothing_and_asks_for_them,
    a_batch_mixing_tenants_writes_each_heartbeat_under_its_own_tenant,
    one_failing_heartbeat_does_not_fail_the_rest_of_its_batch,
    acknowledged_heartbeats_survive_abandoned_writers_and_a_reopen,
    acknowledged_heartbeats_survive_a_sigkill_of_the_server_process,
    a_revocation_during_a_batch_refuses_every_later_heartbeat,
    duplicates_inside_one_batch_emit_a_single_event,
);
