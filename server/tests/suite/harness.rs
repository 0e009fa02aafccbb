//! An in-process platform on loopback with a manual clock, backed by SQLite
//! or by a throwaway PostgreSQL database whose application role is neither
//! superuser, BYPASSRLS nor table owner.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Duration, Utc};
pub use oneprotect_contracts::contract::{ProblemCode, Route, ops};
pub use oneprotect_contracts::types;
use oneprotect_server::admin_auth::{AdminClaims, AdminVerifier, mint_hs256};
use oneprotect_server::clock::ManualClock;
use oneprotect_server::pki::PlatformCa;
use oneprotect_server::runtime_token::{RuntimeClaims, RuntimeKeyring};
use oneprotect_server::secrets::{HashKey, b64, random_bytes};
use oneprotect_server::service::{Platform, Policy};
use oneprotect_server::store::Store;
use oneprotect_server::store::postgres::PgStore;
use oneprotect_server::store::sqlite::SqliteStore;
use reqwest::StatusCode;
use serde_json::Value;

pub const ADMIN_SECRET: &[u8] = b"fixture-admin-jwt-secret-for-tests-only-0000";
pub const RUNTIME_SECRET: &[u8] = b"fixture-runtime-token-secret-for-tests-only-00";
pub const HASH_KEY: &[u8] = b"fixture-token-hash-key-for-tests-only-0000000";
pub const ISSUER: &str = "oneprotect-test";
pub const AUDIENCE: &str = "oneprotect-api";
pub const TENANT_A: &str = "tenant-a";
pub const TENANT_B: &str = "tenant-b";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Every log line the test process writes goes here as well, so tests can
/// prove no secret reached the logs.
pub fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        logs().lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).expect("fixture time")
}

/// A throwaway PostgreSQL database with an owner and an application role.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    pub owner: String,
    pub app: String,
}

fn pg_admin_url() -> String {
    std::env::var("ONEPROTECT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn pg_url(base: &str, user: &str, db: &str) -> String {
    let rest = base.split_once('@').map(|(_, r)| r).unwrap_or("127.0.0.1:5432/postgres");
    let host = rest.split_once('/').map(|(h, _)| h).unwrap_or(rest);
    format!("postgres://{user}@{host}/{db}")
}

impl PgDatabase {
    pub async fn create() -> Self {
        use sqlx::Executor;
        let suffix = oneprotect_server::secrets::hex(&random_bytes::<6>());
        let admin_url = pg_admin_url();
        let db = Self {
            admin_url: admin_url.clone(),
            name: format!("op_test_{suffix}"),
            owner: format!("op_owner_{suffix}"),
            app: format!("op_app_{suffix}"),
        };
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {admin_url} for these tests (set ONEPROTECT_TEST_POSTGRES_URL): {e}"));
        for sql in [
            format!("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS", db.owner),
            format!("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS", db.app),
            format!("CREATE DATABASE {} OWNER {}", db.name, db.owner),
        ] {
            conn.execute(sqlx::AssertSqlSafe(sql)).await.expect("create test database and roles");
        }
        db
    }

    pub fn owner_url(&self) -> String {
        pg_url(&self.admin_url, &self.owner, &self.name)
    }

    pub fn app_url(&self) -> String {
        pg_url(&self.admin_url, &self.app, &self.name)
    }

    pub fn superuser_url(&self) -> String {
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
                use sqlx::Executor;
                if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
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

pub struct Options {
    pub policy: Policy,
    pub runtime_secret: Option<Vec<u8>>,
    /// The platform CA; `None` runs the platform without one.
    pub ca: Option<Arc<PlatformCa>>,
    /// Serve HTTPS (the listener of `serve`, client certificates
    /// requested and verified against the CA); the clock starts at the
    /// real time so that TLS, which checks validity by the real clock, and
    /// the platform agree.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: Policy { failure_limit: 10_000, ..Policy::default() },
            runtime_secret: Some(RUNTIME_SECRET.to_vec()),
            ca: Some(test_ca()),
            tls: false,
        }
    }
}

/// The suite's platform CA (a fixture generated per test run, in memory).
pub fn test_ca() -> Arc<PlatformCa> {
    static CA: OnceLock<Arc<PlatformCa>> = OnceLock::new();
    CA.get_or_init(|| {
        Arc::new(
            PlatformCa::generate("OneProtect test CA (fixture)", TRUST_DOMAIN, t0() - Duration::days(1))
                .expect("test CA"),
        )
    })
    .clone()
}

pub const TRUST_DOMAIN: &str = "oneprotect.test";

pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    /// Every secret the run produced or sent, for redaction scans.
    pub secrets: Mutex<BTreeSet<String>>,
    pub sqlite_path: Option<std::path::PathBuf>,
    _tmp: Option<tempfile::TempDir>,
    pub pg: Option<PgDatabase>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn open_store(
    backend: Backend,
    pg: Option<&PgDatabase>,
    sqlite_path: Option<&std::path::Path>,
) -> Arc<dyn Store> {
    match backend {
        Backend::Sqlite => {
            Arc::new(SqliteStore::open(sqlite_path.expect("sqlite path")).expect("open sqlite"))
        }
        Backend::Postgres => {
            let pg = pg.expect("pg database");
            oneprotect_server::store::postgres::migrate(&pg.owner_url(), Some(&pg.app))
                .await
                .expect("migrate");
            let store = PgStore::connect(&pg.app_url())
                .await
                .expect("connect as app role")
                .with_inspection(&pg.superuser_url())
                .await
                .expect("inspection connection");
            store.ensure_unprivileged().await.expect("the app role is unprivileged");
            Arc::new(store)
        }
    }
}

pub fn platform(store: Arc<dyn Store>, clock: Arc<ManualClock>, options: &Options) -> Platform {
    let runtime = RuntimeKeyring::new(options.runtime_secret.clone(), vec![]).expect("keyring");
    let admin = AdminVerifier::hs256(ADMIN_SECRET, ISSUER, AUDIENCE).expect("admin verifier");
    let platform = Platform::new(
        store,
        clock,
        HashKey::new(HASH_KEY.to_vec()).expect("hash key"),
        runtime,
        admin,
        options.policy.clone(),
    );
    match &options.ca {
        Some(ca) => platform.with_ca(ca.clone()),
        None => platform,
    }
}

impl Harness {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Self {
        init_logs();
        let tmp = tempfile::tempdir().expect("tempdir");
        let sqlite_path = tmp.path().join("oneprotect.db");
        let pg = match backend {
            Backend::Postgres => Some(PgDatabase::create().await),
            Backend::Sqlite => None,
        };
        let store = open_store(backend, pg.as_ref(), Some(&sqlite_path)).await;
        let start = if options.tls {
            DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now")
        } else {
            t0()
        };
        let clock = Arc::new(ManualClock::new(start));
        Self::serve(store, clock, options, Some(tmp), pg, Some(sqlite_path)).await
    }

    pub async fn serve(
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        options: Options,
        tmp: Option<tempfile::TempDir>,
        pg: Option<PgDatabase>,
        sqlite_path: Option<std::path::PathBuf>,
    ) -> Self {
        let platform = Arc::new(platform(store.clone(), clock.clone(), &options));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let (base, http, server) = if options.tls {
            let ca = options.ca.as_ref().expect("TLS needs the CA");
            let dir = tmp.as_ref().expect("a directory for the server certificate").path().to_owned();
            let files =
                oneprotect_server::tls::development_server_files(&dir, ca, Utc::now()).expect("server cert");
            let config =
                oneprotect_server::tls::server_config(&files, Some(ca), clock.clone()).expect("TLS config");
            let router = oneprotect_server::app::router(platform.clone());
            let server = tokio::spawn(async move {
                let _ = oneprotect_server::listen::serve(
                    listener,
                    router,
                    oneprotect_server::listen::Limits::default(),
                    Some(config),
                    std::future::pending(),
                )
                .await;
            });
            (format!("https://127.0.0.1:{}", addr.port()), tls_client(ca, None), server)
        } else {
            let app = oneprotect_server::app::router(platform.clone())
                .into_make_service_with_connect_info::<SocketAddr>();
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (format!("http://{addr}"), reqwest::Client::new(), server)
        };
        Self {
            base,
            http,
            clock,
            store,
            secrets: Mutex::new(BTreeSet::new()),
            sqlite_path,
            _tmp: tmp,
            pg,
            server,
        }
    }

    /// Hands over what a restarted server needs (clock, database, files).
    pub fn take_for_restart(
        &mut self,
    ) -> (Arc<ManualClock>, Option<PgDatabase>, Option<std::path::PathBuf>, Option<tempfile::TempDir>) {
        (self.clock.clone(), self.pg.take(), self.sqlite_path.take(), self._tmp.take())
    }

    pub fn remember(&self, secret: &str) {
        self.secrets.lock().unwrap_or_else(|p| p.into_inner()).insert(secret.to_owned());
    }

    pub fn admin(&self, tenant: &str) -> String {
        self.admin_token(tenant, &["tenant_admin"], self.clock_now() + Duration::hours(1))
    }

    pub fn viewer(&self, tenant: &str) -> String {
        self.admin_token(tenant, &["tenant_viewer"], self.clock_now() + Duration::hours(1))
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        oneprotect_server::clock::Clock::now(self.clock.as_ref())
    }

    pub fn admin_token(&self, tenant: &str, roles: &[&str], exp: DateTime<Utc>) -> String {
        let claims = AdminClaims {
            sub: format!("admin@{tenant}"),
            tenant_id: tenant.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            exp: exp.timestamp(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            nbf: None,
        };
        let token = mint_hs256(ADMIN_SECRET, &claims).expect("mint");
        self.remember(&token);
        token
    }

    /// Signs arbitrary runtime claims with the platform's key (forgeries
    /// that only an insider with the secret could make).
    pub fn runtime_token_for(&self, claims: &RuntimeClaims) -> String {
        let ring = RuntimeKeyring::new(Some(RUNTIME_SECRET.to_vec()), vec![]).expect("keyring");
        let token =
            secrecy::ExposeSecret::expose_secret(&ring.issue(claims).expect("issue").token).to_owned();
        self.remember(&token);
        token
    }

    /// Sends a request and checks the response against the contract.
    pub async fn call(
        &self,
        route: &Route,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        self.call_via(&self.http, route, bearer, body).await
    }

    /// `call` through another client (one presenting a client certificate).
    pub async fn call_via(
        &self,
        http: &reqwest::Client,
        route: &Route,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let operation = route.operation_id();
        let mut req =
            http.request(route.method().parse().expect("method"), format!("{}{}", self.base, route.path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").cloned();
        let text = resp.text().await.expect("body");
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        check_contract(operation, status.as_u16(), &value);
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after.is_some(), "429 carries Retry-After");
        }
        (status, value)
    }

    pub async fn issue(&self, tenant: &str, body: Value) -> Value {
        let (status, v) =
            self.call(&ops::issue_enrollment_token(), Some(&self.admin(tenant)), Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        self.remember(v["enrollment_token"].as_str().expect("secret"));
        v
    }

    pub async fn issue_token(&self, tenant: &str, max_uses: u32) -> (String, String) {
        let body = types::EnrollmentTokenIssueRequest {
            ttl_seconds: 3600,
            max_uses: std::num::NonZeroU32::new(max_uses).expect("max_uses is at least 1"),
            label: Some(fit("fixture")),
            site_id: None,
            collector_id: None,
        };
        let v = self.issue(tenant, typed(&body)).await;
        (
            v["enrollment_token"].as_str().expect("secret").to_owned(),
            v["token"]["enrollment_token_id"].as_str().expect("id").to_owned(),
        )
    }

    pub fn exchange_body(&self, token: &str, csr_pem: &str) -> Value {
        let nonce = b64(&random_bytes::<24>());
        let fingerprint = oneprotect_server::secrets::hex(&random_bytes::<32>());
        self.remember(&nonce);
        self.remember(&fingerprint);
        self.remember(csr_body(csr_pem));
        typed(&types::EnrollmentExchangeRequest {
            enrollment_token: fit(token),
            csr_pem: fit(csr_pem),
            nonce: fit(nonce),
            hostname: fit("host-1.fixture"),
            agent_version: fit("0.1.0"),
            os_family: Some(fit("linux")),
            hardware_fingerprint_hash: Some(fit(fingerprint)),
        })
    }

    pub async fn exchange(&self, body: &Value) -> (StatusCode, Value) {
        let (status, v) = self.call(&ops::exchange_enrollment_token(), None, Some(body)).await;
        if status == StatusCode::CREATED {
            self.remember(v["runtime_token"]["token"].as_str().expect("runtime token"));
        }
        (status, v)
    }

    /// Issues a token and enrolls one agent: (agent id, runtime token, response).
    pub async fn enroll(&self, tenant: &str) -> (String, String, Value) {
        let (token, _) = self.issue_token(tenant, 1).await;
        let (status, v) = self.exchange(&self.exchange_body(&token, &p256_csr())).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        (
            v["agent"]["agent_id"].as_str().expect("agent").to_owned(),
            v["runtime_token"]["token"].as_str().expect("token").to_owned(),
            v,
        )
    }

    pub async fn heartbeat(&self, agent_id: &str, bearer: &str, sequence: u64) -> (StatusCode, Value) {
        self.call(&ops::post_agent_heartbeat(agent_id), Some(bearer), Some(&heartbeat_body(sequence))).await
    }
}

/// A heartbeat body with `sequence`.
pub fn heartbeat_body(sequence: u64) -> Value {
    {
        typed(&types::AgentHeartbeatTelemetryRequest {
            sequence,
            collected_at: "2026-11-22T10:00:00Z".parse().expect("fixture time"),
            hostname: fit("host-1.fixture"),
            agent_version: fit("0.1.0"),
            os_family: Some(fit("linux")),
            cpu_count: Some(4),
            os_version: None,
            cpu_usage_percent: None,
            memory_total_bytes: None,
            memory_used_bytes: None,
            process_count: None,
            uptime_seconds: None,
            disks: Vec::new(),
            network_interfaces: Vec::new(),
        })
    }
}

impl Harness {
    pub async fn audit(&self, tenant: &str) -> Vec<Value> {
        let (status, v) =
            self.call(&ops::list_audit_events().query("limit", 200), Some(&self.admin(tenant)), None).await;
        assert_eq!(status, StatusCode::OK);
        v["items"].as_array().cloned().unwrap_or_default()
    }

    pub async fn events(&self, tenant: &str) -> Vec<Value> {
        let (status, v) =
            self.call(&ops::list_events().query("limit", 200), Some(&self.admin(tenant)), None).await;
        assert_eq!(status, StatusCode::OK);
        let items = v["items"].as_array().cloned().unwrap_or_default();
        for e in &items {
            assert_eq!(
                oneprotect_contracts::events::validate(e),
                Ok(()),
                "every listed event validates against its schema"
            );
        }
        items
    }

    pub async fn token_metadata(&self, tenant: &str, id: &str) -> Value {
        let (_, v) = self
            .call(&ops::list_enrollment_tokens().query("limit", 200), Some(&self.admin(tenant)), None)
            .await;
        v["items"]
            .as_array()
            .and_then(|items| items.iter().find(|t| t["enrollment_token_id"] == id).cloned())
            .expect("token listed")
    }
}

/// An HTTPS client trusting the platform CA, presenting `identity` (a PEM
/// certificate followed by its key) when given.
pub fn tls_client(ca: &PlatformCa, identity: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.chain_pem().as_bytes()).expect("CA PEM")]);
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity PEM"));
    }
    builder.build().expect("TLS client")
}

/// Fails the test when a response is not what the contract documents.
pub fn check_contract(operation: &str, status: u16, body: &Value) {
    let op = oneprotect_contracts::contract::operation(operation)
        .unwrap_or_else(|| panic!("unknown operation {operation}"));
    match op.response(status) {
        Some(oneprotect_contracts::contract::ResponseSpec::Json(schema)) => {
            if let Err(v) = oneprotect_contracts::contract::validate_schema(schema, body) {
                panic!("{operation} {status}: body does not match {schema}: {v:?}\n{body}");
            }
        }
        Some(_) => {}
        None => panic!("{operation} answered undocumented status {status}: {body}"),
    }
}

/// The base64 body of a PEM block (what must never be stored or logged).
pub fn csr_body(pem: &str) -> &str {
    pem.lines().filter(|l| !l.starts_with("-----")).max_by_key(|l| l.len()).unwrap_or("")
}

pub fn p256_csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["host-1.fixture".to_owned()]).expect("params");
    params.serialize_request(&key).expect("csr").pem().expect("pem")
}

/// A CSR made by the `openssl` command line tool.
pub fn openssl_csr(key_args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    let csr = dir.path().join("csr.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/CN=openssl.fixture"])
        .args(key_args)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command line tool is required for these tests");
    assert!(status.success(), "openssl req {key_args:?} failed");
    std::fs::read_to_string(csr).expect("csr")
}

/// Asserts a Problem with `code` at `status`.
/// A fixture value the contract constrains (length, pattern); fixtures fit.
pub fn fit<T: TryFrom<String>>(value: impl Into<String>) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(value.into()).expect("the fixture fits the contract")
}

/// A request body from its generated type, as the JSON the harness sends.
pub fn typed<T: serde::Serialize>(body: &T) -> Value {
    serde_json::to_value(body).expect("a typed body serializes")
}

pub fn assert_problem(result: &(StatusCode, Value), status: StatusCode, code: ProblemCode) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["code"], code.as_str(), "{}", result.1);
}

/// Generates one test per backend from an async fn taking the backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        pub mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await;
                }
            )*
        }
        pub mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await;
                }
            )*
        }
    };
}
