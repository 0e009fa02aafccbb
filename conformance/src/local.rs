//! The `local` target: the real server in-process on loopback, on SQLite or
//! a throwaway PostgreSQL database, with a manual clock, store inspection
//! and captured logs — and, for the harness's own tests, a fault.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use oneprotect_server::admin_auth::{AdminVerifier, mint_hs256};
use oneprotect_server::clock::{Clock, ManualClock};
use oneprotect_server::runtime_token::RuntimeKeyring;
use oneprotect_server::secrets::HashKey;
use oneprotect_server::service::{Platform, Policy};
use oneprotect_server::store::Store;
use secrecy::SecretString;

use crate::ctx::{Ctx, LocalPowers};
use crate::faults::{Fault, FaultyStore, HttpFaultState, http_fault};

pub const TENANT_A: &str = "tenant-a";
pub const TENANT_B: &str = "tenant-b";
pub const ISSUER: &str = "oneprotect-conformance";
pub const AUDIENCE: &str = "oneprotect-api";
pub(crate) const FIXTURE_ADMIN_SECRET: &[u8] = b"conformance-fixture-admin-secret-0000000000";
const FIXTURE_RUNTIME_SECRET: &[u8] = b"conformance-fixture-runtime-secret-00000000";
const FIXTURE_HASH_KEY: &[u8] = b"conformance-fixture-hash-key-00000000000000";

/// Where the server's logs go while the harness runs in-process.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A throwaway PostgreSQL database with an owner and an unprivileged app role.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    owner: String,
    app: String,
}

fn pg_url(base: &str, user: &str, db: &str) -> String {
    let rest = base.split_once('@').map(|(_, r)| r).unwrap_or("127.0.0.1:5432/postgres");
    let host = rest.split_once('/').map(|(h, _)| h).unwrap_or(rest);
    format!("postgres://{user}@{host}/{db}")
}

impl PgDatabase {
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        use sqlx::{Connection, Executor};
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let db = Self {
            admin_url: admin_url.to_owned(),
            name: format!("op_conf_{suffix}"),
            owner: format!("op_conf_owner_{suffix}"),
            app: format!("op_conf_app_{suffix}"),
        };
        let mut conn = sqlx::PgConnection::connect(admin_url).await?;
        for sql in [
            format!("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS", db.owner),
            format!("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS", db.app),
            format!("CREATE DATABASE {} OWNER {}", db.name, db.owner),
        ] {
            conn.execute(sqlx::AssertSqlSafe(sql)).await?;
        }
        Ok(db)
    }

    fn superuser_url(&self) -> String {
        let user = self
            .admin_url
            .strip_prefix("postgres://")
            .and_then(|r| r.split_once('@'))
            .map(|(u, _)| u.to_owned())
            .unwrap_or_else(|| "postgres".into());
        pg_url(&self.admin_url, &user, &self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (url, name, owner, app) =
            (self.admin_url.clone(), self.name.clone(), self.owner.clone(), self.app.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                use sqlx::{Connection, Executor};
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    for sql in [
                        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                        format!("DROP ROLE IF EXISTS {app}"),
                        format!("DROP ROLE IF EXISTS {owner}"),
                    ] {
                        let _ = conn.execute(sqlx::AssertSqlSafe(sql)).await;
                    }
                }
            });
        })
        .join();
    }
}

/// A running local platform and what it holds on to.
pub struct LocalPlatform {
    pub ctx: Ctx,
    _tmp: tempfile::TempDir,
    _pg: Option<PgDatabase>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The broker of the local target (dropped after the relay stopped).
    _nats: Option<crate::nats::OwnNats>,
}

impl Drop for LocalPlatform {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

/// The platform's router, wrapped by the faulty HTTP layer when a fault is chosen.
fn faulty_router(platform: Arc<Platform>, fault: Option<HttpFaultState>) -> axum::Router {
    // The faulty layer wraps the router only when a fault is chosen, so the
    // real platform (and the benchmark) runs exactly as it ships.
    let router = oneprotect_server::app::router(platform);
    match fault {
        // Outside the router, so a rewritten path is routed anew.
        Some(fault) => axum::Router::new()
            .fallback_service(router)
            .layer(axum::middleware::from_fn(move |req, next| http_fault(fault.clone(), req, next))),
        None => router,
    }
}

async fn serve(
    platform: Arc<Platform>,
    fault: Option<HttpFaultState>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let router = faulty_router(platform, fault);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    Ok((base, handle))
}

/// Serves over the server's own TLS listener (client certificates
/// requested and verified by `clock`).
async fn serve_tls(
    platform: Arc<Platform>,
    fault: Option<HttpFaultState>,
    dir: &std::path::Path,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let ca = platform.ca().ok_or_else(|| anyhow::anyhow!("TLS needs the CA"))?.clone();
    let files = oneprotect_server::tls::development_server_files(dir, &ca, chrono::Utc::now())
        .map_err(anyhow::Error::msg)?;
    let config =
        oneprotect_server::tls::server_config(&files, Some(&ca), clock).map_err(anyhow::Error::msg)?;
    let router = faulty_router(platform, fault);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    let handle = tokio::spawn(async move {
        let _ = oneprotect_server::listen::serve(
            listener,
            router,
            oneprotect_server::listen::Limits::default(),
            Some(config),
            std::future::pending(),
        )
        .await;
    });
    Ok((base, handle))
}

/// The platform with the harness's fixture secrets and a CA of its own (the
/// runtime secret is the fixture one unless `runtime_secret` says otherwise).
pub fn fixture_platform(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: Policy,
) -> anyhow::Result<Platform> {
    platform(store, clock, Some(FIXTURE_RUNTIME_SECRET), policy, Arc::new(new_ca()?))
}

/// A CA per run, in memory: the local target certifies the rules, not a key.
fn new_ca() -> anyhow::Result<oneprotect_server::pki::PlatformCa> {
    oneprotect_server::pki::PlatformCa::generate(
        "OneProtect conformance CA (fixture)",
        oneprotect_server::pki::DEFAULT_TRUST_DOMAIN,
        chrono::Utc::now() - chrono::Duration::days(1),
    )
    .map_err(anyhow::Error::msg)
}

fn platform(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    runtime_secret: Option<&[u8]>,
    policy: Policy,
    ca: Arc<oneprotect_server::pki::PlatformCa>,
) -> anyhow::Result<Platform> {
    let runtime =
        RuntimeKeyring::new(runtime_secret.map(<[u8]>::to_vec), vec![]).map_err(anyhow::Error::msg)?;
    let admin = AdminVerifier::hs256(FIXTURE_ADMIN_SECRET, ISSUER, AUDIENCE).map_err(anyhow::Error::msg)?;
    let hash_key = HashKey::new(FIXTURE_HASH_KEY.to_vec()).map_err(anyhow::Error::msg)?;
    Ok(Platform::new(store, clock, hash_key, runtime, admin, policy).with_ca(ca))
}

/// Starts the platform on SQLite (`database` = None) or PostgreSQL, its
/// logs captured and its events relayed to a NATS JetStream server of its
/// own (when `nats-server` is on PATH; otherwise the broker check skips).
pub async fn start(database: Option<&str>, fault: Option<Fault>) -> anyhow::Result<LocalPlatform> {
    start_full(database, fault, true, Policy::default(), true).await
}

/// As `start`, without the relay; `capture_logs: false` leaves logging off
/// (benchmarks, which measure the relay on their own terms).
pub async fn start_with(
    database: Option<&str>,
    fault: Option<Fault>,
    capture_logs: bool,
) -> anyhow::Result<LocalPlatform> {
    start_full(database, fault, capture_logs, Policy::default(), false).await
}

/// As `start_with`, under a given policy (`Policy::default()` is what a
/// deployment runs with), relaying events or not.
pub async fn start_full(
    database: Option<&str>,
    fault: Option<Fault>,
    capture_logs: bool,
    policy: Policy,
    events: bool,
) -> anyhow::Result<LocalPlatform> {
    let logs = capture_logs.then(|| crate::ctx::CapturedLogs::from_now(captured_logs()));
    let tmp = tempfile::tempdir()?;
    let (store, pg): (Arc<dyn Store>, Option<PgDatabase>) = match database {
        None => (
            Arc::new(oneprotect_server::store::sqlite::SqliteStore::open(
                &tmp.path().join("conformance.db"),
            )?),
            None,
        ),
        Some(url) => {
            let db = PgDatabase::create(url).await?;
            oneprotect_server::store::postgres::migrate(&pg_url(url, &db.owner, &db.name), Some(&db.app))
                .await?;
            let store = oneprotect_server::store::postgres::PgStore::connect(&pg_url(url, &db.app, &db.name))
                .await?
                .with_inspection(&db.superuser_url())
                .await?;
            store.ensure_unprivileged().await?;
            (Arc::new(store), Some(db))
        }
    };
    if fault == Some(Fault::RlsNotForced) {
        let db = pg.as_ref().ok_or_else(|| anyhow::anyhow!("the RlsNotForced fault needs PostgreSQL"))?;
        use sqlx::{Connection, Executor};
        let mut conn =
            sqlx::PgConnection::connect(&pg_url(db.admin_url.as_str(), &db.owner, &db.name)).await?;
        conn.execute("ALTER TABLE audit_events NO FORCE ROW LEVEL SECURITY").await?;
    }
    let manual = Arc::new(ManualClock::new(chrono::Utc::now()));
    let platform_clock: Arc<dyn Clock> = manual.clone();
    let policy = match fault {
        Some(f) => f.policy(policy),
        None => policy,
    };
    let seen = crate::faults::Shared::default();
    let platform_store: Arc<dyn Store> = match fault {
        Some(f) => Arc::new(FaultyStore {
            inner: store.clone(),
            fault: f,
            tenants: vec![TENANT_A.into(), TENANT_B.into()],
            seen: seen.clone(),
        }),
        None => store.clone(),
    };
    let http_state = |secretless: bool| {
        fault.map(|fault| HttpFaultState {
            fault,
            secretless,
            runtime_secret: FIXTURE_RUNTIME_SECRET.to_vec(),
            admin_secret: FIXTURE_ADMIN_SECRET.to_vec(),
            clock: platform_clock.clone(),
            store: platform_store.clone(),
            seen: seen.clone(),
        })
    };
    let ca = Arc::new(new_ca()?);
    let (base, main) = serve(
        Arc::new(platform(
            platform_store.clone(),
            platform_clock.clone(),
            Some(FIXTURE_RUNTIME_SECRET),
            policy.clone(),
            ca.clone(),
        )?),
        http_state(false),
    )
    .await?;
    // The same platform (store, clock, secrets, CA) behind its own TLS
    // listener, authenticating agents by their certificate.
    let mtls_policy = Policy { agent_auth: oneprotect_server::service::AgentAuth::Mtls, ..policy.clone() };
    let mtls_policy = match fault {
        Some(f) => f.policy(mtls_policy),
        None => mtls_policy,
    };
    let mtls_clock: Arc<dyn Clock> = match fault {
        Some(Fault::MtlsClockBehind) => {
            Arc::new(crate::faults::ClockBehind(platform_clock.clone(), chrono::Duration::minutes(2)))
        }
        _ => platform_clock.clone(),
    };
    let (mtls_base, third) = serve_tls(
        Arc::new(platform(
            platform_store.clone(),
            mtls_clock.clone(),
            Some(FIXTURE_RUNTIME_SECRET),
            mtls_policy,
            ca.clone(),
        )?),
        http_state(false),
        tmp.path(),
        mtls_clock.clone(),
    )
    .await?;
    let (secretless, second) = serve(
        Arc::new(platform(platform_store.clone(), platform_clock.clone(), None, policy, ca.clone())?),
        http_state(true),
    )
    .await?;

    let admin = |tenant: &str| {
        let claims = oneprotect_server::admin_auth::AdminClaims {
            sub: format!("admin-{}@{tenant}", uuid::Uuid::new_v4().simple()),
            tenant_id: tenant.into(),
            roles: vec!["tenant_admin".into()],
            exp: manual.now().timestamp() + 30 * 86_400,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            nbf: None,
        };
        mint_hs256(FIXTURE_ADMIN_SECRET, &claims).map(SecretString::from).map_err(anyhow::Error::msg)
    };
    let powers = LocalPowers {
        clock: Some(manual.clone()),
        store: Some(store),
        runtime_secret: Some(FIXTURE_RUNTIME_SECRET.to_vec()),
        admin_secret: Some(FIXTURE_ADMIN_SECRET.to_vec()),
        admin_issuer: ISSUER.into(),
        admin_audience: AUDIENCE.into(),
        logs,
        secretless_base: Some(secretless),
        mtls_base: Some(mtls_base),
        ca_chain_pem: Some(ca.chain_pem().to_owned()),
        agent_bin: None,
        postgres_inspection: pg.as_ref().map(PgDatabase::superuser_url),
        agent_fault: None,
    };
    // The platform sees only the manual clock, so waiting for a Retry-After
    // means moving that clock, not sleeping.
    let waits = manual.clone();
    let sleeper: crate::ctx::Sleeper = Arc::new(move |d| {
        waits.advance(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero()));
        Box::pin(async {})
    });
    let http = reqwest::Client::builder().timeout(crate::ctx::REQUEST_TIMEOUT).build()?;
    let mut ctx = Ctx::new(&base, http, admin(TENANT_A)?, admin(TENANT_B)?, powers).with_sleeper(sleeper);
    ctx.allow_waits = true;
    ctx.check_timeout = crate::ctx::LOCAL_CHECK_TIMEOUT;
    let mut servers = vec![main, second, third];
    let launched = if events { Some(crate::nats::OwnNats::launch().await) } else { None };
    let nats = match launched {
        Some(Ok(nats)) => {
            let config = oneprotect_server::relay::RelayConfig::new(&nats.url);
            let client = oneprotect_server::relay::connect(&config).await.map_err(anyhow::Error::msg)?;
            let (_keep, stop) = tokio::sync::watch::channel(false);
            // The relay reads the platform's store, faults included.
            servers.push(tokio::spawn(async move {
                let _keep = _keep;
                oneprotect_server::relay::start(
                    config,
                    client,
                    platform_store,
                    platform_clock,
                    Arc::new(oneprotect_server::metrics::Metrics::default()),
                    stop,
                )
                .await;
            }));
            ctx.nats = Some(crate::nats::NatsTarget {
                url: nats.url.clone(),
                stream: oneprotect_server::relay::DEFAULT_STREAM.to_owned(),
            });
            Some(nats)
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "no NATS server for the local target: its events are not relayed");
            None
        }
        None => None,
    };
    Ok(LocalPlatform { ctx, _tmp: tmp, _pg: pg, servers, _nats: nats })
}
