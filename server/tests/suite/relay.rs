//! The outbox relay against a real NATS JetStream server that each test
//! launches itself (its own port and store directory; never the machine's
//! shared broker): every committed event arrives once, on its contract
//! channel, in commit order; a broker outage and a lost mark lose and
//! duplicate nothing.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oneprotect_server::metrics::{Metrics, RELAY_DUPLICATES, RELAY_PUBLISHED};
use oneprotect_server::model::OutboxEvent;
use oneprotect_server::relay::{Relay, RelayConfig, Round, connect, ensure_stream, subject_for};
use reqwest::StatusCode;

use crate::harness::*;

/// A `nats-server -js` of the test's own, stopped when dropped.
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Launches a server that binds a free port itself (`-p -1`) and
    /// names it in its ports file: a port chosen here and handed over could
    /// be taken by another process in between.
    pub fn start() -> Self {
        let mut server = Self { port: 0, dir: tempfile::tempdir().expect("store dir"), child: None };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Launches on `self.port`, or on a port of the server's choosing the
    /// first time, and returns once the server listens.
    fn launch(&mut self) {
        let port = if self.port == 0 { "-1".to_owned() } else { self.port.to_string() };
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(self.dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed for these tests");
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // The ports file is written once the server listens.
        let listening = loop {
            let url = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|ports| ports["nats"][0].as_str().map(str::to_owned));
            if let Some(url) = url {
                break url;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "nats-server exited with {exited:?} (port {port})");
            assert!(Instant::now() < deadline, "nats-server wrote no ports file within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        self.port =
            listening.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the ports file names a port");
    }

    /// Stops the server gracefully (what it acknowledged is on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Every message in the stream, in stream order: (subject, message id, payload).
    pub async fn messages(&self, stream: &str) -> Vec<(String, String, String)> {
        let client = async_nats::connect(self.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.expect("the stream exists");
        let last = stream.info().await.expect("info").state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let m = stream.get_raw_message(seq).await.expect("message");
            let id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((m.subject.to_string(), id, String::from_utf8(m.payload.to_vec()).expect("utf-8")));
        }
        out
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A relay on the harness's store, its stream created.
async fn relay_for(
    nats: &NatsServer,
    store: Arc<dyn oneprotect_server::store::Store>,
    h: &Harness,
) -> (Relay, Arc<Metrics>) {
    let config = RelayConfig::new(nats.url());
    let client = connect(&config).await.expect("connect");
    let metrics = Arc::new(Metrics::default());
    let relay = Relay::new(store, client, h.clock.clone(), metrics.clone());
    ensure_stream(relay.jetstream(), &config).await.expect("stream");
    (relay, metrics)
}

/// Rounds until nothing waits; a failed round (the broker reconnecting)
/// is retried until the deadline.
async fn drain(relay: &Relay) -> Vec<Round> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = Vec::new();
    loop {
        match relay.round().await {
            Ok(round) if round.claimed == 0 => return rounds,
            Ok(round) => rounds.push(round),
            Err(e) => {
                assert!(Instant::now() < deadline, "the relay kept failing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Every stored event of both tenants, each tenant's in commit order.
async fn stored_events(h: &Harness) -> BTreeMap<&'static str, Vec<OutboxEvent>> {
    let mut out = BTreeMap::new();
    for tenant in [TENANT_A, TENANT_B] {
        let mut events = Vec::new();
        let mut after = None;
        loop {
            let page = h.store.list_events(tenant, after, 500).await.expect("events");
            events.extend(page.items);
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        out.insert(tenant, events);
    }
    out
}

/// Events of both tenants: tokens, enrollments, heartbeats.
async fn produce(h: &Harness, agents_per_tenant: usize, heartbeats: u64) {
    for tenant in [TENANT_A, TENANT_B] {
        for _ in 0..agents_per_tenant {
            let (agent, token, _) = h.enroll(tenant).await;
            for seq in 1..=heartbeats {
                assert_eq!(h.heartbeat(&agent, &token, seq).await.0, StatusCode::OK);
            }
        }
    }
}

/// The agent an event is about (token events: the token).
fn agent_of(payload: &str) -> String {
    let event: serde_json::Value = serde_json::from_str(payload).expect("a CloudEvent");
    event["data"]["agent_id"].as_str().or(event["subject"].as_str()).unwrap_or_default().to_owned()
}

/// The broker holds every stored event exactly once, by id, with the
/// stored bytes, on its contract subject, and each agent's events in
/// their commit order.
fn assert_delivered_once_in_order(
    stored: &BTreeMap<&str, Vec<OutboxEvent>>,
    published: &[(String, String, String)],
) {
    let total: usize = stored.values().map(Vec::len).sum();
    assert_eq!(published.len(), total, "one message per event");
    let mut position = BTreeMap::new();
    for (i, (subject, id, payload)) in published.iter().enumerate() {
        assert!(position.insert(id.clone(), (i, subject, payload)).is_none(), "event {id} published twice");
    }
    for (tenant, events) in stored {
        // Commit order is promised per agent: two agents' heartbeats commit
        // in parallel batches, so their outbox numbers interleave.
        let mut last = BTreeMap::new();
        for e in events {
            let (i, subject, payload) = position
                .get(&e.event_id)
                .unwrap_or_else(|| panic!("event {} of {tenant} never arrived", e.event_id));
            assert_eq!(*payload, &e.payload, "the message is the stored CloudEvent");
            assert_eq!(
                subject.as_str(),
                subject_for(&e.payload).expect("routable"),
                "published on its channel"
            );
            assert!(subject.ends_with(&e.event_type), "{subject} carries {}", e.event_type);
            let agent = agent_of(&e.payload);
            if let Some(previous) = last.insert(agent.clone(), *i) {
                assert!(previous < *i, "{tenant}: the events of agent {agent} left out of commit order");
            }
        }
    }
}

async fn every_committed_event_arrives_once_on_its_channel_in_commit_order(backend: Backend) {
    let nats = NatsServer::start();
    let h = Harness::start(backend).await;
    produce(&h, 3, 4).await;
    let (relay, metrics) = relay_for(&nats, h.store.clone(), &h).await;
    let rounds = drain(&relay).await;
    let stored = stored_events(&h).await;
    let total: usize = stored.values().map(Vec::len).sum();
    assert_eq!(total, 2 * 3 * (1 + 2 + 4), "per agent: its token, enrollment and discovery, 4 heartbeats");
    assert_eq!(rounds.iter().map(|r| r.published).sum::<usize>(), total);
    assert_delivered_once_in_order(&stored, &nats.messages("ONEPROTECT_EVENTS").await);
    assert_eq!(metrics.counter(RELAY_PUBLISHED), total as u64);
    assert_eq!(metrics.counter(RELAY_DUPLICATES), 0, "nothing was sent twice");
    assert_eq!(relay.round().await.expect("round").claimed, 0, "every event is marked published");
}

async fn a_broker_outage_loses_nothing_and_duplicates_nothing(backend: Backend) {
    let mut nats = NatsServer::start();
    let h = Harness::start(backend).await;
    produce(&h, 1, 2).await;
    let (relay, metrics) = relay_for(&nats, h.store.clone(), &h).await;
    drain(&relay).await;
    nats.stop();
    // Events keep being committed while the broker is down.
    produce(&h, 2, 3).await;
    let failed = relay.round().await;
    assert!(failed.is_err(), "a round without a broker fails: {failed:?}");
    nats.restart();
    drain(&relay).await;
    let stored = stored_events(&h).await;
    assert_delivered_once_in_order(&stored, &nats.messages("ONEPROTECT_EVENTS").await);
    let total: usize = stored.values().map(Vec::len).sum();
    assert!(metrics.counter(RELAY_PUBLISHED) >= total as u64);
}

async fn events_re_sent_after_a_lost_mark_are_dropped_by_the_broker(backend: Backend) {
    let nats = NatsServer::start();
    let h = Harness::start(backend).await;
    produce(&h, 2, 2).await;
    let (relay, metrics) = relay_for(&nats, h.store.clone(), &h).await;
    drain(&relay).await;
    let published = nats.messages("ONEPROTECT_EVENTS").await.len();
    // What a crash between the broker's ack and the mark leaves behind.
    forget_published_marks(&h).await;
    let again = drain(&relay).await;
    assert_eq!(
        again.iter().map(|r| r.duplicates).sum::<usize>(),
        published,
        "every re-sent event is a duplicate"
    );
    assert_eq!(metrics.counter(RELAY_DUPLICATES), published as u64);
    assert_delivered_once_in_order(&stored_events(&h).await, &nats.messages("ONEPROTECT_EVENTS").await);
}

/// Clears every `published_at`, as the owner of the database could.
async fn forget_published_marks(h: &Harness) {
    match (&h.pg, &h.sqlite_path) {
        (Some(pg), _) => {
            use sqlx::Executor;
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.superuser_url())
                .await
                .expect("superuser");
            conn.execute("UPDATE event_outbox SET published_at = NULL").await.expect("unmark");
        }
        (None, Some(path)) => {
            let conn = rusqlite::Connection::open(path).expect("open");
            conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
            conn.execute("UPDATE event_outbox SET published_at = NULL", []).expect("unmark");
        }
        _ => panic!("no database to reach"),
    }
}

crate::both_backends!(
    every_committed_event_arrives_once_on_its_channel_in_commit_order,
    a_broker_outage_loses_nothing_and_duplicates_nothing,
    events_re_sent_after_a_lost_mark_are_dropped_by_the_broker,
    a_server_killed_mid_relay_loses_no_event_and_duplicates_none,
);

/// Two replicas' relays on one PostgreSQL database, running at once:
/// every event is published by exactly one of them (no duplicate even
/// for the broker to drop), in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_relaying_at_once_publish_every_event_once_in_commit_order() {
    let nats = NatsServer::start();
    let h = Harness::start(Backend::Postgres).await;
    produce(&h, 10, 12).await;
    let second = open_store(Backend::Postgres, h.pg.as_ref(), None).await;
    let (first, first_metrics) = relay_for(&nats, h.store.clone(), &h).await;
    let (second, second_metrics) = relay_for(&nats, second, &h).await;
    let stored = stored_events(&h).await;
    let total: usize = stored.values().map(Vec::len).sum();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let (a, b) = tokio::join!(drain_all(&first, &done, total), drain_all(&second, &done, total));
    assert_eq!(a + b, total, "the two relays together published each event once ({a} + {b})");
    assert_eq!(first_metrics.counter(RELAY_DUPLICATES) + second_metrics.counter(RELAY_DUPLICATES), 0);
    assert_delivered_once_in_order(&stored, &nats.messages("ONEPROTECT_EVENTS").await);
}

/// Rounds until both relays together published `total` events (another
/// replica may hold the claim when this one finds nothing); the events
/// this one published.
async fn drain_all(relay: &Relay, done: &std::sync::atomic::AtomicUsize, total: usize) -> usize {
    use std::sync::atomic::Ordering;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = 0;
    while done.load(Ordering::SeqCst) < total {
        assert!(Instant::now() < deadline, "the relays did not publish {total} events");
        let round = relay.round().await.expect("round");
        published += round.published;
        done.fetch_add(round.published, Ordering::SeqCst);
        if round.claimed == 0 {
            tokio::task::yield_now().await;
        }
    }
    published
}

/// A real crash: the server binary relays to NATS while eight agents
/// heartbeat through it and is killed with SIGKILL; restarted, its relay
/// publishes what was left, and the broker ends up with every committed
/// event exactly once, in commit order.
async fn a_server_killed_mid_relay_loses_no_event_and_duplicates_none(backend: Backend) {
    let nats = NatsServer::start();
    let crate::batching::EnrolledDatabase { tmp, sqlite_path, pg, url, agents } =
        crate::batching::enrolled_database(backend).await;
    let nats_url = nats.url();
    let env = [("ONEPROTECT_NATS_URL", nats_url.as_str())];
    let (mut child, base) = crate::batching::spawn_server_with(&url, &env);
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for (agent, runtime) in agents {
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            for sequence in 1..=10_000u64 {
                let body = serde_json::json!({"sequence": sequence, "collected_at": chrono::Utc::now(), "hostname": "host-1.fixture", "agent_version": "0.1.0"});
                let url = format!("{base}/api/v1/agents/{agent}/telemetry/heartbeat");
                match http.post(url).bearer_auth(&runtime).json(&body).send().await {
                    Ok(resp) if resp.status() == StatusCode::OK => {}
                    _ => return,
                }
            }
        }));
    }
    // Killed while events are being produced and relayed.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the server's relay published nothing");
        if let Ok(mut stream) = js.get_stream("ONEPROTECT_EVENTS").await
            && stream.info().await.map(|i| i.state.messages).unwrap_or(0) >= 300
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL the server");
    let _ = child.wait();
    for t in &tasks {
        t.abort();
    }
    // Restarted on the same database and broker, with no more traffic.
    let (mut restarted, _) = crate::batching::spawn_server_with(&url, &env);
    let reopened = open_store(backend, pg.as_ref(), Some(&sqlite_path)).await;
    let mut stored = Vec::new();
    let mut after = None;
    loop {
        let page = reopened.list_events(TENANT_A, after, 500).await.expect("events");
        stored.extend(page.items);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = js
            .get_stream("ONEPROTECT_EVENTS")
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .state
            .messages;
        if messages as usize >= stored.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{messages} of {} events arrived after the restart", stored.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill").args(["-TERM", &restarted.id().to_string()]).status();
    let _ = restarted.wait();
    let stored = BTreeMap::from([(TENANT_A, stored)]);
    assert_delivered_once_in_order(&stored, &nats.messages("ONEPROTECT_EVENTS").await);
    drop(reopened);
    let _ = tmp;
}
