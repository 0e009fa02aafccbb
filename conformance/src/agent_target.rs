//! The `agent` target: the agent binary against a scripted mock platform
//! (`wiremock`) on loopback. Every request the agent sends is recorded with
//! its arrival time; every wait is bounded.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const AGENT_ID: &str = "5a1c0f6e-3b2d-4c8e-9f70-112233445566";
pub const RUNTIME_TOKEN: &str = "oprt.v1.kmock.FIXTURE-mock-runtime-token-not-a-secret-0000";
pub const ENROLLMENT_TOKEN: &str = "opet_00112233445566778899aabbccddeeff_FIXTURE-mock-enrollment-token-00000000";
pub const DEADLINE: Duration = Duration::from_secs(20);

pub type Recorded = Arc<Mutex<Vec<(Instant, Value)>>>;

/// Answers from a script, then a fallback; records each request body and
/// the bearer it carried.
struct Scripted {
    script: Mutex<VecDeque<ResponseTemplate>>,
    fallback: ResponseTemplate,
    log: Recorded,
    bearers: Arc<Mutex<Vec<String>>>,
}

impl Respond for Scripted {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let bearer = request.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
        self.bearers.lock().unwrap_or_else(|p| p.into_inner()).push(bearer.to_owned());
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), body));
        self.script.lock().unwrap_or_else(|p| p.into_inner()).pop_front().unwrap_or_else(|| self.fallback.clone())
    }
}

/// The runtime token a renewal hands out.
pub const RENEWED_RUNTIME_TOKEN: &str = "oprt.v1.kmock.FIXTURE-mock-renewed-runtime-token-not-a-secret";

pub fn enrolled_response() -> ResponseTemplate {
    enrolled_response_for(chrono::Duration::hours(24))
}

/// An enrollment whose runtime token lives for `lifetime`.
pub fn enrolled_response_for(lifetime: chrono::Duration) -> ResponseTemplate {
    let now = chrono::Utc::now();
    let ids = |n: u128| uuid::Uuid::from_u128(n).to_string();
    ResponseTemplate::new(201).set_body_json(json!({
        "agent": {"agent_id": AGENT_ID, "tenant_id": "tenant-mock", "collector_id": ids(2), "asset_id": ids(3), "status": "enrolled",
                  "enrollment_token_id": ids(4), "certificate_id": ids(5), "enrolled_at": now},
        "certificate": {"certificate_id": ids(5), "agent_id": AGENT_ID, "public_key_algorithm": "ecdsa-p256", "public_key_sha256": "ab".repeat(32),
                        "subject": "CN=mock", "not_before": now, "not_after": now + chrono::Duration::days(365), "status": "active"},
        "runtime_token": {"token": RUNTIME_TOKEN, "token_type": "Bearer", "scope": "agent_heartbeat", "expires_at": now + lifetime, "key_id": "kmock"}
    }))
}

/// A rotation's answer: a new certificate record and runtime token.
pub fn rotated_response() -> ResponseTemplate {
    let now = chrono::Utc::now();
    ResponseTemplate::new(200).set_body_json(json!({
        "certificate": {"certificate_id": uuid::Uuid::from_u128(6).to_string(), "agent_id": AGENT_ID, "public_key_algorithm": "ecdsa-p256", "public_key_sha256": "cd".repeat(32),
                        "subject": "CN=mock", "not_before": now, "not_after": now + chrono::Duration::days(365), "status": "active"},
        "runtime_token": {"token": RENEWED_RUNTIME_TOKEN, "token_type": "Bearer", "scope": "agent_heartbeat", "expires_at": now + chrono::Duration::hours(24), "key_id": "kmock"}
    }))
}

pub fn accepted() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"agent_id": AGENT_ID, "status": "active", "accepted_at": chrono::Utc::now(), "duplicate": false}))
}

pub fn problem(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"type": format!("urn:oneprotect:problem:{code}"), "title": code, "status": status, "code": code, "request_id": "mock"}))
}

pub struct MockPlatform {
    pub server: MockServer,
    pub exchanges: Recorded,
    pub heartbeats: Recorded,
    /// The bearer of each heartbeat, in order.
    pub heartbeat_bearers: Arc<Mutex<Vec<String>>>,
    pub rotations: Recorded,
}

impl MockPlatform {
    pub fn heartbeat_bearers(&self) -> Vec<String> {
        self.heartbeat_bearers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn bodies(recorded: &Recorded) -> Vec<Value> {
        recorded.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, b)| b.clone()).collect()
    }
}

pub async fn mock_platform(exchange: Vec<ResponseTemplate>, heartbeat: Vec<ResponseTemplate>, heartbeat_fallback: ResponseTemplate) -> MockPlatform {
    mock_platform_enrolling(exchange, enrolled_response(), heartbeat, heartbeat_fallback).await
}

/// As `mock_platform`, with the enrollment answer given once the script is spent.
pub async fn mock_platform_enrolling(
    exchange: Vec<ResponseTemplate>,
    enrolled: ResponseTemplate,
    heartbeat: Vec<ResponseTemplate>,
    heartbeat_fallback: ResponseTemplate,
) -> MockPlatform {
    let server = MockServer::start().await;
    let exchanges: Recorded = Arc::default();
    let heartbeats: Recorded = Arc::default();
    let rotations: Recorded = Arc::default();
    let heartbeat_bearers: Arc<Mutex<Vec<String>>> = Arc::default();
    Mock::given(method("POST"))
        .and(path("/api/v1/agent-enrollment/exchange"))
        .respond_with(Scripted { script: Mutex::new(exchange.into()), fallback: enrolled, log: exchanges.clone(), bearers: Arc::default() })
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/api/v1/agents/[^/]+/telemetry/heartbeat$"))
        .respond_with(Scripted {
            script: Mutex::new(heartbeat.into()),
            fallback: heartbeat_fallback,
            log: heartbeats.clone(),
            bearers: heartbeat_bearers.clone(),
        })
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/api/v1/agents/[^/]+/certificate/rotate$"))
        .respond_with(Scripted { script: Mutex::new(VecDeque::new()), fallback: rotated_response(), log: rotations.clone(), bearers: Arc::default() })
        .mount(&server)
        .await;
    MockPlatform { server, exchanges, heartbeats, heartbeat_bearers, rotations }
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

    pub fn terminate(&self) -> Result<(), String> {
        let status = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().map_err(|e| e.to_string())?;
        if status.success() { Ok(()) } else { Err("kill -TERM failed".into()) }
    }
}
