//! Heartbeats over mutual TLS beside bearer heartbeats, in the same run, and
//! the rate of full TLS handshakes with client certificates.
//!
//! Two platforms share one store and one CA, each behind its own TLS
//! listener (the server's `listen::serve`): one authenticates agents by
//! their certificate (`mtls`), the other by the runtime token (`bearer`).
//! Every agent has its own client and keeps its connection, as agents do;
//! the two measures alternate in rounds so that their ratio compares
//! figures taken seconds apart. The handshake measure opens a new
//! connection, with a client certificate, for every request (an enrollment
//! storm of reconnecting agents).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oneprotect_server::clock::{Clock, SystemClock};
use oneprotect_server::pki::PlatformCa;
use oneprotect_server::service::{AgentAuth, Policy};
use oneprotect_server::store::Store;
use serde_json::{Value, json};

use crate::bench::{Samples, drive, heartbeat_body};

/// Agents of the mTLS measure: each one a client and a connection.
pub const MAX_MTLS_AGENTS: usize = 2_000;

struct TlsAgent {
    id: String,
    token: String,
    /// Presents the agent's certificate.
    with_certificate: reqwest::Client,
    /// Presents no certificate (the bearer listener's client).
    without_certificate: reqwest::Client,
    sequence: AtomicUsize,
}

/// The figures of the comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MtlsFigures {
    pub agents: usize,
    pub concurrency: usize,
    pub bearer_per_second: f64,
    pub mtls_per_second: f64,
    /// mTLS heartbeats per bearer heartbeat, same run.
    pub ratio: f64,
    pub handshakes_per_second: f64,
    pub bearer_p50_ms: f64,
    pub mtls_p50_ms: f64,
    pub handshake_p50_ms: f64,
    pub rounds: Vec<(f64, f64)>,
}

async fn listener(
    platform: oneprotect_server::service::Platform,
    config: Arc<oneprotect_server::tls::ServerConfig>,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    let router = oneprotect_server::app::router(Arc::new(platform));
    let limits = oneprotect_server::listen::Limits { max_per_source: 65_536, ..Default::default() };
    tokio::spawn(async move {
        let _ =
            oneprotect_server::listen::serve(listener, router, limits, Some(config), std::future::pending())
                .await;
    });
    Ok(base)
}

fn client(ca: &PlatformCa, identity: Option<&str>, pooled: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.chain_pem().as_bytes())?])
        .tcp_nodelay(true);
    if !pooled {
        builder = builder.pool_max_idle_per_host(0);
    }
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes())?);
    }
    builder.build().map_err(|e| {
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        anyhow::anyhow!(chain)
    })
}

async fn heartbeat(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    seq: usize,
    i: usize,
) -> Result<(), String> {
    let mut req = client.post(url).json(&heartbeat_body(seq, i));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.map_err(|e| format!("transport {}", e.without_url()))?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("{}", resp.status().as_u16())) }
}

/// Runs the comparison on a fresh SQLite store in `dir`.
pub async fn compare(
    dir: &std::path::Path,
    agents: usize,
    concurrency: usize,
    duration: Duration,
    rounds: u32,
) -> anyhow::Result<MtlsFigures> {
    let agents = agents.clamp(1, MAX_MTLS_AGENTS);
    let store: Arc<dyn Store> =
        Arc::new(oneprotect_server::store::sqlite::SqliteStore::open(&dir.join("mtls-bench.db"))?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ca = Arc::new(
        PlatformCa::generate(
            "OneProtect bench CA (fixture)",
            oneprotect_server::pki::DEFAULT_TRUST_DOMAIN,
            chrono::Utc::now(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let files = oneprotect_server::tls::development_server_files(dir, &ca, chrono::Utc::now())
        .map_err(anyhow::Error::msg)?;
    let config = oneprotect_server::tls::server_config(&files, Some(&ca), clock.clone())
        .map_err(anyhow::Error::msg)?;
    let policy = |agent_auth| Policy { agent_auth, failure_limit: 1_000_000, ..Policy::default() };
    let mtls = crate::local::fixture_platform(store.clone(), clock.clone(), policy(AgentAuth::Mtls))?
        .with_ca(ca.clone());
    let bearer =
        crate::local::fixture_platform(store.clone(), clock, policy(AgentAuth::Bearer))?.with_ca(ca.clone());
    let admin = oneprotect_server::admin_auth::mint_hs256(
        crate::local::FIXTURE_ADMIN_SECRET,
        &oneprotect_server::admin_auth::AdminClaims {
            sub: "bench@loopback".into(),
            tenant_id: crate::local::TENANT_A.into(),
            roles: vec![oneprotect_server::admin_auth::ROLE_ADMIN.into()],
            exp: chrono::Utc::now().timestamp() + 3600,
            iss: crate::local::ISSUER.into(),
            aud: crate::local::AUDIENCE.into(),
            nbf: None,
        },
    )
    .map_err(anyhow::Error::msg)?;
    let handshaking =
        crate::local::fixture_platform(store.clone(), Arc::new(SystemClock), policy(AgentAuth::Mtls))?
            .with_ca(ca.clone());
    let handshake_base = listener(handshaking, oneprotect_server::tls::without_resumption(&config)).await?;
    let (mtls_base, bearer_base) = (listener(mtls, config.clone()).await?, listener(bearer, config).await?);

    // Enrollment (not timed): a key kept per agent, its certificate from the exchange.
    let plain = client(&ca, None, true)?;
    let issued: Value = plain
        .post(format!("{mtls_base}/api/v1/agent-enrollment/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"ttl_seconds": 3600, "max_uses": agents + 1}))
        .send()
        .await?
        .json()
        .await?;
    let secret =
        issued["enrollment_token"].as_str().ok_or_else(|| anyhow::anyhow!("no token: {issued}"))?.to_owned();
    let mut enrolled = Vec::with_capacity(agents);
    for i in 0..agents {
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
        let v: Value = plain
            .post(format!("{mtls_base}/api/v1/agent-enrollment/exchange"))
            .json(&json!({"enrollment_token": secret, "csr_pem": csr, "nonce": crate::random_nonce(),
                          "hostname": format!("bench-{i}.loopback"), "agent_version": "bench"}))
            .send()
            .await?
            .json()
            .await?;
        let cert = v["certificate_pem"].as_str().ok_or_else(|| anyhow::anyhow!("exchange: {v}"))?;
        enrolled.push(TlsAgent {
            id: v["agent"]["agent_id"].as_str().unwrap_or_default().to_owned(),
            token: v["runtime_token"]["token"].as_str().unwrap_or_default().to_owned(),
            with_certificate: client(&ca, Some(&format!("{cert}{}", key.serialize_pem())), true)?,
            without_certificate: client(&ca, None, true)?,
            sequence: AtomicUsize::new(0),
        });
    }
    let enrolled = Arc::new(enrolled);
    let next = Arc::new(AtomicUsize::new(0));
    let measure = |by_certificate: bool, slice: Duration| {
        let (agents, next) = (enrolled.clone(), next.clone());
        let base = if by_certificate { mtls_base.clone() } else { bearer_base.clone() };
        drive(concurrency, slice, usize::MAX, move |_, _| {
            let (agents, base) = (agents.clone(), base.clone());
            let i = next.fetch_add(1, Ordering::Relaxed) % agents.len();
            async move {
                let agent = &agents[i];
                let seq = agent.sequence.fetch_add(1, Ordering::Relaxed) + 1;
                let url = format!("{base}/api/v1/agents/{}/telemetry/heartbeat", agent.id);
                if by_certificate {
                    heartbeat(&agent.with_certificate, &url, None, seq, i).await
                } else {
                    heartbeat(&agent.without_certificate, &url, Some(&agent.token), seq, i).await
                }
            }
        })
    };
    // Every connection opened once before timing.
    measure(true, Duration::from_millis(500)).await;
    measure(false, Duration::from_millis(500)).await;
    let slice = duration / rounds.max(1);
    let (mut with_bearer, mut with_certificate) = (Samples::default(), Samples::default());
    let mut per_round = Vec::new();
    for _ in 0..rounds.max(1) {
        let b = measure(false, slice).await;
        let m = measure(true, slice).await;
        per_round.push((b.rate(), m.rate()));
        Samples::merge(&mut with_bearer, b);
        Samples::merge(&mut with_certificate, m);
    }
    // Full handshakes with a client certificate: a new connection per request.
    let handshake_identity = {
        let agent_key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&agent_key)?.pem()?;
        let v: Value = plain
            .post(format!("{mtls_base}/api/v1/agent-enrollment/exchange"))
            .json(&json!({"enrollment_token": secret, "csr_pem": csr, "nonce": crate::random_nonce(),
                          "hostname": "bench-handshake.loopback", "agent_version": "bench"}))
            .send()
            .await?
            .json()
            .await?;
        format!("{}{}", v["certificate_pem"].as_str().unwrap_or_default(), agent_key.serialize_pem())
    };
    let fresh = Arc::new(client(&ca, Some(&handshake_identity), false)?);
    let healthz = format!("{handshake_base}/healthz");
    let handshakes = drive(concurrency.min(16), duration / 2, usize::MAX, move |_, _| {
        let (fresh, url) = (fresh.clone(), healthz.clone());
        async move {
            let resp = fresh.get(url).send().await.map_err(|e| format!("transport {}", e.without_url()))?;
            if resp.status().is_success() { Ok(()) } else { Err(resp.status().as_u16().to_string()) }
        }
    })
    .await;
    let (b, m, h) = (
        with_bearer.into_measure("bearer heartbeats (TLS)"),
        with_certificate.into_measure("mTLS heartbeats"),
        handshakes.into_measure("full TLS handshakes with a client certificate"),
    );
    for measure in [&b, &m, &h] {
        if !measure.errors.is_empty() {
            anyhow::bail!("{}: errors {:?}", measure.name, measure.errors);
        }
    }
    Ok(MtlsFigures {
        agents,
        concurrency,
        ratio: if b.per_second > 0.0 { m.per_second / b.per_second } else { 0.0 },
        bearer_per_second: b.per_second,
        mtls_per_second: m.per_second,
        handshakes_per_second: h.per_second,
        bearer_p50_ms: b.p50_ms,
        mtls_p50_ms: m.p50_ms,
        handshake_p50_ms: h.p50_ms,
        rounds: per_round,
    })
}

/// The figures as a Markdown section.
pub fn markdown(f: &MtlsFigures) -> String {
    let spread = |pick: fn(&(f64, f64)) -> f64| {
        let v: Vec<f64> = f.rounds.iter().map(pick).collect();
        let (min, max) = v.iter().fold((f64::MAX, 0.0f64), |(a, b), x| (a.min(*x), b.max(*x)));
        format!("{min:.0}–{max:.0}")
    };
    format!(
        "### Mutual TLS (SQLite, {} agents with their own connections, concurrency {})\n\n\
         | measure | per second | p50 ms | rounds (min–max) |\n|---|---|---|---|\n\
         | bearer heartbeats over TLS | {:.0} | {:.2} | {} |\n\
         | mTLS heartbeats (certificate verified, record found by fingerprint) | {:.0} | {:.2} | {} |\n\
         | full TLS handshakes with a client certificate (new connection per request) | {:.0} | {:.2} | — |\n\n\
         mTLS heartbeats per bearer heartbeat, same run: **{:.2}** (target ≥ 0.80).\n\n",
        f.agents,
        f.concurrency,
        f.bearer_per_second,
        f.bearer_p50_ms,
        spread(|r| r.0),
        f.mtls_per_second,
        f.mtls_p50_ms,
        spread(|r| r.1),
        f.handshakes_per_second,
        f.handshake_p50_ms,
        f.ratio,
    )
}
