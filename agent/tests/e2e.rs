//! The agent binary against the real server binary on SQLite, both started
//! here on loopback. Every wait is bounded and polls for an observable
//! event (an HTTP answer, a process exit), never for time to pass.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN_SECRET: &str = "fixture-admin-jwt-secret-for-agent-e2e-000000";
const HASH_KEY: &str = "fixture-token-hash-key-for-agent-e2e-00000000";
const RUNTIME_SECRET: &str = "fixture-runtime-secret-for-agent-e2e-0000000";
const TENANT: &str = "tenant-e2e";
const DEADLINE: Duration = Duration::from_secs(30);

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// The server binary of this workspace, built if a partial build left it out.
fn server_binary() -> PathBuf {
    let bin = target_dir().join(format!("oneprotect-server{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "oneprotect-server", "--bin", "oneprotect-server"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building oneprotect-server failed");
    }
    bin
}

fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_oneprotect-agent"))
}

/// A child process killed (by its own pid) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stderr(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut out);
        }
        out
    }

    fn signal_term(&self) {
        let status = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
}

struct Server {
    _process: Process,
    base: String,
    admin: String,
    http: reqwest::blocking::Client,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A fixture platform CA (PEM certificate and PKCS#8 key files) beside `db`,
/// and a server certificate it signed for 127.0.0.1 (`fixture-server.pem`,
/// `.key`); made once per directory and reused by a restarted server.
fn fixture_ca(db: &Path) -> (PathBuf, PathBuf) {
    let dir = db.parent().expect("the database has a directory");
    let (cert, key) = (dir.join("fixture-ca.pem"), dir.join("fixture-ca.key"));
    if !cert.exists() {
        let key_pair = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, "OneProtect e2e CA (fixture)");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key_pair).expect("CA certificate");
        std::fs::write(&cert, ca.pem()).expect("write CA certificate");
        std::fs::write(&key, key_pair.serialize_pem()).expect("write CA key");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::new(params, &key_pair);
        let server_cert = server.signed_by(&server_key, &issuer).expect("server certificate");
        std::fs::write(dir.join("fixture-server.pem"), server_cert.pem()).expect("write server certificate");
        std::fs::write(dir.join("fixture-server.key"), server_key.serialize_pem()).expect("write server key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
    (cert, key)
}

fn start_server(db: &Path) -> Server {
    start_server_with(db, false)
}

/// The server binary on `db`; with `tls`, it serves HTTPS with the fixture
/// server certificate and authenticates agents by mutual TLS (its default).
fn start_server_with(db: &Path, tls: bool) -> Server {
    let port = free_port();
    let (ca_cert, ca_key) = fixture_ca(db);
    let dir = db.parent().expect("directory");
    let mut command = Command::new(server_binary());
    if tls {
        command
            .env("ONEPROTECT_TLS_CERT_FILE", dir.join("fixture-server.pem"))
            .env("ONEPROTECT_TLS_KEY_FILE", dir.join("fixture-server.key"));
    }
    let child = command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url"])
        .arg(db)
        .env("ONEPROTECT_CA_CERT_FILE", &ca_cert)
        .env("ONEPROTECT_CA_KEY_FILE", &ca_key)
        .env("ONEPROTECT_ADMIN_JWT_SECRET", ADMIN_SECRET)
        .env("ONEPROTECT_TOKEN_HASH_KEY", HASH_KEY)
        .env("ONEPROTECT_AGENT_RUNTIME_TOKEN_SECRET", RUNTIME_SECRET)
        .env("ONEPROTECT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let process = Process(child);
    let base = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
    let http = if tls {
        let pem = std::fs::read(&ca_cert).expect("CA");
        reqwest::blocking::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA PEM")])
            .build()
            .expect("client")
    } else {
        reqwest::blocking::Client::new()
    };
    let start = Instant::now();
    while http.get(format!("{base}/readyz")).send().map(|r| !r.status().is_success()).unwrap_or(true) {
        assert!(start.elapsed() < DEADLINE, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = Command::new(server_binary())
        .args(["admin-token", "--tenant", TENANT])
        .env("ONEPROTECT_ADMIN_JWT_SECRET", ADMIN_SECRET)
        .output()
        .expect("admin-token");
    let admin = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
    Server { _process: process, base, admin, http }
}

impl Server {
    fn issue_token(&self) -> String {
        let v: Value = self
            .http
            .post(format!("{}/api/v1/agent-enrollment/tokens", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({"ttl_seconds": 600, "max_uses": 1, "label": "e2e"}))
            .send()
            .expect("issue")
            .json()
            .expect("json");
        v["enrollment_token"].as_str().expect("secret").to_owned()
    }

    fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .expect("get")
            .json()
            .expect("json")
    }

    fn wait_for(&self, what: &str, mut check: impl FnMut(&Server) -> bool) {
        let start = Instant::now();
        while !check(self) {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct AgentFiles {
    dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
}

fn agent_files(base: &str, token: &str) -> AgentFiles {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!("# OneProtect agent (e2e fixture)\nplatform_url: {base}\nenrollment_token: {token}\nstate_dir: {}\nheartbeat_interval: 1\nlog_level: trace # everything\n", state.display()),
    )
    .expect("config");
    AgentFiles { dir, config, state }
}

fn agent(files: &AgentFiles, command: &str) -> Command {
    let mut c = Command::new(agent_binary());
    c.arg("--config").arg(&files.config).arg(command).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn enroll(files: &AgentFiles) -> String {
    let out = agent(files, "enroll").output().expect("enroll");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "enroll failed: {stderr}");
    stderr
}

fn secrets_of(files: &AgentFiles, token: &str) -> Vec<String> {
    let mut secrets = vec![token.to_owned()];
    secrets
        .push(std::fs::read_to_string(files.state.join("runtime.token")).expect("token").trim().to_owned());
    let key = std::fs::read_to_string(files.state.join("agent.key")).expect("key");
    secrets.extend(key.lines().filter(|l| !l.starts_with("-----") && l.len() > 16).map(str::to_owned));
    secrets
}

fn assert_no_secret(logs: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!logs.contains(s.as_str()), "a secret appeared in the agent's trace-level logs");
    }
    assert!(
        !logs.contains("PRIVATE KEY")
            && !logs.contains("CERTIFICATE REQUEST")
            && !logs.to_ascii_lowercase().contains("bearer "),
        "no key, CSR or bearer in logs"
    );
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn enroll_heartbeat_list_active_then_revocation_stops_the_agent_with_the_403_code() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = start_server(&tmp.path().join("platform.db"));
    let token = server.issue_token();
    let files = agent_files(&server.base, &token);
    let enroll_logs = enroll(&files);

    let config = std::fs::read_to_string(&files.config).expect("config");
    assert!(
        !config.contains(&token) && !config.contains("enrollment_token"),
        "the token is removed from the config"
    );
    assert!(
        config.contains("# OneProtect agent (e2e fixture)")
            && config.contains("log_level: trace # everything"),
        "comments and other keys are kept"
    );
    #[cfg(unix)]
    for f in ["identity.json", "agent.key", "runtime.token", "certificate.json", "sequence"] {
        assert_eq!(mode(&files.state.join(f)), 0o600, "{f}");
    }
    let again = agent(&files, "enroll").output().expect("enroll");
    assert_eq!(again.status.code(), Some(2), "enrolling twice without --force refuses");

    let status = Command::new(agent_binary())
        .arg("--config")
        .arg(&files.config)
        .arg("status")
        .output()
        .expect("status");
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    let secrets = secrets_of(&files, &token);
    assert_no_secret(&status_text, &secrets);
    let identity: Value = serde_json::from_str(&status_text).expect("status json");
    let agent_id = identity["identity"]["agent_id"].as_str().expect("agent id").to_owned();

    let mut running = Process(agent(&files, "run").spawn().expect("run"));
    server.wait_for("two heartbeats", |s| {
        s.get("/api/v1/events?limit=200")["items"]
            .as_array()
            .is_some_and(|e| e.iter().filter(|e| e["type"] == "asset.telemetry.received").count() >= 2)
    });
    let listed = server.get(&format!("/api/v1/agents/{agent_id}"));
    assert_eq!(listed["status"], "active");
    let status = Command::new(agent_binary())
        .arg("--config")
        .arg(&files.config)
        .arg("status")
        .output()
        .expect("status");
    let status: Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert!(
        status["last_accepted_heartbeat"]["sequence"].as_u64().is_some_and(|s| s >= 1),
        "status shows the last accepted heartbeat: {status}"
    );
    assert!(status["last_accepted_heartbeat"]["accepted_at"].is_string(), "{status}");
    assert_eq!(listed["hostname"].as_str(), sysinfo_hostname().as_deref());

    let revoke = server
        .http
        .post(format!("{}/api/v1/agents/{agent_id}/revoke", server.base))
        .bearer_auth(&server.admin)
        .json(&json!({"reason": "e2e"}))
        .send()
        .expect("revoke");
    assert!(revoke.status().is_success());
    let exit = running.wait_exit(DEADLINE).expect("the agent stops after revocation");
    assert_eq!(exit.code(), Some(4), "403 → exit code 4");
    assert!(
        files.state.join("agent.key").exists() && files.state.join("identity.json").exists(),
        "files are kept"
    );
    let run_logs = running.stderr();
    assert!(run_logs.contains("TRACE") || run_logs.contains("DEBUG"), "the agent logged at trace level");
    assert_no_secret(&format!("{enroll_logs}{run_logs}"), &secrets);
    drop(files.dir);
}

#[test]
fn under_mutual_tls_the_agent_heartbeats_by_its_certificate_kept_owner_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("platform.db");
    let server = start_server_with(&db, true);
    let token = server.issue_token();
    let files = agent_files(&server.base, &token);
    let ca = tmp.path().join("fixture-ca.pem");
    let mut config = std::fs::read_to_string(&files.config).expect("config");
    config.push_str(&format!("ca_bundle: {}\n", ca.display()));
    std::fs::write(&files.config, config).expect("config");
    enroll(&files);
    #[cfg(unix)]
    for f in ["agent.key", "agent.pem", "ca-chain.pem", "certificate.json", "runtime.token"] {
        assert_eq!(mode(&files.state.join(f)), 0o600, "{f}");
    }
    let status = agent(&files, "status").stdout(Stdio::piped()).output().expect("status");
    let status: Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status["certificate"]["serial_number"].as_str().map(str::len), Some(32), "{status}");
    assert_eq!(status["certificate"]["sha256"].as_str().map(str::len), Some(64), "{status}");
    assert!(status["certificate"]["not_after"].is_string(), "{status}");
    let agent_id = status["identity"]["agent_id"].as_str().expect("agent").to_owned();

    // The runtime token alone is refused: only the certificate authenticates.
    let runtime = std::fs::read_to_string(files.state.join("runtime.token")).expect("token");
    let refused = server
        .http
        .post(format!("{}/api/v1/agents/{agent_id}/telemetry/heartbeat", server.base))
        .bearer_auth(runtime.trim())
        .json(&json!({"sequence": 1000, "collected_at": "2026-11-22T10:00:00Z", "hostname": "h", "agent_version": "0.1.0"}))
        .send()
        .expect("send");
    assert_eq!(refused.status().as_u16(), 401);

    let mut running = Process(agent(&files, "run").spawn().expect("run"));
    server.wait_for("two heartbeats over mutual TLS", |s| {
        s.get("/api/v1/events?limit=200")["items"]
            .as_array()
            .is_some_and(|e| e.iter().filter(|e| e["type"] == "asset.telemetry.received").count() >= 2)
    });
    assert_eq!(server.get(&format!("/api/v1/agents/{agent_id}"))["status"], "active");
    running.signal_term();
    let exit = running.wait_exit(DEADLINE).expect("stops");
    assert_eq!(exit.code(), Some(0));
}

fn sysinfo_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned())
}

#[test]
fn a_wiped_server_database_makes_the_running_agent_exit_with_the_401_code() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let token;
    let files;
    {
        let server = start_server(&tmp.path().join("first.db"));
        token = server.issue_token();
        files = agent_files(&server.base, &token);
        enroll(&files);
    }
    // Same secrets, empty database, same port is not needed: point the agent at the new server.
    let server = start_server(&tmp.path().join("wiped.db"));
    let config = std::fs::read_to_string(&files.config).expect("config");
    let rewritten: String = config
        .lines()
        .map(|l| {
            if l.starts_with("platform_url:") {
                format!("platform_url: {}\n", server.base)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&files.config, rewritten).expect("config");
    let mut running = Process(agent(&files, "run").spawn().expect("run"));
    let exit = running.wait_exit(DEADLINE).expect("the agent stops");
    assert_eq!(exit.code(), Some(3), "401 identity unknown → exit code 3");
    let logs = running.stderr();
    assert_no_secret(&logs, &secrets_of(&files, &token));
}

#[test]
fn sigterm_stops_the_agent_with_exit_0_within_two_seconds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = start_server(&tmp.path().join("platform.db"));
    let token = server.issue_token();
    let files = agent_files(&server.base, &token);
    enroll(&files);
    let mut running = Process(agent(&files, "run").spawn().expect("run"));
    server.wait_for("a heartbeat", |s| s.get("/api/v1/agents")["items"][0]["status"] == "active");
    let sent = Instant::now();
    running.signal_term();
    let exit = running.wait_exit(Duration::from_secs(2)).expect("the agent exits within 2 s of SIGTERM");
    assert_eq!(exit.code(), Some(0));
    assert!(sent.elapsed() < Duration::from_secs(2));
}

#[test]
fn collect_prints_one_sample_that_validates_against_the_contract() {
    let out = Command::new(agent_binary()).arg("collect").output().expect("collect");
    assert_eq!(out.status.code(), Some(0));
    let sample: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        oneprotect_contracts::contract::validate_schema("AgentHeartbeatTelemetryRequest", &sample),
        Ok(())
    );
    assert!(sample["cpu_count"].as_u64().unwrap_or(0) >= 1);
    assert!(sample["memory_total_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(!sample["disks"].as_array().map(Vec::is_empty).unwrap_or(true));
    assert!(!sample["network_interfaces"].as_array().map(Vec::is_empty).unwrap_or(true));
}

#[test]
fn a_token_file_is_deleted_after_enrollment_and_a_bad_config_exits_with_the_config_code() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = start_server(&tmp.path().join("platform.db"));
    let token = server.issue_token();
    let files = agent_files(&server.base, "");
    let token_file = files.dir.path().join("token");
    std::fs::write(&token_file, &token).expect("token file");
    let out = Command::new(agent_binary())
        .arg("--config")
        .arg(&files.config)
        .args(["enroll", "--token-file"])
        .arg(&token_file)
        .output()
        .expect("enroll");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!token_file.exists(), "the token file is deleted");
    std::fs::write(&files.config, "platform_url: http://192.0.2.10:8080\n").expect("config");
    let out =
        Command::new(agent_binary()).arg("--config").arg(&files.config).arg("run").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("platform_url"), "the error names the key");
}

#[test]
fn a_refused_enrollment_exits_with_the_enrollment_code_and_keeps_the_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = start_server(&tmp.path().join("platform.db"));
    let fake = format!("opet_{}_{}", "0".repeat(32), "A".repeat(43));
    let files = agent_files(&server.base, &fake);
    let out = agent(&files, "enroll").output().expect("enroll");
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("enrollment_token_invalid"));
    assert!(
        std::fs::read_to_string(&files.config).expect("config").contains("enrollment_token"),
        "a failed enrollment keeps the token"
    );
    assert!(!files.state.join("identity.json").exists());
}

/// A TLS listener on loopback for `localhost` with a fresh self-signed
/// certificate, counting the handshakes that completed (a completed one
/// would mean the agent trusted it and could send its token). Returns the
/// port and the counter.
fn untrusted_tls_platform() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("fixture certificate");
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = completed.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((socket, _)) = listener.accept().await {
                if acceptor.accept(socket).await.is_ok() {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
    });
    (port, completed)
}

#[test]
fn enrolling_against_a_platform_certificate_the_ca_bundle_does_not_trust_exits_2_at_once() {
    let (port, completed) = untrusted_tls_platform();
    let token = format!("opet_{}_{}", "0".repeat(32), "B".repeat(43));
    let files = agent_files(&format!("https://localhost:{port}"), &token);
    // The bundle is another CA: the platform's certificate cannot verify.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("fixture CA");
    let bundle = files.dir.path().join("ca.pem");
    std::fs::write(&bundle, other.cert.pem()).expect("bundle");
    let mut config = std::fs::read_to_string(&files.config).expect("config");
    config.push_str(&format!("ca_bundle: {}\n", bundle.display()));
    std::fs::write(&files.config, config).expect("config");

    let started = Instant::now();
    let out = agent(&files, "enroll").output().expect("enroll");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a certificate that does not verify is a configuration error: {stderr}"
    );
    assert!(stderr.contains(&"certificate verification failed for localhost".to_string()), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "no retries: answered in {:?}", started.elapsed());
    assert_eq!(completed.load(std::sync::atomic::Ordering::SeqCst), 0, "no TLS session was established");
    assert!(std::fs::read_to_string(&files.config).expect("config").contains(&token), "the token is kept");
    assert!(!files.state.join("identity.json").exists());
}
