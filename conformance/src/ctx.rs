//! What a check can use: a contract-validating HTTP client, two tenant-admin
//! credentials, and — on the local target only — a clock, the store, the
//! runtime secret and the captured logs. Everything secret the run sees is
//! remembered so redaction checks can look for it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oneprotect_contracts::contract::{self, ResponseSpec, Route, ops};
use oneprotect_contracts::types;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::{Tenant, Verdict};

pub use oneprotect_server::service::AgentAuth;

/// Capabilities only an in-process target has.
#[derive(Clone, Default)]
pub struct LocalPowers {
    pub clock: Option<Arc<oneprotect_server::clock::ManualClock>>,
    pub store: Option<Arc<dyn oneprotect_server::store::Store>>,
    pub runtime_secret: Option<Vec<u8>>,
    pub admin_secret: Option<Vec<u8>>,
    pub admin_issuer: String,
    pub admin_audience: String,
    pub logs: Option<CapturedLogs>,
    /// Base URL of a second platform configured without a runtime secret.
    pub secretless_base: Option<String>,
    /// Base URL (https) of the same platform behind its own TLS listener,
    /// authenticating agents by their client certificate (mutual TLS).
    pub mtls_base: Option<String>,
    /// The platform CA's chain (PEM), to trust that listener.
    pub ca_chain_pem: Option<String>,
    /// The agent binary under test (agent target).
    pub agent_bin: Option<std::path::PathBuf>,
    /// The fault a fault-injection build of the agent runs with (the
    /// harness's self-test only).
    pub agent_fault: Option<String>,
    /// A superuser URL of the platform's PostgreSQL database, to read its
    /// catalogue (PostgreSQL only).
    pub postgres_inspection: Option<String>,
}

/// The process's captured server logs, read from where one platform
/// started: a test process starts platform after platform, and each run
/// reads only the lines written since its own began.
#[derive(Clone)]
pub struct CapturedLogs {
    pub buffer: Arc<Mutex<Vec<u8>>>,
    /// The buffer's length when the platform started.
    pub from: usize,
}

impl CapturedLogs {
    /// Marks the buffer's current end as this platform's start.
    pub fn from_now(buffer: Arc<Mutex<Vec<u8>>>) -> Self {
        let from = buffer.lock().unwrap_or_else(|p| p.into_inner()).len();
        Self { buffer, from }
    }

    /// What was logged since the platform started (other platforms of the
    /// same process included, when they run side by side).
    pub fn since_start(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(buffer.get(self.from..).unwrap_or_default()).into_owned()
    }
}

/// How agent calls reach a deployment that serves TLS: each enrolled agent
/// gets a client presenting its own certificate, as a real agent does,
/// verifying the deployment with these roots.
#[derive(Clone, Default)]
pub struct AgentTls {
    /// PEM certificates the deployment's server certificate chains to
    /// (`--ca-bundle`); none: the system's roots.
    pub roots_pem: Option<String>,
}

impl AgentTls {
    /// How the harness speaks to a deployment: no redirects followed,
    /// every request bounded, the deployment verified with the roots.
    pub fn builder(&self) -> Result<reqwest::ClientBuilder, String> {
        let mut builder =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(REQUEST_TIMEOUT);
        if let Some(pem) = &self.roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| e.to_string())?;
            builder = builder.tls_certs_only(roots);
        }
        Ok(builder)
    }

    /// A client trusting the roots, presenting `identity` (certificate and
    /// key, PEM) when given.
    pub fn client(&self, identity: Option<&str>) -> Result<reqwest::Client, String> {
        let mut builder = self.builder()?;
        if let Some(pem) = identity {
            builder =
                builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?);
        }
        builder.build().map_err(|e| e.to_string())
    }
}

/// The agents this run enrolled, as mutual TLS needs them.
#[derive(Default)]
struct AgentIdentities {
    /// A CSR (PEM) and the key it was made with, until it is certified.
    keys: BTreeMap<String, String>,
    /// Agent id → a client presenting the agent's current certificate.
    clients: BTreeMap<String, reqwest::Client>,
    /// Runtime token → the agent it was issued to.
    agents_by_token: BTreeMap<String, String>,
}

/// Where the mutual TLS checks speak to the platform: the local target's
/// own TLS listener, or an https deployment that authenticates agents by
/// certificate.
pub struct MtlsListener {
    pub base: String,
    pub tls: AgentTls,
    /// The deployment also wants the runtime token (`mtls+bearer`).
    pub with_bearer: bool,
}

tokio::task_local! {
    /// The check whose future is running: requests are attributed to it
    /// even when checks run side by side.
    pub static CURRENT_CHECK: &'static str;
}

/// Waits for a duration: real time on a live deployment, the manual
/// clock's time on the local target (whose platform never sees real time pass).
pub type Sleeper = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub fn real_sleeper() -> Sleeper {
    Arc::new(|d| Box::pin(tokio::time::sleep(d)))
}

/// The most one request may take, connection and body included: a
/// deployment that never answers fails the check that asked, never hangs
/// the run.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most one check may take on a deployment, its waits for `Retry-After`
/// included; past it the check fails and the run goes on.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// On the local target a check's waits move the manual clock, so any check
/// still running after this long is stuck.
pub const LOCAL_CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// The most a run waits for one `Retry-After`, and how often it retries a
/// rate-limited request before it reports the 429 as the answer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
pub const RATE_LIMIT_RETRIES: usize = 3;
/// Bounds on reading one list to its end.
pub const LIST_PAGE_SIZE: u32 = 200;
pub const MAX_LIST_PAGES: usize = 5_000;

/// A value the contract constrains (a length, a pattern), or why it does not fit.
fn fit<T: TryFrom<String>>(what: &str, value: impl Into<String>) -> Result<T, String>
where
    T::Error: std::fmt::Display,
{
    T::try_from(value.into()).map_err(|e| format!("{what} does not fit the contract: {e}"))
}

/// A request body built from the generated type, as JSON: a property the
/// contract renames or removes fails to compile here.
fn typed<T: serde::Serialize>(body: T) -> Result<Value, String> {
    serde_json::to_value(body).map_err(|e| format!("a request body does not serialize: {e}"))
}

/// The paged lists of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Listing {
    Tokens,
    Agents,
    Audit,
    Events,
}

impl Listing {
    pub const ALL: [Listing; 4] = [Listing::Tokens, Listing::Agents, Listing::Audit, Listing::Events];

    /// The list operation of the contract.
    pub fn route(self) -> Route {
        match self {
            Self::Tokens => ops::list_enrollment_tokens(),
            Self::Agents => ops::list_agents(),
            Self::Audit => ops::list_audit_events(),
            Self::Events => ops::list_events(),
        }
    }

    pub fn operation(self) -> &'static str {
        self.route().operation_id()
    }
}

/// One request and its answer, as sent and received (secrets included:
/// it lives in memory only, and `evidence` redacts it before writing).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exchange {
    /// The check that sent it (none outside a check).
    pub check: Option<&'static str>,
    pub method: String,
    pub path: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Option<String>,
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
}

/// Where exchanges seen outside `Ctx::send` go; records nothing unless the
/// run keeps evidence.
#[derive(Clone)]
pub struct Recorder {
    check: Option<&'static str>,
    sink: Arc<Mutex<Vec<Exchange>>>,
}

impl Recorder {
    pub fn record(&self, exchanges: Vec<Exchange>) {
        let Some(check) = self.check else { return };
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        sink.extend(exchanges.into_iter().map(|e| Exchange { check: Some(check), ..e }));
    }
}

/// What the deployment's rate limiting cost the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Throttling {
    pub answers: usize,
    pub waited: Duration,
}

pub struct Ctx {
    pub base: String,
    pub http: reqwest::Client,
    pub admin_a: SecretString,
    pub admin_b: SecretString,
    pub run_id: String,
    pub local: LocalPowers,
    pub sleeper: Sleeper,
    secrets: Mutex<BTreeSet<String>>,
    /// Per tenant and list: a cursor the server issued that leads to the
    /// last page as it was when the run started, so a list read covers
    /// what the run created without re-reading the tenant's history.
    starts: Mutex<BTreeMap<(Tenant, Listing), String>>,
    throttling: Mutex<Throttling>,
    /// Whether requests are kept for the evidence bundle, and those kept
    /// since the runner last took them.
    recording: std::sync::atomic::AtomicBool,
    recorded: Arc<Mutex<Vec<Exchange>>>,
    /// SHA-256 of the certificate the deployment presented (https).
    pub tls_certificate_sha256: Mutex<Option<String>>,
    /// Checks that wait in real time may run (`--allow-waits`); always on
    /// the local target, whose waits move its clock.
    pub allow_waits: bool,
    /// The broker the deployment relays its events to (`--nats-url`; the
    /// local target's own).
    pub nats: Option<crate::nats::NatsTarget>,
    /// How long one check may run before it fails as stuck.
    pub check_timeout: Duration,
    /// Set for an https deployment: agent calls present the agent's certificate.
    pub agent_tls: Option<AgentTls>,
    identities: Mutex<AgentIdentities>,
    /// How the deployment authenticates agents, probed once at the run's start.
    agent_auth: std::sync::OnceLock<AgentAuth>,
}

/// One HTTP answer, already checked against the contract.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }
}

impl Ctx {
    pub fn new(
        base: &str,
        http: reqwest::Client,
        admin_a: SecretString,
        admin_b: SecretString,
        local: LocalPowers,
    ) -> Self {
        let run_id = format!("conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            admin_a,
            admin_b,
            run_id,
            local,
            sleeper: real_sleeper(),
            secrets: Mutex::new(BTreeSet::new()),
            starts: Mutex::new(BTreeMap::new()),
            throttling: Mutex::new(Throttling::default()),
            recording: std::sync::atomic::AtomicBool::new(false),
            recorded: Arc::new(Mutex::new(Vec::new())),
            tls_certificate_sha256: Mutex::new(None),
            allow_waits: false,
            nats: None,
            check_timeout: CHECK_TIMEOUT,
            agent_tls: None,
            identities: Mutex::new(AgentIdentities::default()),
            agent_auth: std::sync::OnceLock::new(),
        }
    }

    pub fn with_sleeper(mut self, sleeper: Sleeper) -> Self {
        self.sleeper = sleeper;
        self
    }

    pub fn remember(&self, secret: &str) {
        if secret.len() >= 16 {
            self.secrets.lock().unwrap_or_else(|p| p.into_inner()).insert(secret.to_owned());
        }
    }

    pub fn secrets(&self) -> Vec<String> {
        let mut all: Vec<String> =
            self.secrets.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        all.push(self.admin_a.expose_secret().to_owned());
        all.push(self.admin_b.expose_secret().to_owned());
        all
    }

    /// Keeps every request and answer from now on, for the evidence bundle.
    pub fn record_exchanges(&self) {
        self.recording.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A handle that adds exchanges seen elsewhere (the agent target's mock
    /// platform) to the transcript of the check running now.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            check: if self.recording.load(std::sync::atomic::Ordering::Relaxed) {
                CURRENT_CHECK.try_with(|c| *c).ok()
            } else {
                None
            },
            sink: self.recorded.clone(),
        }
    }

    /// The exchanges kept since the last call.
    pub fn take_exchanges(&self) -> Vec<Exchange> {
        std::mem::take(&mut *self.recorded.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The exchanges `check` sent, taken out of those kept.
    pub fn take_exchanges_of(&self, check: &str) -> Vec<Exchange> {
        let mut all = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<Exchange>, Vec<Exchange>) =
            std::mem::take(&mut *all).into_iter().partition(|e| e.check == Some(check));
        *all = rest;
        mine
    }

    pub fn throttling(&self) -> Throttling {
        self.throttling.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends a request; the answer must be a documented status with a body
    /// matching its schema, or the call fails.
    pub async fn call(
        &self,
        route: &Route,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        self.call_raw(route, bearer, body.map(|b| (b.to_string(), "application/json"))).await
    }

    /// As `call`, with any URL and body. A 429 is the deployment protecting
    /// itself, not an answer to judge: the request is sent again after the
    /// `Retry-After` it names (bounded), and the wait is reported.
    pub async fn call_raw(
        &self,
        route: &Route,
        bearer: Option<&str>,
        body: Option<(String, &str)>,
    ) -> Result<Answer, String> {
        self.call_raw_at(&self.base, route, bearer, body).await
    }

    /// As `call_raw`, at another base URL of the same platform.
    pub async fn call_raw_at(
        &self,
        base: &str,
        route: &Route,
        bearer: Option<&str>,
        body: Option<(String, &str)>,
    ) -> Result<Answer, String> {
        let mut attempt = 0;
        loop {
            let answer = self.call_once_at(base, route, bearer, body.clone()).await?;
            let wait = answer
                .retry_after
                .as_deref()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match wait {
                Some(wait)
                    if answer.status == 429 && attempt < RATE_LIMIT_RETRIES && wait <= MAX_RETRY_AFTER =>
                {
                    attempt += 1;
                    {
                        let mut t = self.throttling.lock().unwrap_or_else(|p| p.into_inner());
                        t.answers += 1;
                        t.waited += wait;
                    }
                    tracing::info!(
                        operation = route.operation_id(),
                        seconds = wait.as_secs(),
                        "the deployment answered 429 rate_limited; waiting as Retry-After asks"
                    );
                    (self.sleeper)(wait).await;
                }
                _ => return Ok(answer),
            }
        }
    }

    /// One request, one answer (429 included), checked against the contract.
    pub async fn call_once(
        &self,
        route: &Route,
        bearer: Option<&str>,
        body: Option<(String, &str)>,
    ) -> Result<Answer, String> {
        self.call_once_at(&self.base, route, bearer, body).await
    }

    async fn call_once_at(
        &self,
        base: &str,
        route: &Route,
        bearer: Option<&str>,
        body: Option<(String, &str)>,
    ) -> Result<Answer, String> {
        let client = self.agent_client(route, bearer).unwrap_or_else(|| self.http.clone());
        self.call_once_with(&client, base, route, bearer, body).await
    }

    /// One request through `client`; what it certifies is learnt (see `learn`).
    async fn call_once_with(
        &self,
        client: &reqwest::Client,
        base: &str,
        route: &Route,
        bearer: Option<&str>,
        body: Option<(String, &str)>,
    ) -> Result<Answer, String> {
        let operation = route.operation_id();
        let url = format!("{base}{}", route.path);
        let csr = self.certifying(route, body.as_ref());
        let (status, headers, text) = self
            .send_with(client, route.method(), &url, bearer, body)
            .await
            .map_err(|e| format!("{operation}: {e}"))?;
        let retry_after = headers.iter().find(|(k, _)| k == "retry-after").map(|(_, v)| v.clone());
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        check_against_contract(operation, status, &body)?;
        if status == 429 && retry_after.is_none() {
            return Err(format!("{operation}: 429 without Retry-After"));
        }
        if let Some(csr) = csr {
            self.learn(route, &csr, status, &body);
        }
        Ok(Answer { status, body, retry_after })
    }

    /// A fresh P-256 key's CSR; the key is kept until the CSR is certified,
    /// so the agent can present its certificate.
    pub fn csr(&self) -> String {
        let (key, csr) = p256_key_and_csr();
        self.identities().keys.insert(csr.clone(), key);
        csr
    }

    fn identities(&self) -> std::sync::MutexGuard<'_, AgentIdentities> {
        self.identities.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The CSR an exchange or rotation on a TLS deployment asks to certify
    /// (other requests are not parsed).
    fn certifying(&self, route: &Route, body: Option<&(String, &str)>) -> Option<String> {
        self.agent_tls.as_ref()?;
        if !matches!(
            route.op.id,
            contract::OperationId::ExchangeEnrollmentToken | contract::OperationId::RotateAgentCertificate
        ) {
            return None;
        }
        let request: Value = serde_json::from_str(&body?.0).ok()?;
        request["csr_pem"].as_str().map(str::to_owned)
    }

    /// After an exchange (201) or a rotation (200) of `csr`: the agent's
    /// client now presents the certificate just issued, and its new runtime
    /// token names it.
    fn learn(&self, route: &Route, csr: &str, status: u16, answer: &Value) {
        let Some(tls) = &self.agent_tls else { return };
        let agent = match (route.op.id, status) {
            (contract::OperationId::ExchangeEnrollmentToken, 201) => answer["agent"]["agent_id"].as_str(),
            (contract::OperationId::RotateAgentCertificate, 200) => path_agent(route),
            _ => return,
        };
        let (Some(agent), Some(certificate)) = (agent, answer["certificate_pem"].as_str()) else { return };
        let mut ids = self.identities();
        if let Some(token) = answer["runtime_token"]["token"].as_str() {
            ids.agents_by_token.insert(token.to_owned(), agent.to_owned());
        }
        let key = ids.keys.remove(csr);
        if let Some(client) = key.and_then(|key| tls.client(Some(&format!("{certificate}{key}"))).ok()) {
            ids.clients.insert(agent.to_owned(), client);
        }
    }

    /// The client an agent operation goes through on a TLS deployment: the
    /// one presenting the certificate of the agent whose runtime token is
    /// sent, else of the agent the path names (a forged or foreign token
    /// sent from that agent's own host).
    fn agent_client(&self, route: &Route, bearer: Option<&str>) -> Option<reqwest::Client> {
        self.agent_tls.as_ref()?;
        if !route.op.client_certificate {
            return None;
        }
        let ids = self.identities();
        let agent = bearer
            .and_then(|b| ids.agents_by_token.get(b).cloned())
            .or_else(|| path_agent(route).map(str::to_owned))?;
        ids.clients.get(&agent).cloned()
    }

    /// How the deployment authenticates agents: probed at the run's start
    /// on an https deployment; `bearer` over plain HTTP and on the local
    /// target's main listener.
    pub fn agent_auth(&self) -> AgentAuth {
        self.agent_auth.get().copied().unwrap_or(AgentAuth::Bearer)
    }

    /// Enrolls one agent of the run and finds which credentials its
    /// heartbeat needs: the certificate alone (`mtls`), the runtime token
    /// alone (`bearer`), or both (`mtls+bearer`).
    /// Over plain HTTP there is nothing to find: agents can only send tokens.
    pub async fn probe_agent_auth(&self) -> Result<AgentAuth, String> {
        if self.agent_tls.is_none() {
            return Ok(AgentAuth::Bearer);
        }
        let (agent, runtime, _) = self.enroll(Tenant::A).await?;
        let route = ops::post_agent_heartbeat(&agent);
        let presents = self.agent_client(&route, None).ok_or("the exchange issued no usable certificate")?;
        let mut sequence = 0;
        let mut beat = |client: reqwest::Client, bearer: Option<String>| {
            sequence += 1;
            let body = self.heartbeat_body(sequence);
            let route = route.clone();
            async move {
                let body = body?;
                let a = self
                    .call_once_with(
                        &client,
                        &self.base,
                        &route,
                        bearer.as_deref(),
                        Some((body.to_string(), "application/json")),
                    )
                    .await?;
                Ok::<bool, String>(a.status == 200)
            }
        };
        let auth = if beat(presents.clone(), None).await? {
            AgentAuth::Mtls
        } else if beat(self.http.clone(), Some(runtime.clone())).await? {
            AgentAuth::Bearer
        } else if beat(presents, Some(runtime)).await? {
            AgentAuth::MtlsAndBearer
        } else {
            return Err(
                "an enrolled agent's heartbeat was refused with its certificate, its runtime token and both"
                    .into(),
            );
        };
        let _ = self.agent_auth.set(auth);
        Ok(auth)
    }

    /// Where the mutual TLS checks run, or why they cannot.
    pub fn mtls_listener(&self) -> Result<MtlsListener, Verdict> {
        if let (Some(base), Some(chain)) = (&self.local.mtls_base, &self.local.ca_chain_pem) {
            return Ok(MtlsListener {
                base: base.clone(),
                tls: AgentTls { roots_pem: Some(chain.clone()) },
                with_bearer: false,
            });
        }
        let Some(tls) = &self.agent_tls else {
            return Err(Verdict::Skip(
                "the deployment serves plain HTTP: no client certificate can be presented".into(),
            ));
        };
        match self.agent_auth() {
            AgentAuth::Bearer => Err(Verdict::Skip(
                "the deployment authenticates agents by runtime token alone (ONEPROTECT_AGENT_AUTH=bearer)"
                    .into(),
            )),
            auth => Ok(MtlsListener {
                base: self.base.clone(),
                tls: tls.clone(),
                with_bearer: auth == AgentAuth::MtlsAndBearer,
            }),
        }
    }

    /// Sends one request as it is and returns the status, headers and body
    /// text, unjudged; kept for the evidence bundle when recording.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
        body: Option<(String, &str)>,
    ) -> Result<(u16, Vec<(String, String)>, String), String> {
        self.send_with(&self.http, method, url, bearer, body).await
    }

    async fn send_with(
        &self,
        client: &reqwest::Client,
        method: &str,
        url: &str,
        bearer: Option<&str>,
        body: Option<(String, &str)>,
    ) -> Result<(u16, Vec<(String, String)>, String), String> {
        let method: reqwest::Method = method.parse().map_err(|_| format!("bad method {method}"))?;
        let mut req = client.request(method.clone(), url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some((text, content_type)) = &body {
            req = req.header("content-type", *content_type).body(text.clone());
        }
        let request = req.build().map_err(|e| crate::preflight::describe(&e))?;
        let request_headers = header_list(request.headers());
        let resp = client.execute(request).await.map_err(|e| crate::preflight::describe(&e))?;
        let status = resp.status().as_u16();
        let response_headers = header_list(resp.headers());
        let text =
            resp.text().await.map_err(|e| format!("unreadable body: {}", crate::preflight::describe(&e)))?;
        if self.recording.load(std::sync::atomic::Ordering::Relaxed) {
            let path = url.strip_prefix(&self.base).unwrap_or(url).to_owned();
            self.recorded.lock().unwrap_or_else(|p| p.into_inner()).push(Exchange {
                check: CURRENT_CHECK.try_with(|c| *c).ok(),
                method: method.to_string(),
                path,
                request_headers,
                request_body: body.map(|(text, _)| text),
                status,
                response_headers: response_headers.clone(),
                response_body: text.clone(),
            });
        }
        Ok((status, response_headers, text))
    }

    pub fn admin(&self, tenant: Tenant) -> &str {
        match tenant {
            Tenant::A => self.admin_a.expose_secret(),
            Tenant::B => self.admin_b.expose_secret(),
        }
    }

    /// Issues a token for 600 s labelled with the run id (revoked at cleanup).
    pub async fn issue_token(&self, tenant: Tenant, max_uses: u32) -> Result<(String, String), String> {
        self.issue_token_for(tenant, max_uses, 600).await
    }

    /// Issues a token for `ttl_seconds` labelled with the run id.
    pub async fn issue_token_for(
        &self,
        tenant: Tenant,
        max_uses: u32,
        ttl_seconds: u32,
    ) -> Result<(String, String), String> {
        let body = typed(types::EnrollmentTokenIssueRequest {
            ttl_seconds,
            max_uses: std::num::NonZeroU32::new(max_uses).ok_or("max_uses must be at least 1")?,
            label: Some(fit("the label", format!("{} (conformance, revoked at the end)", self.run_id))?),
            site_id: None,
            collector_id: None,
        })?;
        let a = self.call(&ops::issue_enrollment_token(), Some(self.admin(tenant)), Some(&body)).await?;
        if a.status != 201 {
            return Err(format!("issue answered {} {}", a.status, a.code()));
        }
        let secret = a.body["enrollment_token"].as_str().ok_or("no secret in the issue response")?.to_owned();
        let id = a.body["token"]["enrollment_token_id"].as_str().ok_or("no token id")?.to_owned();
        self.remember(&secret);
        Ok((secret, id))
    }

    /// A well-formed exchange body for `token`: a fresh key's CSR and nonce.
    pub fn exchange_body(&self, token: &str) -> Result<Value, String> {
        let csr = self.csr();
        let nonce = crate::random_nonce();
        self.remember(&nonce);
        self.remember(pem_body(&csr));
        typed(types::EnrollmentExchangeRequest {
            enrollment_token: fit("the enrollment token", token)?,
            csr_pem: fit("the CSR", csr)?,
            nonce: fit("the nonce", nonce)?,
            hostname: fit("the hostname", self.hostname())?,
            agent_version: fit("the agent version", "conformance")?,
            os_family: None,
            hardware_fingerprint_hash: None,
        })
    }

    /// The hostname every agent of this run reports: how cleanup finds them.
    pub fn hostname(&self) -> String {
        format!("{}.conformance", self.run_id)
    }

    pub async fn exchange(&self, body: &Value) -> Result<Answer, String> {
        let a = self.call(&ops::exchange_enrollment_token(), None, Some(body)).await?;
        if a.status == 201
            && let Some(t) = a.body["runtime_token"]["token"].as_str()
        {
            self.remember(t);
        }
        Ok(a)
    }

    /// Issues a single-use token and enrolls one agent: (agent id, runtime token, exchange answer).
    pub async fn enroll(&self, tenant: Tenant) -> Result<(String, String, Value), String> {
        let (secret, _) = self.issue_token(tenant, 1).await?;
        let a = self.exchange(&self.exchange_body(&secret)?).await?;
        if a.status != 201 {
            return Err(format!("exchange answered {} {}", a.status, a.code()));
        }
        let agent = a.body["agent"]["agent_id"].as_str().ok_or("no agent id")?.to_owned();
        let token = a.body["runtime_token"]["token"].as_str().ok_or("no runtime token")?.to_owned();
        Ok((agent, token, a.body))
    }

    pub async fn heartbeat(&self, agent: &str, bearer: &str, sequence: u64) -> Result<Answer, String> {
        let body = self.heartbeat_body(sequence)?;
        self.call(&ops::post_agent_heartbeat(agent), Some(bearer), Some(&body)).await
    }

    /// A minimal heartbeat of this run's hostname.
    fn heartbeat_body(&self, sequence: u64) -> Result<Value, String> {
        typed(types::AgentHeartbeatTelemetryRequest {
            sequence,
            collected_at: chrono::Utc::now(),
            hostname: fit("the hostname", self.hostname())?,
            agent_version: fit("the agent version", "conformance")?,
            os_family: None,
            os_version: None,
            cpu_count: None,
            cpu_usage_percent: None,
            memory_total_bytes: None,
            memory_used_bytes: None,
            process_count: None,
            uptime_seconds: None,
            disks: Vec::new(),
            network_interfaces: Vec::new(),
        })
    }

    /// Remembers where every list of both tenants ends before the run
    /// writes anything (see `starts`). Bounded like `list`.
    pub async fn mark_list_starts(&self) -> Result<(), String> {
        for tenant in Tenant::BOTH {
            for listing in Listing::ALL {
                let (_, last_page) = self.read_pages(tenant, listing, None).await?;
                if let Some(cursor) = last_page {
                    self.starts.lock().unwrap_or_else(|p| p.into_inner()).insert((tenant, listing), cursor);
                }
            }
        }
        Ok(())
    }

    /// Every item of a list the run can have touched: all pages from where
    /// the list ended when the run started (the whole list if it was not
    /// marked), following cursors to the end.
    pub async fn list(&self, tenant: Tenant, listing: Listing) -> Result<Vec<Value>, String> {
        let start = self.starts.lock().unwrap_or_else(|p| p.into_inner()).get(&(tenant, listing)).cloned();
        Ok(self.read_pages(tenant, listing, start).await?.0)
    }

    /// Reads pages from `cursor` to the end: the items and the cursor that
    /// fetched the last page (`None` when that was the first request).
    async fn read_pages(
        &self,
        tenant: Tenant,
        listing: Listing,
        mut cursor: Option<String>,
    ) -> Result<(Vec<Value>, Option<String>), String> {
        let operation = listing.operation();
        let mut items = Vec::new();
        for _ in 0..MAX_LIST_PAGES {
            let route = match &cursor {
                Some(c) => listing.route().query("limit", LIST_PAGE_SIZE).query("cursor", c),
                None => listing.route().query("limit", LIST_PAGE_SIZE),
            };
            let a = self.call(&route, Some(self.admin(tenant)), None).await?;
            if a.status != 200 {
                return Err(format!("{operation} answered {} {}", a.status, a.code()));
            }
            items.extend(a.body["items"].as_array().cloned().unwrap_or_default());
            match a.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok((items, cursor)),
            }
        }
        Err(format!(
            "{operation} of tenant {tenant:?} has more than {MAX_LIST_PAGES} pages of {LIST_PAGE_SIZE}; the run reads no further"
        ))
    }

    /// Revokes every token and agent this run created, found by the run's
    /// label (token `label`, agent `hostname`) in both tenants. Best effort;
    /// returns what could not be revoked.
    pub async fn cleanup(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let reason = match fit("the revoke reason", format!("{} cleanup", self.run_id))
            .and_then(|r| typed(types::RevokeRequest { reason: Some(r) }))
        {
            Ok(body) => body,
            Err(e) => return vec![e],
        };
        let host = self.hostname();
        for tenant in Tenant::BOTH {
            let admin = self.admin(tenant);
            let tokens = self.list(tenant, Listing::Tokens).await.unwrap_or_else(|e| {
                failures.push(e);
                Vec::new()
            });
            for t in tokens {
                let labelled = t["label"].as_str().is_some_and(|l| l.contains(&self.run_id));
                if labelled && t["status"] == "active" {
                    let id = t["enrollment_token_id"].as_str().unwrap_or_default();
                    match self.call(&ops::revoke_enrollment_token(id), Some(admin), Some(&reason)).await {
                        Ok(a) if a.status == 200 => {}
                        other => failures.push(format!("token {id}: {other:?}")),
                    }
                }
            }
            let agents = self.list(tenant, Listing::Agents).await.unwrap_or_else(|e| {
                failures.push(e);
                Vec::new()
            });
            for a in agents {
                if a["hostname"] == host.as_str() && a["status"] != "revoked" {
                    let id = a["agent_id"].as_str().unwrap_or_default();
                    match self.call(&ops::revoke_agent(id), Some(admin), Some(&reason)).await {
                        Ok(r) if r.status == 200 => {}
                        other => failures.push(format!("agent {id}: {other:?}")),
                    }
                }
            }
        }
        failures.extend(self.still_active().await);
        failures
    }

    /// What the run created that is still usable after cleanup, read back
    /// from the deployment.
    async fn still_active(&self) -> Vec<String> {
        let mut left = Vec::new();
        let host = self.hostname();
        for tenant in Tenant::BOTH {
            match self.list(tenant, Listing::Tokens).await {
                Ok(tokens) => left.extend(
                    tokens
                        .iter()
                        .filter(|t| {
                            t["label"].as_str().is_some_and(|l| l.contains(&self.run_id))
                                && t["status"] == "active"
                        })
                        .map(|t| {
                            format!(
                                "token {} is still active after cleanup",
                                t["enrollment_token_id"].as_str().unwrap_or("?")
                            )
                        }),
                ),
                Err(e) => left.push(format!("cannot verify the cleanup: {e}")),
            }
            match self.list(tenant, Listing::Agents).await {
                Ok(agents) => left.extend(
                    agents.iter().filter(|a| a["hostname"] == host.as_str() && a["status"] != "revoked").map(
                        |a| {
                            format!(
                                "agent {} is still {} after cleanup",
                                a["agent_id"].as_str().unwrap_or("?"),
                                a["status"]
                            )
                        },
                    ),
                ),
                Err(e) => left.push(format!("cannot verify the cleanup: {e}")),
            }
        }
        left
    }

    /// The time the platform sees: its manual clock on the local target,
    /// the real time elsewhere.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.local
            .clock
            .as_ref()
            .map(|c| oneprotect_server::clock::Clock::now(c.as_ref()))
            .unwrap_or_else(chrono::Utc::now)
    }

    /// A check that needs a local power skips on other targets.
    pub fn needs<T: Clone>(&self, what: &str, power: &Option<T>) -> Result<T, Verdict> {
        power.clone().ok_or_else(|| Verdict::Skip(format!("needs {what} (local target only)")))
    }
}

fn header_list(headers: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

/// Fails unless the status is documented for the operation and the body
/// matches the documented schema.
pub fn check_against_contract(operation: &str, status: u16, body: &Value) -> Result<(), String> {
    let op = contract::operation(operation).ok_or_else(|| format!("unknown operation {operation}"))?;
    match op.response(status) {
        Some(ResponseSpec::Json(schema)) => contract::validate_schema(schema, body).map_err(|v| {
            let first = v.first().map(|x| x.to_string()).unwrap_or_default();
            format!("{operation} {status}: body does not match {schema}: {first}")
        }),
        Some(_) => Ok(()),
        None => Err(format!("{operation} answered undocumented status {status}")),
    }
}

pub fn p256_csr() -> String {
    p256_key_and_csr().1
}

/// A fresh P-256 key (PKCS#8 PEM) and its CSR (PEM).
pub fn p256_key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
    let params = rcgen::CertificateParams::new(vec!["conformance.local".to_owned()]).expect("params");
    (key.serialize_pem(), params.serialize_request(&key).expect("csr").pem().expect("pem"))
}

/// The agent id an agent operation's path names (`/api/v1/agents/{agent_id}/…`).
fn path_agent(route: &Route) -> Option<&str> {
    let mut segments = route.path.split('/');
    segments.find(|s| *s == "agents")?;
    segments.next().filter(|s| !s.is_empty())
}

/// The base64 body of a PEM block.
pub fn pem_body(pem: &str) -> &str {
    pem.lines().filter(|l| !l.starts_with("-----")).max_by_key(|l| l.len()).unwrap_or("")
}
