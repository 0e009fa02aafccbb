//! The load generator behind `make bench`: loopback only, bounded in time
//! and count. Every figure is measured in the same run as its baselines,
//! and the measures take turns in short slices (`Workload`, one round after
//! another), so that each ratio compares figures taken seconds apart and
//! holds on a machine whose speed drifts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oneprotect_server::model::{AgentBinding, AuditRecord, FirstContact, HeartbeatCommit, OutboxEvent};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::Tenant;
use crate::local::LocalPlatform;

pub const MAX_AGENTS: usize = 100_000;
pub const MAX_DURATION: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Measure {
    pub name: String,
    pub operations: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// status/code → count, for everything that was not a success.
    pub errors: std::collections::BTreeMap<String, usize>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// What one measure produced, in one slice or merged over several.
#[derive(Debug, Default)]
pub struct Samples {
    latencies_us: Vec<u64>,
    errors: std::collections::BTreeMap<String, usize>,
    elapsed: Duration,
}

impl Samples {
    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Successful operations.
    pub fn ok_count(&self) -> usize {
        self.latencies_us.len()
    }

    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.elapsed += other.elapsed;
    }

    pub fn into_measure(mut self, name: &str) -> Measure {
        self.latencies_us.sort_unstable();
        let operations = self.latencies_us.len();
        Measure {
            name: name.to_owned(),
            operations,
            seconds: self.elapsed.as_secs_f64(),
            per_second: self.rate(),
            p50_ms: percentile(&self.latencies_us, 0.50),
            p95_ms: percentile(&self.latencies_us, 0.95),
            p99_ms: percentile(&self.latencies_us, 0.99),
            max_ms: self.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
            errors: self.errors,
        }
    }
}

type Outcomes = Arc<Mutex<(Vec<u64>, std::collections::BTreeMap<String, usize>)>>;

/// Runs `concurrency` workers calling `op(worker, iteration)` until
/// `duration` passes or `limit` operations are done.
pub(crate) async fn drive<F, Fut>(concurrency: usize, duration: Duration, limit: usize, op: F) -> Samples
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let outcomes: Outcomes = Arc::default();
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (op, outcomes, counter) = (op.clone(), outcomes.clone(), counter.clone());
        workers.push(tokio::spawn(async move {
            let mut local_lat = Vec::new();
            let mut local_err: std::collections::BTreeMap<String, usize> = Default::default();
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= limit || started.elapsed() >= duration {
                    break;
                }
                let t = Instant::now();
                match op(w, i).await {
                    Ok(()) => local_lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => *local_err.entry(e).or_default() += 1,
                }
            }
            let mut o = outcomes.lock().await;
            o.0.extend(local_lat);
            for (k, v) in local_err {
                *o.1.entry(k).or_default() += v;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    let (latencies_us, errors) = std::mem::take(&mut *outcomes.lock().await);
    Samples { latencies_us, errors, elapsed }
}

pub struct Agent {
    pub id: String,
    pub uuid: uuid::Uuid,
    /// Its heartbeat URL, parsed once (as for `/healthz`), so the client's
    /// URL parsing is not counted as the platform's work.
    pub heartbeat_url: reqwest::Url,
    pub tenant: String,
    pub token: String,
    /// The collector, asset and certificate the runtime token is bound to.
    pub binding: [uuid::Uuid; 3],
    pub sequence: AtomicUsize,
}

/// The rates of one round, each measured in its own slice.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RoundRates {
    pub healthz: f64,
    pub heartbeat: f64,
    pub grouped: f64,
    pub naive: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub backend: String,
    pub agents: usize,
    pub concurrency: usize,
    pub measures: Vec<Measure>,
    pub rounds: Vec<RoundRates>,
}

fn http(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}

async fn status_error(resp: reqwest::Response) -> String {
    let status = resp.status().as_u16();
    let code = resp
        .json::<Value>()
        .await
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{status} {code}")
}

/// Enrolls `n` agents (CSRs made before timing) and measures the exchange rate.
pub async fn enroll(
    platform: &LocalPlatform,
    n: usize,
    concurrency: usize,
) -> Result<(Measure, Arc<Vec<Agent>>), String> {
    let ctx = &platform.ctx;
    let mut secrets = Vec::new();
    for _ in 0..n.div_ceil(10_000) {
        secrets.push(ctx.issue_token(Tenant::A, 10_000).await?.0);
    }
    let bodies: Arc<Vec<Value>> = Arc::new(
        (0..n)
            .map(|i| {
                json!({"enrollment_token": secrets[i / 10_000], "csr_pem": crate::ctx::p256_csr(), "nonce": crate::random_nonce(),
                       "hostname": format!("bench-{i}.loopback"), "agent_version": "bench"})
            })
            .collect(),
    );
    let client = http(concurrency);
    let url = format!("{}/api/v1/agent-enrollment/exchange", ctx.base);
    let base = ctx.base.clone();
    let enrolled: Arc<Mutex<Vec<Agent>>> = Arc::default();
    let (b, e) = (bodies.clone(), enrolled.clone());
    let m = drive(concurrency, MAX_DURATION, n, move |_, i| {
        let (client, url, body, enrolled, base) =
            (client.clone(), url.clone(), b[i].clone(), e.clone(), base.clone());
        async move {
            let resp = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("transport {}", e.without_url()))?;
            if resp.status().as_u16() != 201 {
                return Err(status_error(resp).await);
            }
            let v: Value = resp.json().await.map_err(|_| "unreadable".to_string())?;
            let id = v["agent"]["agent_id"].as_str().unwrap_or_default().to_owned();
            let uuid_at = |p: &str| {
                v.pointer(p)
                    .and_then(Value::as_str)
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .unwrap_or_default()
            };
            let binding = [
                uuid_at("/agent/collector_id"),
                uuid_at("/agent/asset_id"),
                uuid_at("/agent/certificate_id"),
            ];
            let heartbeat_url =
                reqwest::Url::parse(&format!("{base}/api/v1/agents/{id}/telemetry/heartbeat"))
                    .map_err(|_| "heartbeat url".to_string())?;
            enrolled.lock().await.push(Agent {
                heartbeat_url,
                binding,
                uuid: uuid::Uuid::parse_str(&id).unwrap_or_default(),
                id,
                tenant: v["agent"]["tenant_id"].as_str().unwrap_or_default().to_owned(),
                token: v["runtime_token"]["token"].as_str().unwrap_or_default().to_owned(),
                sequence: AtomicUsize::new(0),
            });
            Ok(())
        }
    })
    .await
    .into_measure("enrollment exchange");
    let agents = std::mem::take(&mut *enrolled.lock().await);
    Ok((m, Arc::new(agents)))
}

/// The next agent in turn, and the sequence number its heartbeat carries.
fn next_turn(agents: &[Agent], next: &AtomicUsize) -> (usize, usize) {
    let i = next.fetch_add(1, Ordering::Relaxed) % agents.len();
    (i, agents[i].sequence.fetch_add(1, Ordering::Relaxed) + 1)
}

/// The timed measures of a run, one slice at a time: `/healthz`, HTTP
/// heartbeats, and the store's heartbeat write with and without group
/// commit. Clients (and their connections) live across slices, and
/// heartbeats keep going round the agents from slice to slice.
pub struct Workload {
    concurrency: usize,
    client: reqwest::Client,
    healthz_url: reqwest::Url,
    agents: Arc<Vec<Agent>>,
    next_agent: Arc<AtomicUsize>,
    store: Arc<dyn oneprotect_server::store::Store>,
}

impl Workload {
    pub fn new(
        platform: &LocalPlatform,
        agents: Arc<Vec<Agent>>,
        concurrency: usize,
    ) -> Result<Self, String> {
        if agents.is_empty() {
            return Err("no agents enrolled".into());
        }
        Ok(Self {
            concurrency,
            client: http(concurrency),
            healthz_url: reqwest::Url::parse(&format!("{}/healthz", platform.ctx.base))
                .map_err(|e| e.to_string())?,
            agents,
            next_agent: Arc::default(),
            store: platform.ctx.local.store.clone().ok_or("no store")?,
        })
    }

    pub async fn healthz(&self, duration: Duration) -> Samples {
        let (client, url) = (self.client.clone(), self.healthz_url.clone());
        drive(self.concurrency, duration, usize::MAX, move |_, _| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let resp =
                    client.get(url).send().await.map_err(|e| format!("transport {}", e.without_url()))?;
                if resp.status().is_success() { Ok(()) } else { Err(status_error(resp).await) }
            }
        })
        .await
    }

    pub async fn heartbeats(&self, duration: Duration) -> Samples {
        let (client, agents, next) = (self.client.clone(), self.agents.clone(), self.next_agent.clone());
        drive(self.concurrency, duration, usize::MAX, move |_, _| {
            let (client, agents) = (client.clone(), agents.clone());
            let (i, seq) = next_turn(&agents, &next);
            async move {
                let agent = &agents[i];
                let resp = client
                    .post(agent.heartbeat_url.clone())
                    .bearer_auth(&agent.token)
                    .json(&heartbeat_body(seq, i))
                    .send()
                    .await
                    .map_err(|e| format!("transport {}", e.without_url()))?;
                if resp.status().is_success() { Ok(()) } else { Err(status_error(resp).await) }
            }
        })
        .await
    }

    /// The store's heartbeat write called directly, no HTTP and no token
    /// check: `batched` through group commit (what the write path
    /// sustains), otherwise one transaction per heartbeat (the naive
    /// database rate).
    pub async fn store_direct(&self, duration: Duration, batched: bool) -> Samples {
        let (store, agents, next) = (self.store.clone(), self.agents.clone(), self.next_agent.clone());
        drive(self.concurrency, duration, usize::MAX, move |_, _| {
            let (store, agents) = (store.clone(), agents.clone());
            let (i, seq) = next_turn(&agents, &next);
            async move {
                let agent = &agents[i];
                let commit = direct_commit(agent, i, seq as i64)?;
                let outcome = if batched {
                    store.commit_heartbeat(commit).await
                } else {
                    store.commit_heartbeat_unbatched(commit).await
                };
                match outcome {
                    Ok(oneprotect_server::model::HeartbeatOutcome::Accepted) => Ok(()),
                    Ok(other) => Err(format!("{other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }
}

/// A heartbeat body as an agent sends it.
#[derive(serde::Serialize)]
struct HeartbeatBody {
    sequence: usize,
    collected_at: chrono::DateTime<chrono::Utc>,
    hostname: String,
    agent_version: &'static str,
    cpu_count: u32,
    cpu_usage_percent: f64,
    memory_total_bytes: u64,
    memory_used_bytes: u64,
    process_count: u32,
}

pub(crate) fn heartbeat_body(sequence: usize, i: usize) -> impl serde::Serialize + use<> {
    HeartbeatBody {
        sequence,
        collected_at: chrono::Utc::now(),
        hostname: format!("bench-{i}.loopback"),
        agent_version: "bench",
        cpu_count: 2,
        cpu_usage_percent: 12.5,
        memory_total_bytes: 8_000_000_000,
        memory_used_bytes: 2_000_000_000,
        process_count: 120,
    }
}

/// A CloudEvent as the platform writes it for `agent`'s heartbeat, so the
/// naive baseline stores the same bytes as the real path.
fn bench_event<D: oneprotect_contracts::events::EventData>(
    agent: &Agent,
    now: chrono::DateTime<chrono::Utc>,
    data: D,
) -> OutboxEvent {
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = oneprotect_contracts::events::Envelope::new(
        id.clone(),
        "/oneprotect/platform",
        now,
        agent.binding[1].to_string(),
        agent.tenant.clone(),
        data,
    );
    OutboxEvent {
        event_id: id,
        tenant_id: agent.tenant.clone(),
        event_type: D::EVENT_TYPE.to_owned(),
        occurred_at: now,
        payload: serde_json::to_string(&envelope).unwrap_or_default(),
    }
}

/// The store write of one heartbeat, with the records of a first contact
/// (which the store writes only if the identity has never been heard from).
fn direct_commit(agent: &Agent, i: usize, sequence: i64) -> Result<HeartbeatCommit, String> {
    use oneprotect_contracts::events::{AssetDiscoveredData, AssetTelemetryReceivedData};
    let now = chrono::Utc::now();
    let hostname = format!("bench-{i}.loopback");
    let telemetry = AssetTelemetryReceivedData {
        agent_id: agent.uuid,
        asset_id: agent.binding[1],
        sequence: sequence as u64,
        received_at: now,
        hostname: Some(hostname.as_str().try_into().map_err(|_| "hostname")?),
        uptime_seconds: None,
        cpu_count: Some(2),
        cpu_usage_percent: Some(12.5),
        memory_total_bytes: Some(8_000_000_000),
        memory_used_bytes: Some(2_000_000_000),
        process_count: Some(120),
    };
    let discovered = AssetDiscoveredData {
        agent_id: agent.uuid,
        asset_id: agent.binding[1],
        collector_id: agent.binding[0],
        discovered_at: now,
        hostname: hostname.as_str().try_into().map_err(|_| "hostname")?,
        os_family: None,
        os_version: None,
    };
    Ok(HeartbeatCommit {
        tenant_id: agent.tenant.clone(),
        agent_id: agent.uuid,
        binding: AgentBinding {
            collector_id: agent.binding[0],
            asset_id: agent.binding[1],
            certificate_id: agent.binding[2],
            stale_after: chrono::Duration::days(7),
            rotation_grace: None,
        },
        now,
        sequence,
        hostname,
        agent_version: "bench".into(),
        os_family: None,
        os_version: None,
        telemetry_event: bench_event(agent, now, telemetry),
        first_contact: Some(FirstContact {
            discovered_event: bench_event(agent, now, discovered),
            activation_audit: AuditRecord {
                audit_id: uuid::Uuid::now_v7(),
                tenant_id: agent.tenant.clone(),
                occurred_at: now,
                actor_type: oneprotect_server::model::ActorType::Agent,
                actor_id: agent.id.clone(),
                action: oneprotect_server::model::AuditAction::AgentActivate,
                target_type: "agent".into(),
                target_id: None,
                outcome: oneprotect_server::model::AuditOutcome::Success,
                reason_code: None,
                request_id: "bench".into(),
                details: Default::default(),
            },
        }),
    })
}

/// The median, minimum and maximum of some figures (zeros when there are none).
pub(crate) fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    match (values.first(), values.last()) {
        (Some(&min), Some(&max)) => (values[values.len() / 2], min, max),
        _ => (0.0, 0.0, 0.0),
    }
}

/// Markdown rows of one backend's results, with the ratios the targets use.
pub fn markdown(r: &BenchResult) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "### {} — {} agents, concurrency {}\n", r.backend, r.agents, r.concurrency);
    let _ = writeln!(
        out,
        "| measure | ops | ops/s | p50 ms | p95 ms | p99 ms | max ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for m in &r.measures {
        let errors = if m.errors.is_empty() {
            "none".to_owned()
        } else {
            m.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {errors} |",
            m.name, m.operations, m.per_second, m.p50_ms, m.p95_ms, m.p99_ms, m.max_ms
        );
    }
    let rate = |prefix: &str| {
        r.measures.iter().find(|m| m.name.starts_with(prefix)).map(|m| m.per_second).unwrap_or(0.0)
    };
    let hb = rate("POST heartbeat");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let ratio = |f: fn(&RoundRates) -> f64| {
        let (median, min, max) = spread(r.rounds.iter().map(f).collect());
        format!("**{median:.2}** (rounds {min:.2}–{max:.2})")
    };
    let _ = writeln!(
        out,
        "\nRatios are the median over {} rounds of figures measured seconds apart:\n",
        r.rounds.len()
    );
    let _ = writeln!(
        out,
        "- heartbeat / healthz ceiling: {} (target ≥ 0.50)",
        ratio(|x| x.heartbeat / x.healthz.max(1.0))
    );
    let _ = writeln!(
        out,
        "- heartbeat / naive store write: {} (target ≥ 2.0)",
        ratio(|x| x.heartbeat / x.naive.max(1.0))
    );
    let _ =
        writeln!(out, "- group-committed / naive store write: {}", ratio(|x| x.grouped / x.naive.max(1.0)));
    let _ = writeln!(
        out,
        "- agents at a 60 s interval: **{:.0}** per server ({:.0} per core); target 1,000,000 per server + database pair\n",
        hb * 60.0,
        hb * 60.0 / cores
    );
    out
}
