use oneprotect_contracts::contract::ProblemCode;
use std::time::Duration;

use crate::agent_target::*;

use super::AGENT;
use crate::{Check, Checked, Ctx, Verdict, ensure};

pub(super) const CHECKS: &[Check] = &[
    check!(
        "redaction.agent-files-owner-only",
        Redaction,
        AGENT,
        "the agent's identity, key, certificate, CA chain and runtime token are mode 0600 in a 0700 directory",
        files_owner_only
    ),
    check!(
        "redaction.agent-token-removed-from-config",
        Redaction,
        AGENT,
        "the enrollment token is removed from the config after enrollment",
        token_removed
    ),
    check!(
        "replay.agent-fresh-nonce-per-attempt",
        Replay,
        AGENT,
        "every enrollment attempt of the agent sends a fresh nonce and a fresh CSR",
        fresh_nonce
    ),
    check!(
        "fail-closed.agent-exits-3-on-401",
        FailClosed,
        AGENT,
        "the running agent exits with code 3 when the platform answers 401, keeping its files",
        exit_on_401
    ),
    check!(
        "fail-closed.agent-exits-4-on-403",
        FailClosed,
        AGENT,
        "the running agent exits with code 4 when the platform answers 403",
        exit_on_403
    ),
    check!(
        "fail-closed.agent-honours-retry-after",
        FailClosed,
        AGENT,
        "after 429 with Retry-After the agent waits at least that long, then retries",
        retry_after
    ),
    check!(
        "fail-closed.agent-backs-off-on-5xx",
        FailClosed,
        AGENT,
        "on 5xx the agent retries with growing, bounded delays instead of exiting",
        backoff
    ),
    check!(
        "fail-closed.agent-stops-cleanly-on-sigterm",
        FailClosed,
        AGENT,
        "SIGTERM stops the agent with exit 0 within 2 seconds",
        sigterm
    ),
    check!(
        "fail-closed.agent-stops-at-once-while-waiting",
        FailClosed,
        AGENT,
        "SIGTERM during a long wait between heartbeats stops the agent with exit 0 within a second, consuming no sequence",
        sigterm_while_waiting
    ),
    check!(
        "fail-closed.agent-renews-before-expiry",
        FailClosed,
        AGENT,
        "before its runtime token expires the agent rotates with a fresh nonce and key, then uses the new token, keeps the new key 0600 and restarts cleanly",
        renewal
    ),
    check!(
        "replay.agent-sequence-continues-across-restarts",
        Replay,
        AGENT,
        "after a restart the agent's heartbeat sequence continues above every sequence it sent before",
        sequence_continuity
    ),
    check!(
        "fail-closed.agent-enrollment-honours-retry-after",
        FailClosed,
        AGENT,
        "an enrollment answered 429 with Retry-After is retried no sooner than that, with a fresh nonce",
        enrollment_retry_after
    ),
    check!(
        "fail-closed.agent-refuses-redirects",
        FailClosed,
        AGENT,
        "a heartbeat answered with a redirect to another origin is not followed: nothing, and no credential, reaches that origin, and the agent keeps running",
        refuses_redirects
    ),
    check!(
        "fail-closed.agent-renews-its-certificate-before-expiry",
        FailClosed,
        AGENT,
        "with a day-long runtime token and a 20 s certificate, the agent rotates before the certificate expires",
        certificate_renewal
    ),
    check!(
        "fail-closed.agent-presents-its-certificate",
        FailClosed,
        AGENT,
        "over HTTPS the agent presents the certificate the platform issued for its key at every TLS handshake after enrollment, and keeps it 0600",
        presents_certificate
    ),
    check!(
        "fail-closed.agent-caps-response-bodies",
        FailClosed,
        AGENT,
        "a heartbeat answered with a 32 MiB body is not read whole: the agent's peak memory stays under 16 MiB, it says why, backs off and keeps running",
        caps_response_bodies
    ),
    check!(
        "fail-closed.agent-times-out-a-hung-platform",
        FailClosed,
        AGENT,
        "a heartbeat the platform never answers ends at the configured request_timeout and is retried after a back-off; SIGTERM during a hung request stops the agent with exit 0 within 2 seconds",
        times_out_hung_platform
    ),
    check!(
        "fail-closed.agent-bodies-match-contract",
        FailClosed,
        AGENT,
        "every body the agent sends validates against the contract",
        bodies_match_contract
    ),
    check!(
        "redaction.agent-logs-hold-no-secret",
        Redaction,
        AGENT,
        "the agent's stdout/stderr at trace level contain no token, key, CSR or nonce",
        logs_clean
    ),
];

fn bin(ctx: &Ctx) -> Result<std::path::PathBuf, Verdict> {
    ctx.needs("the agent binary (--agent-bin)", &ctx.local.agent_bin)
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o777)
}
#[cfg(not(unix))]
fn mode(_: &std::path::Path) -> u32 {
    0o600
}

/// An agent configuration against `url`, heartbeating every `interval` seconds.
fn agent_run(ctx: &Ctx, bin: &std::path::Path, url: &str, interval: u64) -> Result<AgentRun, String> {
    Ok(AgentRun::with_interval(bin, url, interval)?.with_fault(ctx.local.agent_fault.as_deref()))
}

/// Enrolls an agent against a mock that accepts at once.
async fn enrolled(
    ctx: &Ctx,
    heartbeat: Vec<Reply>,
    fallback: Reply,
) -> Result<(MockPlatform, AgentRun), Verdict> {
    enrolled_with(ctx, enrolled_response(), 1, heartbeat, fallback).await
}

/// Enrolls an agent (heartbeat every `interval` seconds) with this enrollment answer.
async fn enrolled_with(
    ctx: &Ctx,
    enrollment: Reply,
    interval: u64,
    heartbeat: Vec<Reply>,
    fallback: Reply,
) -> Result<(MockPlatform, AgentRun), Verdict> {
    let bin = bin(ctx)?;
    let platform = mock_platform_enrolling(ctx.recorder(), vec![], enrollment, heartbeat, fallback).await;
    let run = agent_run(ctx, &bin, &platform.server.uri(), interval)?;
    let (code, out) = run.run_to_end("enroll")?;
    if code != Some(0) {
        return Err(Verdict::Fail(format!(
            "enroll exited {code:?}: {}",
            out.lines().last().unwrap_or_default()
        )));
    }
    Ok((platform, run))
}

pub async fn files_owner_only(ctx: &Ctx) -> Checked {
    let (_platform, run) = enrolled(ctx, vec![], accepted()).await?;
    ensure(mode(&run.state) == 0o700, format!("state directory mode {:o}", mode(&run.state)))?;
    for f in [
        "identity.json",
        "agent.key",
        "runtime.token",
        "certificate.json",
        "agent.pem",
        "ca-chain.pem",
        "sequence",
    ] {
        let m = mode(&run.state.join(f));
        ensure(m == 0o600, format!("{f} has mode {m:o}"))?;
    }
    Ok(())
}

pub async fn token_removed(ctx: &Ctx) -> Checked {
    let (_platform, run) = enrolled(ctx, vec![], accepted()).await?;
    let config = std::fs::read_to_string(&run.config).map_err(|e| e.to_string())?;
    ensure(
        !config.contains(ENROLLMENT_TOKEN) && !config.contains("enrollment_token"),
        "the enrollment token is still in the config",
    )?;
    ensure(
        config.contains("# conformance fixture config") && config.contains("heartbeat_interval: 1"),
        "other lines and comments were not kept",
    )
}

pub async fn logs_clean(ctx: &Ctx) -> Checked {
    let bin = bin(ctx)?;
    let platform =
        mock_platform(ctx.recorder(), vec![problem(503, ProblemCode::StoreUnavailable)], vec![], accepted())
            .await;
    let run = agent_run(ctx, &bin, &platform.server.uri(), 1)?;
    let (code, mut logs) = run.run_to_end("enroll")?;
    ensure(code == Some(0), format!("enroll exited {code:?}"))?;
    let mut agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 2, DEADLINE).await?;
    agent.terminate()?;
    agent.wait_exit(Duration::from_secs(5));
    logs.push_str(&agent.output());
    ensure(logs.contains("TRACE") || logs.contains("DEBUG"), "the agent did not log at trace level")?;
    let mut secrets = vec![ENROLLMENT_TOKEN.to_owned(), RUNTIME_TOKEN.to_owned()];
    let key = std::fs::read_to_string(run.state.join("agent.key")).map_err(|e| e.to_string())?;
    secrets.extend(key.lines().filter(|l| !l.starts_with("-----") && l.len() > 16).map(str::to_owned));
    for (_, body) in platform.exchanges.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        secrets.push(body["nonce"].as_str().unwrap_or_default().to_owned());
        secrets.extend(
            body["csr_pem"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 16)
                .map(str::to_owned),
        );
    }
    for s in secrets.iter().filter(|s| s.len() >= 16) {
        ensure(
            !logs.contains(s.as_str()),
            "a secret (token, key, CSR or nonce) appears in the agent's output",
        )?;
    }
    ensure(
        !logs.contains("PRIVATE KEY") && !logs.to_ascii_lowercase().contains("bearer "),
        "a key or bearer appears in the agent's output",
    )
}

pub async fn fresh_nonce(ctx: &Ctx) -> Checked {
    let bin = bin(ctx)?;
    let platform = mock_platform(
        ctx.recorder(),
        vec![problem(503, ProblemCode::StoreUnavailable), problem(502, ProblemCode::InternalError)],
        vec![],
        accepted(),
    )
    .await;
    let run = agent_run(ctx, &bin, &platform.server.uri(), 1)?;
    let (code, _) = run.run_to_end("enroll")?;
    ensure(code == Some(0), format!("enroll exited {code:?} after transient failures"))?;
    let bodies: Vec<serde_json::Value> =
        platform.exchanges.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, b)| b.clone()).collect();
    ensure(bodies.len() == 3, format!("{} exchange attempts, expected 3", bodies.len()))?;
    let nonces: std::collections::BTreeSet<&str> =
        bodies.iter().filter_map(|b| b["nonce"].as_str()).collect();
    let csrs: std::collections::BTreeSet<&str> =
        bodies.iter().filter_map(|b| b["csr_pem"].as_str()).collect();
    ensure(nonces.len() == 3, "a nonce was reused across attempts")?;
    ensure(csrs.len() == 3, "a CSR (key) was reused across attempts")
}

async fn exit_code_on(ctx: &Ctx, status: u16, code: ProblemCode, expected: i32) -> Checked {
    let (platform, run) = enrolled(ctx, vec![], problem(status, code)).await?;
    let mut agent = run.spawn("run")?;
    let exit = agent.wait_exit(DEADLINE).ok_or("the agent kept running")?;
    ensure(exit.code() == Some(expected), format!("exit code {:?}, expected {expected}", exit.code()))?;
    ensure(
        platform.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).len() == 1,
        "the agent retried after a fail-closed answer",
    )?;
    ensure(
        run.state.join("agent.key").exists() && run.state.join("identity.json").exists(),
        "the agent deleted its files",
    )
}

pub async fn exit_on_401(ctx: &Ctx) -> Checked {
    exit_code_on(ctx, 401, ProblemCode::IdentityUnknown, 3).await
}

pub async fn exit_on_403(ctx: &Ctx) -> Checked {
    exit_code_on(ctx, 403, ProblemCode::IdentityRevoked, 4).await
}

fn gaps(recorded: &Recorded) -> Vec<Duration> {
    let r = recorded.lock().unwrap_or_else(|p| p.into_inner());
    r.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

pub async fn retry_after(ctx: &Ctx) -> Checked {
    let (platform, run) = enrolled(
        ctx,
        vec![problem(429, ProblemCode::RateLimited).insert_header("retry-after", "2")],
        accepted(),
    )
    .await?;
    let _agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 2, DEADLINE).await?;
    let g = gaps(&platform.heartbeats)[0];
    ensure(g >= Duration::from_millis(1950), format!("retried after {g:?}, before Retry-After: 2"))?;
    ensure(g <= Duration::from_secs(5), format!("waited {g:?} after Retry-After: 2"))
}

pub async fn backoff(ctx: &Ctx) -> Checked {
    let script = vec![
        problem(503, ProblemCode::StoreUnavailable),
        problem(500, ProblemCode::InternalError),
        problem(503, ProblemCode::StoreUnavailable),
    ];
    let (platform, run) = enrolled(ctx, script, accepted()).await?;
    let mut agent = run.spawn("run")?;
    let started = std::time::Instant::now();
    while platform.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).len() < 4 {
        ensure(agent.0.try_wait().map(|s| s.is_none()).unwrap_or(false), "the agent exited on a 5xx")?;
        ensure(started.elapsed() < DEADLINE, format!("fewer than 4 heartbeats within {DEADLINE:?}"))?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure(agent.0.try_wait().map(|s| s.is_none()).unwrap_or(false), "the agent exited on a 5xx")?;
    let g = gaps(&platform.heartbeats);
    let slack = Duration::from_millis(400);
    for (i, ceiling) in [1u64, 2, 4].iter().enumerate() {
        ensure(
            g[i] <= Duration::from_secs(*ceiling) + slack,
            format!("retry {} waited {:?}, above the {ceiling}s ceiling", i + 1, g[i]),
        )?;
    }
    let sequences: Vec<u64> = platform
        .heartbeats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(_, b)| b["sequence"].as_u64().unwrap_or(0))
        .collect();
    ensure(
        sequences[..4].iter().all(|s| *s == sequences[0]),
        format!("retries must resend the same sequence: {sequences:?}"),
    )?;
    // An operator sees the recovery once, not only the failures. The mock
    // records the fourth heartbeat before the agent has read its answer; the
    // fifth is sent only after that answer was handled (and the recovery
    // logged), so stopping the agent earlier would race its log line.
    wait_for(&platform.heartbeats, 5, DEADLINE).await?;
    agent.terminate()?;
    ensure(agent.wait_exit(DEADLINE).is_some(), "the agent did not stop on SIGTERM")?;
    let logs = agent.output();
    ensure(
        logs.matches("heartbeats recovered").count() == 1,
        "the recovery after failures is not logged once",
    )
}

pub async fn refuses_redirects(ctx: &Ctx) -> Checked {
    // Another origin that records whatever reaches it.
    let elsewhere = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&elsewhere)
        .await;
    let target = format!("{}/api/v1/agents/{AGENT_ID}/telemetry/heartbeat", elsewhere.uri());
    let redirect = Reply::json(307, serde_json::json!({})).insert_header("location", &target);
    let (platform, run) = enrolled(ctx, vec![], redirect).await?;
    let mut agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 2, DEADLINE).await?;
    ensure(agent.0.try_wait().map(|s| s.is_none()).unwrap_or(false), "the agent exited on a redirect")?;
    let reached = elsewhere.received_requests().await.unwrap_or_default();
    ensure(
        reached.is_empty(),
        format!("{} request(s) followed the redirect to another origin", reached.len()),
    )
}

/// The answer `caps_response_bodies` sends, and the peak memory it allows
/// (twice the agent's 8 MB budget, half the answer).
const HUGE_ANSWER_BYTES: usize = 32 * 1024 * 1024;
const PEAK_RSS_LIMIT: u64 = 16 * 1024 * 1024;

pub async fn caps_response_bodies(ctx: &Ctx) -> Checked {
    let (platform, run) = enrolled(ctx, vec![], accepted().padded(HUGE_ANSWER_BYTES)).await?;
    let mut agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 3, DEADLINE).await?;
    let peak = agent.peak_rss()?;
    ensure(agent.running(), "the agent exited on an oversized answer")?;
    agent.terminate()?;
    agent.wait_exit(Duration::from_secs(2));
    ensure(
        peak <= PEAK_RSS_LIMIT,
        format!(
            "peak RSS {:.1} MiB while answered with 32 MiB bodies (limit 16 MiB): the body was read whole",
            peak as f64 / 1048576.0
        ),
    )?;
    ensure(agent.output().contains("larger than"), "the agent did not log that the answer was too large")
}

pub async fn times_out_hung_platform(ctx: &Ctx) -> Checked {
    let bin = bin(ctx)?;
    let hung = accepted().delayed(Duration::from_secs(60));
    let platform = mock_platform(ctx.recorder(), vec![], vec![], hung).await;
    let run = agent_run(ctx, &bin, &platform.server.uri(), 1)?.with_setting("request_timeout: 2")?;
    let (code, _) = run.run_to_end("enroll")?;
    ensure(code == Some(0), format!("enroll exited {code:?}"))?;
    let mut agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 2, Duration::from_secs(15)).await.map_err(|_| {
        "no second heartbeat within 15 s: the hung heartbeat did not end at request_timeout: 2".to_owned()
    })?;
    let first_gap = gaps(&platform.heartbeats)[0];
    ensure(
        first_gap >= Duration::from_millis(1900),
        format!("retried after {first_gap:?}, before the 2 s request timeout ended the first"),
    )?;
    ensure(agent.running(), "the agent exited on a hung platform")?;
    let sent = std::time::Instant::now();
    agent.terminate()?;
    let exit = agent
        .wait_exit(Duration::from_secs(2))
        .ok_or("still running 2 s after SIGTERM during a hung heartbeat")?;
    ensure(exit.code() == Some(0), format!("exit code {:?} after SIGTERM", exit.code()))?;
    ensure(sent.elapsed() <= Duration::from_secs(2), "stopped too slowly")
}

pub async fn sigterm(ctx: &Ctx) -> Checked {
    let (platform, run) = enrolled(ctx, vec![], accepted()).await?;
    let mut agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 1, DEADLINE).await?;
    let sent = std::time::Instant::now();
    agent.terminate()?;
    let exit = agent.wait_exit(Duration::from_secs(2)).ok_or("still running 2 s after SIGTERM")?;
    ensure(exit.code() == Some(0), format!("exit code {:?} after SIGTERM", exit.code()))?;
    ensure(sent.elapsed() <= Duration::from_secs(2), "stopped too slowly")
}

pub async fn bodies_match_contract(ctx: &Ctx) -> Checked {
    let (platform, run) = enrolled(ctx, vec![], accepted()).await?;
    let _agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 2, DEADLINE).await?;
    for (_, body) in platform.exchanges.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        oneprotect_contracts::contract::validate_schema("EnrollmentExchangeRequest", body)
            .map_err(|v| format!("exchange body: {v:?}"))?;
    }
    for (_, body) in platform.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        oneprotect_contracts::contract::validate_schema("AgentHeartbeatTelemetryRequest", body)
            .map_err(|v| format!("heartbeat body: {v:?}"))?;
    }
    Ok(())
}

pub async fn sigterm_while_waiting(ctx: &Ctx) -> Checked {
    let (platform, run) = enrolled_with(ctx, enrolled_response(), 60, vec![], accepted()).await?;
    let mut agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 1, DEADLINE).await?;
    let before = run.persisted_sequence();
    let sent = std::time::Instant::now();
    agent.terminate()?;
    let exit = agent
        .wait_exit(Duration::from_secs(1))
        .ok_or("still running 1 s after SIGTERM during its 60 s wait")?;
    ensure(exit.code() == Some(0), format!("exit code {:?} after SIGTERM", exit.code()))?;
    ensure(sent.elapsed() <= Duration::from_secs(1), "stopped too slowly")?;
    ensure(
        run.persisted_sequence() == before,
        format!("a sequence was consumed by the stop: {before:?} became {:?}", run.persisted_sequence()),
    )?;
    ensure(
        platform.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).len() == 1,
        "a heartbeat was sent after SIGTERM",
    )
}

/// Mode of the key file, and its text.
fn key_of(run: &AgentRun) -> (u32, String) {
    let path = run.state.join("agent.key");
    (mode(&path), std::fs::read_to_string(&path).unwrap_or_default())
}

pub async fn renewal(ctx: &Ctx) -> Checked {
    // A runtime token of 3 s: renewal is due long before the deadline.
    let (platform, run) =
        enrolled_with(ctx, enrolled_response_for(chrono::Duration::seconds(3)), 1, vec![], accepted())
            .await?;
    let (_, key_before) = key_of(&run);
    let mut agent = run.spawn("run")?;
    wait_for(&platform.rotations, 1, Duration::from_secs(10))
        .await
        .map_err(|e| format!("no renewal of a 3 s runtime token: {e}"))?;
    wait_until(Duration::from_secs(10), "no heartbeat with the renewed token", || {
        platform.heartbeat_bearers().iter().any(|b| b == RENEWED_RUNTIME_TOKEN)
    })
    .await?;
    let rotation = &MockPlatform::bodies(&platform.rotations)[0];
    oneprotect_contracts::contract::validate_schema("CertificateRotateRequest", rotation)
        .map_err(|v| format!("rotation body: {v:?}"))?;
    let enrollment = &MockPlatform::bodies(&platform.exchanges)[0];
    ensure(rotation["nonce"] != enrollment["nonce"], "the rotation reused the enrollment's nonce")?;
    ensure(rotation["csr_pem"] != enrollment["csr_pem"], "the rotation reused the enrollment's CSR")?;
    let bearers = platform.heartbeat_bearers();
    let first_new = bearers.iter().position(|b| b == RENEWED_RUNTIME_TOKEN).unwrap_or(bearers.len());
    ensure(
        bearers[first_new..].iter().all(|b| b == RENEWED_RUNTIME_TOKEN),
        "the old runtime token was used after the renewal",
    )?;
    let (key_mode, key_after) = key_of(&run);
    ensure(key_after != key_before, "the key was not replaced by the renewal")?;
    ensure(key_mode == 0o600, format!("the renewed key has mode {key_mode:o}"))?;
    let token_mode = mode(&run.state.join("runtime.token"));
    ensure(token_mode == 0o600, format!("the renewed runtime token has mode {token_mode:o}"))?;
    agent.terminate()?;
    ensure(
        agent.wait_exit(Duration::from_secs(2)).and_then(|s| s.code()) == Some(0),
        "the agent did not stop cleanly after renewal",
    )?;
    let seen = bearers.len().max(platform.heartbeat_bearers().len());
    let _again = run.spawn("run")?;
    wait_until(Duration::from_secs(10), "no heartbeat after a restart with the renewed identity", || {
        platform.heartbeat_bearers().len() > seen
    })
    .await?;
    ensure(
        platform.heartbeat_bearers().last().map(String::as_str) == Some(RENEWED_RUNTIME_TOKEN),
        "the restarted agent did not load the renewed token",
    )
}

pub async fn sequence_continuity(ctx: &Ctx) -> Checked {
    let (platform, run) = enrolled(ctx, vec![], accepted()).await?;
    let mut agent = run.spawn("run")?;
    wait_for(&platform.heartbeats, 2, DEADLINE).await?;
    agent.terminate()?;
    ensure(agent.wait_exit(Duration::from_secs(2)).is_some(), "the agent did not stop")?;
    let before: Vec<u64> =
        MockPlatform::bodies(&platform.heartbeats).iter().filter_map(|b| b["sequence"].as_u64()).collect();
    let _again = run.spawn("run")?;
    wait_for(&platform.heartbeats, before.len() + 1, DEADLINE).await?;
    let after = MockPlatform::bodies(&platform.heartbeats)[before.len()]["sequence"].as_u64().unwrap_or(0);
    let highest = before.iter().copied().max().unwrap_or(0);
    ensure(
        after > highest,
        format!("after a restart the sequence went back to {after} (sent up to {highest} before)"),
    )
}

pub async fn enrollment_retry_after(ctx: &Ctx) -> Checked {
    let bin = bin(ctx)?;
    let platform = mock_platform(
        ctx.recorder(),
        vec![problem(429, ProblemCode::RateLimited).insert_header("retry-after", "2")],
        vec![],
        accepted(),
    )
    .await;
    let run = agent_run(ctx, &bin, &platform.server.uri(), 1)?;
    let (code, _) = run.run_to_end("enroll")?;
    ensure(code == Some(0), format!("enroll exited {code:?} after a 429"))?;
    let g = gaps(&platform.exchanges);
    ensure(!g.is_empty(), "the enrollment was not retried")?;
    ensure(
        g[0] >= Duration::from_millis(1950),
        format!("the enrollment was retried after {:?}, before Retry-After: 2", g[0]),
    )?;
    ensure(g[0] <= Duration::from_secs(5), format!("waited {:?} after Retry-After: 2", g[0]))?;
    let bodies = MockPlatform::bodies(&platform.exchanges);
    ensure(bodies[0]["nonce"] != bodies[1]["nonce"], "the retry reused the nonce")
}

pub async fn presents_certificate(ctx: &Ctx) -> Checked {
    let bin = bin(ctx)?;
    let platform = crate::agent_target::mock_platform(ctx.recorder(), vec![], vec![], accepted()).await;
    let front = crate::agent_target::tls_front(&platform).await?;
    let run = agent_run(ctx, &bin, &front.url, 1)?
        .with_setting(&format!("ca_bundle: {}", front.ca_file.display()))?;
    let (code, out) = run.run_to_end("enroll")?;
    if code != Some(0) {
        return Err(Verdict::Fail(format!(
            "enroll exited {code:?}: {}",
            out.lines().last().unwrap_or_default()
        )));
    }
    let enrolled_connections = front.presented().len();
    let _running = run.spawn("run")?;
    wait_for(&platform.heartbeats, 2, DEADLINE).await?;
    let pem = std::fs::read_to_string(run.state.join("agent.pem")).map_err(|e| format!("agent.pem: {e}"))?;
    let issued = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|p| p.contents)
        .ok_or("agent.pem holds no certificate")?;
    ensure(mode(&run.state.join("agent.pem")) == 0o600, "agent.pem is wider than 0600")?;
    let after_enrollment: Vec<Option<Vec<u8>>> = front.presented().split_off(enrolled_connections);
    ensure(!after_enrollment.is_empty(), "the heartbeats used no new TLS connection")?;
    for presented in after_enrollment {
        match presented {
            Some(der) if der == issued => {}
            Some(_) => {
                return Err(Verdict::Fail("a heartbeat connection presented another certificate".into()));
            }
            None => {
                return Err(Verdict::Fail("a heartbeat connection presented no client certificate".into()));
            }
        }
    }
    Ok(())
}

pub async fn certificate_renewal(ctx: &Ctx) -> Checked {
    // The certificate's 20 s start when the exchange arrives; renewal is due
    // at 14-17 s, leaving the agent's start-up and its 1 s cadence room even
    // on a loaded machine.
    let bin = bin(ctx)?;
    let platform = crate::agent_target::mock_platform(ctx.recorder(), vec![], vec![], accepted()).await;
    crate::agent_target::certificate_lifetime_from_exchange(&platform, chrono::Duration::seconds(20)).await;
    let run = agent_run(ctx, &bin, &platform.server.uri(), 1)?;
    let (code, out) = run.run_to_end("enroll")?;
    if code != Some(0) {
        return Err(Verdict::Fail(format!(
            "enroll exited {code:?}: {}",
            out.lines().last().unwrap_or_default()
        )));
    }
    let identity: serde_json::Value = std::fs::read_to_string(run.state.join("identity.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or("no identity after enrollment")?;
    let not_after: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(identity["certificate_not_after"].clone())
            .map_err(|_| "the identity keeps no certificate expiry")?;
    let _agent = run.spawn("run")?;
    wait_for(&platform.rotations, 1, Duration::from_secs(30))
        .await
        .map_err(|e| format!("no renewal of a 20 s certificate: {e}"))?;
    let rotated_at = platform.rotations.lock().unwrap_or_else(|p| p.into_inner())[0].0;
    let rotated = chrono::Utc::now() - chrono::Duration::from_std(rotated_at.elapsed()).unwrap_or_default();
    ensure(rotated < not_after, "the certificate was renewed only after it expired")
}
