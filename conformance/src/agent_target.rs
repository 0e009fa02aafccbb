//! The `agent` target: the agent binary against a scripted mock platform
//! (`wiremock`) on loopback. Every request the agent sends is recorded with
//! its arrival time; every wait is bounded.

use oneprotect_contracts::contract::ProblemCode;
use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::ctx::{Exchange, Recorder};

pub const AGENT_ID: &str = "5a1c0f6e-3b2d-4c8e-9f70-112233445566";
pub const RUNTIME_TOKEN: &str = "oprt.v1.kmock.FIXTURE-mock-runtime-token-not-a-secret-0000";
pub const ENROLLMENT_TOKEN: &str =
    "opet_00112233445566778899aabbccddeeff_FIXTURE-mock-enrollment-token-00000000";
pub const DEADLINE: Duration = Duration::from_secs(20);

pub type Recorded = Arc<Mutex<Vec<(Instant, Value)>>>;

/// One answer of the mock platform: kept as data so the evidence bundle
/// can show it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
    /// Whitespace sent after the JSON body (still valid JSON): a large answer.
    pub padding: usize,
    /// How long the answer is held back: a hung platform.
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            headers: vec![("content-type".into(), "application/json".into())],
            padding: 0,
            delay: Duration::ZERO,
        }
    }

    /// This answer followed by `bytes` of whitespace.
    pub fn padded(mut self, bytes: usize) -> Self {
        self.padding = bytes;
        self
    }

    /// This answer, sent only after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The body as the transcript shows it (padding counted, not copied).
    fn transcript_body(&self) -> String {
        match self.padding {
            0 => self.body.to_string(),
            n => format!("{} (followed by {n} bytes of whitespace)", self.body),
        }
    }

    pub fn insert_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn template(&self) -> ResponseTemplate {
        let mut t = if self.padding == 0 {
            ResponseTemplate::new(self.status).set_body_json(&self.body)
        } else {
            let mut bytes = self.body.to_string().into_bytes();
            bytes.resize(bytes.len() + self.padding, b' ');
            ResponseTemplate::new(self.status).set_body_raw(bytes, "application/json")
        };
        if !self.delay.is_zero() {
            t = t.set_delay(self.delay);
        }
        for (k, v) in &self.headers {
            t = t.insert_header(k.as_str(), v.as_str());
        }
        t
    }
}

/// Answers from a script, then a fallback; records each request body, the
/// bearer it carried and the whole exchange.
struct Scripted {
    script: Mutex<VecDeque<Reply>>,
    fallback: Reply,
    log: Recorded,
    bearers: Arc<Mutex<Vec<String>>>,
    transcript: Arc<Mutex<Vec<Exchange>>>,
}

impl Respond for Scripted {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let bearer = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.bearers.lock().unwrap_or_else(|p| p.into_inner()).push(bearer.to_owned());
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), body));
        let reply = self
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or_else(|| self.fallback.clone());
        self.transcript.lock().unwrap_or_else(|p| p.into_inner()).push(Exchange {
            check: None,
            method: request.method.to_string(),
            path: request.url.path().to_owned(),
            request_headers: request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            request_body: Some(String::from_utf8_lossy(&request.body).into_owned()),
            status: reply.status,
            response_headers: reply.headers.clone(),
            response_body: reply.transcript_body(),
        });
        reply.template()
    }
}

/// The runtime token a renewal hands out.
pub const RENEWED_RUNTIME_TOKEN: &str = "oprt.v1.kmock.FIXTURE-mock-renewed-runtime-token-not-a-secret";

/// The mock platform speaks plain HTTP on loopback, where the agent does not
/// present a certificate: these stand in for the PEM the contract carries.
pub const MOCK_CERTIFICATE_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nFIXTURE-mock-agent-certificate\n-----END CERTIFICATE-----\n";
pub const MOCK_CA_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nFIXTURE-mock-platform-ca\n-----END CERTIFICATE-----\n";

pub fn enrolled_response() -> Reply {
    enrolled_response_for(chrono::Duration::hours(24))
}

/// An enrollment whose runtime token lives for `lifetime`.
pub fn enrolled_response_for(lifetime: chrono::Duration) -> Reply {
    let now = chrono::Utc::now();
    let ids = |n: u128| uuid::Uuid::from_u128(n).to_string();
    Reply::json(
        201,
        json!({
            "agent": {"agent_id": AGENT_ID, "tenant_id": "tenant-mock", "collector_id": ids(2), "asset_id": ids(3), "status": "enrolled",
                      "enrollment_token_id": ids(4), "certificate_id": ids(5), "enrolled_at": now},
            "certificate": {"certificate_id": ids(5), "agent_id": AGENT_ID, "public_key_algorithm": "ecdsa-p256", "public_key_sha256": "ab".repeat(32),
                            "subject": "CN=mock", "not_before": now, "not_after": now + chrono::Duration::days(365), "status": "active"},
            "certificate_pem": MOCK_CERTIFICATE_PEM,
            "ca_chain_pem": MOCK_CA_PEM,
            "runtime_token": {"token": RUNTIME_TOKEN, "token_type": "Bearer", "scope": "agent_heartbeat", "expires_at": now + lifetime, "key_id": "kmock"}
        }),
    )
}

/// An enrollment whose certificate lives for `lifetime` (its runtime token a day).
pub fn enrolled_response_with_certificate_for(lifetime: chrono::Duration) -> Reply {
    let mut reply = enrolled_response();
    let now = chrono::Utc::now();
    reply.body["certificate"]["not_before"] = json!(now);
    reply.body["certificate"]["not_after"] = json!(now + lifetime);
    reply
}

/// Makes `mock` answer the exchange with a certificate valid for `lifetime`
/// from the moment the exchange arrives.
pub async fn certificate_lifetime_from_exchange(mock: &MockPlatform, lifetime: chrono::Duration) {
    struct FromExchange(chrono::Duration);
    impl Respond for FromExchange {
        fn respond(&self, _: &Request) -> ResponseTemplate {
            enrolled_response_with_certificate_for(self.0).template()
        }
    }
    Mock::given(method("POST"))
        .and(path("/api/v1/agent-enrollment/exchange"))
        .respond_with(FromExchange(lifetime))
        .with_priority(1)
        .mount(&mock.server)
        .await;
}

/// A rotation's answer: a new certificate record and runtime token.
pub fn rotated_response() -> Reply {
    let now = chrono::Utc::now();
    Reply::json(
        200,
        json!({
            "certificate": {"certificate_id": uuid::Uuid::from_u128(6).to_string(), "agent_id": AGENT_ID, "public_key_algorithm": "ecdsa-p256", "public_key_sha256": "cd".repeat(32),
                            "subject": "CN=mock", "not_before": now, "not_after": now + chrono::Duration::days(365), "status": "active"},
            "certificate_pem": MOCK_CERTIFICATE_PEM,
            "ca_chain_pem": MOCK_CA_PEM,
            "runtime_token": {"token": RENEWED_RUNTIME_TOKEN, "token_type": "Bearer", "scope": "agent_heartbeat", "expires_at": now + chrono::Duration::hours(24), "key_id": "kmock"}
        }),
    )
}

pub fn accepted() -> Reply {
    Reply::json(
        200,
        json!({"agent_id": AGENT_ID, "status": "active", "accepted_at": chrono::Utc::now(), "duplicate": false}),
    )
}

pub fn problem(status: u16, code: ProblemCode) -> Reply {
    Reply::json(
        status,
        json!({"type": format!("urn:oneprotect:problem:{code}"), "title": code, "status": status, "code": code, "request_id": "mock"}),
    )
}

pub struct MockPlatform {
    pub server: MockServer,
    pub exchanges: Recorded,
    pub heartbeats: Recorded,
    /// The bearer of each heartbeat, in order.
    pub heartbeat_bearers: Arc<Mutex<Vec<String>>>,
    pub rotations: Recorded,
    transcript: Arc<Mutex<Vec<Exchange>>>,
    recorder: Recorder,
}

/// Every request the agent sent and the mock's answer go to the check's
/// transcript when the mock goes away.
impl Drop for MockPlatform {
    fn drop(&mut self) {
        let exchanges = std::mem::take(&mut *self.transcript.lock().unwrap_or_else(|p| p.into_inner()));
        self.recorder.record(exchanges);
    }
}

impl MockPlatform {
    pub fn heartbeat_bearers(&self) -> Vec<String> {
        self.heartbeat_bearers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn bodies(recorded: &Recorded) -> Vec<Value> {
        recorded.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, b)| b.clone()).collect()
    }
}

pub async fn mock_platform(
    recorder: Recorder,
    exchange: Vec<Reply>,
    heartbeat: Vec<Reply>,
    heartbeat_fallback: Reply,
) -> MockPlatform {
    mock_platform_enrolling(recorder, exchange, enrolled_response(), heartbeat, heartbeat_fallback).await
}

/// As `mock_platform`, with the enrollment answer given once the script is spent.
pub async fn mock_platform_enrolling(
    recorder: Recorder,
    exchange: Vec<Reply>,
    enrolled: Reply,
    heartbeat: Vec<Reply>,
    heartbeat_fallback: Reply,
) -> MockPlatform {
    let server = MockServer::start().await;
    let exchanges: Recorded = Arc::default();
    let heartbeats: Recorded = Arc::default();
    let rotations: Recorded = Arc::default();
    let heartbeat_bearers: Arc<Mutex<Vec<String>>> = Arc::default();
    let transcript: Arc<Mutex<Vec<Exchange>>> = Arc::default();
    let scripted =
        |script: Vec<Reply>, fallback: Reply, log: &Recorded, bearers: Arc<Mutex<Vec<String>>>| Scripted {
            script: Mutex::new(script.into()),
            fallback,
            log: log.clone(),
            bearers,
            transcript: transcript.clone(),
        };
    Mock::given(method("POST"))
        .and(path("/api/v1/agent-enrollment/exchange"))
        .respond_with(scripted(exchange, enrolled, &exchanges, Arc::default()))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/api/v1/agents/[^/]+/telemetry/heartbeat$"))
        .respond_with(scripted(heartbeat, heartbeat_fallback, &heartbeats, heartbeat_bearers.clone()))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/api/v1/agents/[^/]+/certificate/rotate$"))
        .respond_with(scripted(vec![], rotated_response(), &rotations, Arc::default()))
        .mount(&server)
        .await;
    MockPlatform { server, exchanges, heartbeats, heartbeat_bearers, rotations, transcript, recorder }
}

/// Waits (bounded) until `condition` holds.
pub async fn wait_until(within: Duration, what: &str, condition: impl Fn() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > within {
            return Err(format!("{what} within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits (bounded) until `recorded` holds at least `n` requests.
pub async fn wait_for(recorded: &Recorded, n: usize, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    while recorded.lock().unwrap_or_else(|p| p.into_inner()).len() < n {
        if start.elapsed() > within {
            return Err(format!("expected {n} requests within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub struct AgentRun {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    bin: PathBuf,
    fault: Option<String>,
}

impl AgentRun {
    pub fn new(bin: &Path, platform_url: &str) -> Result<Self, String> {
        Self::with_interval(bin, platform_url, 1)
    }

    /// An agent that heartbeats every `interval_seconds`.
    pub fn with_interval(bin: &Path, platform_url: &str, interval_seconds: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let state = dir.path().join("state");
        let config = dir.path().join("agent.yaml");
        let text = format!(
            "# conformance fixture config\nplatform_url: {platform_url}\nenrollment_token: {ENROLLMENT_TOKEN}\nstate_dir: {}\nheartbeat_interval: {interval_seconds}\nlog_level: trace\n",
            state.display()
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        Ok(Self { dir, config, state, bin: bin.to_path_buf(), fault: None })
    }

    /// Adds `line` (a `key: value` setting) to the agent's configuration.
    pub fn with_setting(self, line: &str) -> Result<Self, String> {
        let mut text = std::fs::read_to_string(&self.config).map_err(|e| e.to_string())?;
        text.push_str(line);
        text.push('\n');
        std::fs::write(&self.config, text).map_err(|e| e.to_string())?;
        Ok(self)
    }

    /// Runs a fault-injection build of the agent with one fault chosen
    /// (the harness's self-test only).
    pub fn with_fault(mut self, fault: Option<&str>) -> Self {
        self.fault = fault.map(str::to_owned);
        self
    }

    pub fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(&self.config).arg(sub).stdout(Stdio::piped()).stderr(Stdio::piped());
        match &self.fault {
            Some(f) => c.env("OPAGENT_FAULT_INJECTION", f),
            None => c.env_remove("OPAGENT_FAULT_INJECTION"),
        };
        c
    }

    /// The sequence the agent last persisted.
    pub fn persisted_sequence(&self) -> Option<u64> {
        std::fs::read_to_string(self.state.join("sequence")).ok().and_then(|t| t.trim().parse().ok())
    }

    /// Runs a command to completion (bounded), returning exit status and output.
    pub fn run_to_end(&self, sub: &str) -> Result<(Option<i32>, String), String> {
        let child = self.command(sub).spawn().map_err(|e| format!("cannot start the agent: {e}"))?;
        let mut p = Process(child);
        let status = p.wait_exit(DEADLINE).ok_or("the agent did not finish in time")?;
        Ok((status.code(), p.output()))
    }

    pub fn spawn(&self, sub: &str) -> Result<Process, String> {
        self.command(sub).spawn().map(Process).map_err(|e| format!("cannot start the agent: {e}"))
    }
}

/// A child process, killed by its own pid when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn output(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut s) = self.0.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = self.0.stderr.take() {
            let _ = s.read_to_string(&mut out);
        }
        out
    }

    /// The highest resident set size the process has reached (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Result<u64, String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .map_err(|e| format!("cannot read the agent's memory use: {e}"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or("no VmHWM in /proc/<pid>/status")?;
        Ok(kib * 1024)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    pub fn terminate(&self) -> Result<(), String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() { Ok(()) } else { Err("kill -TERM failed".into()) }
    }
}

/// A mock platform CA, and a TLS front that terminates the agent's TLS
/// (asking for a client certificate verified against that CA), records the
/// certificate each connection presented, and passes the bytes to the
/// plain-HTTP mock.
pub struct TlsFront {
    pub url: String,
    pub ca: Arc<oneprotect_server::pki::PlatformCa>,
    /// The CA chain as a file, for the agent's `ca_bundle`.
    pub ca_file: PathBuf,
    /// The client certificate (DER) of each accepted connection, in order.
    pub presented: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    _dir: tempfile::TempDir,
    /// Ends the front's thread when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TlsFront {
    pub fn presented(&self) -> Vec<Option<Vec<u8>>> {
        self.presented.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Starts a TLS front for `mock` and makes its exchange answer certify the
/// agent's CSR key with the front's CA (as the real platform does).
pub async fn tls_front(mock: &MockPlatform) -> Result<TlsFront, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ca = Arc::new(oneprotect_server::pki::PlatformCa::generate(
        "OneProtect conformance mock CA (fixture)",
        oneprotect_server::pki::DEFAULT_TRUST_DOMAIN,
        chrono::Utc::now() - chrono::Duration::days(1),
    )?);
    let ca_file = dir.path().join("mock-ca.pem");
    std::fs::write(&ca_file, ca.chain_pem()).map_err(|e| e.to_string())?;
    let files = oneprotect_server::tls::development_server_files(dir.path(), &ca, chrono::Utc::now())?;
    let config = oneprotect_server::tls::server_config(
        &files,
        Some(&ca),
        Arc::new(oneprotect_server::clock::SystemClock),
    )?;
    Mock::given(method("POST"))
        .and(path("/api/v1/agent-enrollment/exchange"))
        .respond_with(Certifying { ca: ca.clone() })
        .with_priority(1)
        .mount(&mock.server)
        .await;
    let backend = *mock.server.address();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let url = format!("https://127.0.0.1:{}", listener.local_addr().map_err(|e| e.to_string())?.port());
    let presented: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
    let seen = presented.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // A thread and runtime of its own, as wiremock's server has: checks block
    // their worker while an agent command runs, and the front must still answer.
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let accepting = async {
                while let Ok((stream, _)) = listener.accept().await {
                    let (acceptor, seen) = (acceptor.clone(), seen.clone());
                    tokio::spawn(async move {
                        let Ok(Ok(mut tls)) = tokio::time::timeout(DEADLINE, acceptor.accept(stream)).await
                        else {
                            return;
                        };
                        let certificate = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.as_ref().to_vec());
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(certificate);
                        if let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                        }
                    });
                }
            };
            tokio::select! {
                () = accepting => {}
                _ = stopped => {}
            }
        });
    });
    Ok(TlsFront { url, ca, ca_file, presented, _dir: dir, _stop: stop })
}

/// The exchange answered as the platform answers it: a certificate the CA
/// issued for the key of the CSR the agent sent.
struct Certifying {
    ca: Arc<oneprotect_server::pki::PlatformCa>,
}

impl Respond for Certifying {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let issued = body["csr_pem"]
            .as_str()
            .and_then(|csr| oneprotect_server::csr::verify_csr_pem(csr).ok())
            .and_then(|csr| {
                let agent = uuid::Uuid::parse_str(AGENT_ID).ok()?;
                self.ca.issue(&csr, "tenant-mock", agent, chrono::Utc::now(), chrono::Duration::days(30)).ok()
            });
        let Some(issued) = issued else { return problem(400, ProblemCode::CsrInvalid).template() };
        let mut answer = enrolled_response().body;
        answer["certificate_pem"] = Value::String(issued.pem);
        answer["ca_chain_pem"] = Value::String(self.ca.chain_pem().to_owned());
        answer["certificate"]["serial_number"] = Value::String(issued.serial_hex);
        answer["certificate"]["certificate_sha256"] = Value::String(issued.sha256);
        Reply::json(201, answer).template()
    }
}
