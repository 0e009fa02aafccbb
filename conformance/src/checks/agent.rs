use std::time::Duration;

use crate::agent_target::*;
use crate::{CheckFuture, Ctx, Outcome, ensure, outcome};

fn bin(ctx: &Ctx) -> Result<std::path::PathBuf, Outcome> {
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

/// Enrolls an agent against a mock that accepts at once.
async fn enrolled(ctx: &Ctx, heartbeat: Vec<wiremock::ResponseTemplate>, fallback: wiremock::ResponseTemplate) -> Result<(MockPlatform, AgentRun), Outcome> {
    let bin = bin(ctx)?;
    let platform = mock_platform(vec![], heartbeat, fallback).await;
    let run = AgentRun::new(&bin, &platform.server.uri()).map_err(Outcome::Fail)?;
    let (code, out) = run.run_to_end("enroll").map_err(Outcome::Fail)?;
    if code != Some(0) {
        return Err(Outcome::Fail(format!("enroll exited {code:?}: {}", out.lines().last().unwrap_or_default())));
    }
    Ok((platform, run))
}

macro_rules! enrolled_or_return {
    ($e:expr) => {
        match $e.await {
            Ok(v) => v,
            Err(o) => return o,
        }
    };
}

pub fn files_owner_only(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let (_platform, run) = enrolled_or_return!(enrolled(ctx, vec![], accepted()));
        outcome((|| {
            ensure(mode(&run.state) == 0o700, format!("state directory mode {:o}", mode(&run.state)))?;
            for f in ["identity.json", "agent.key", "runtime.token", "certificate.json", "sequence"] {
                let m = mode(&run.state.join(f));
                ensure(m == 0o600, format!("{f} has mode {m:o}"))?;
            }
            Ok(())
        })())
    })
}

pub fn token_removed(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let (_platform, run) = enrolled_or_return!(enrolled(ctx, vec![], accepted()));
        outcome((|| {
            let config = std::fs::read_to_string(&run.config).map_err(|e| e.to_string())?;
            ensure(!config.contains(ENROLLMENT_TOKEN) && !config.contains("enrollment_token"), "the enrollment token is still in the config")?;
            ensure(config.contains("# conformance fixture config") && config.contains("heartbeat_interval: 1"), "other lines and comments were not kept")
        })())
    })
}

pub fn logs_clean(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let bin = match bin(ctx) {
            Ok(b) => b,
            Err(o) => return o,
        };
        outcome(
            async {
                let platform = mock_platform(vec![problem(503, "store_unavailable")], vec![], accepted()).await;
                let run = AgentRun::new(&bin, &platform.server.uri())?;
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
                    secrets.extend(body["csr_pem"].as_str().unwrap_or_default().lines().filter(|l| !l.starts_with("-----") && l.len() > 16).map(str::to_owned));
                }
                for s in secrets.iter().filter(|s| s.len() >= 16) {
                    ensure(!logs.contains(s.as_str()), "a secret (token, key, CSR or nonce) appears in the agent's output")?;
                }
                ensure(!logs.contains("PRIVATE KEY") && !logs.to_ascii_lowercase().contains("bearer "), "a key or bearer appears in the agent's output")
            }
            .await,
        )
    })
}

pub fn fresh_nonce(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let bin = match bin(ctx) {
            Ok(b) => b,
            Err(o) => return o,
        };
        outcome(
            async {
                let platform = mock_platform(vec![problem(503, "store_unavailable"), problem(502, "internal_error")], vec![], accepted()).await;
                let run = AgentRun::new(&bin, &platform.server.uri())?;
                let (code, _) = run.run_to_end("enroll")?;
                ensure(code == Some(0), format!("enroll exited {code:?} after transient failures"))?;
                let bodies: Vec<serde_json::Value> = platform.exchanges.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, b)| b.clone()).collect();
                ensure(bodies.len() == 3, format!("{} exchange attempts, expected 3", bodies.len()))?;
                let nonces: std::collections::BTreeSet<&str> = bodies.iter().filter_map(|b| b["nonce"].as_str()).collect();
                let csrs: std::collections::BTreeSet<&str> = bodies.iter().filter_map(|b| b["csr_pem"].as_str()).collect();
                ensure(nonces.len() == 3, "a nonce was reused across attempts")?;
                ensure(csrs.len() == 3, "a CSR (key) was reused across attempts")
            }
            .await,
        )
    })
}

async fn exit_code_on(ctx: &Ctx, status: u16, code: &str, expected: i32) -> Outcome {
    let (platform, run) = enrolled_or_return!(enrolled(ctx, vec![], problem(status, code)));
    outcome(
        async {
            let mut agent = run.spawn("run")?;
            let exit = agent.wait_exit(DEADLINE).ok_or("the agent kept running")?;
            ensure(exit.code() == Some(expected), format!("exit code {:?}, expected {expected}", exit.code()))?;
            ensure(platform.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).len() == 1, "the agent retried after a fail-closed answer")?;
            ensure(run.state.join("agent.key").exists() && run.state.join("identity.json").exists(), "the agent deleted its files")
        }
        .await,
    )
}

pub fn exit_on_401(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(exit_code_on(ctx, 401, "identity_unknown", 3))
}

pub fn exit_on_403(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(exit_code_on(ctx, 403, "identity_revoked", 4))
}

fn gaps(recorded: &Recorded) -> Vec<Duration> {
    let r = recorded.lock().unwrap_or_else(|p| p.into_inner());
    r.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

pub fn retry_after(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let (platform, run) = enrolled_or_return!(enrolled(ctx, vec![problem(429, "rate_limited").insert_header("retry-after", "2")], accepted()));
        outcome(
            async {
                let _agent = run.spawn("run")?;
                wait_for(&platform.heartbeats, 2, DEADLINE).await?;
                let g = gaps(&platform.heartbeats)[0];
                ensure(g >= Duration::from_millis(1950), format!("retried after {g:?}, before Retry-After: 2"))?;
                ensure(g <= Duration::from_secs(5), format!("waited {g:?} after Retry-After: 2"))
            }
            .await,
        )
    })
}

pub fn backoff(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let script = vec![problem(503, "store_unavailable"), problem(500, "internal_error"), problem(503, "store_unavailable")];
        let (platform, run) = enrolled_or_return!(enrolled(ctx, script, accepted()));
        outcome(
            async {
                let mut agent = run.spawn("run")?;
                wait_for(&platform.heartbeats, 4, DEADLINE).await?;
                ensure(agent.0.try_wait().map(|s| s.is_none()).unwrap_or(false), "the agent exited on a 5xx")?;
                let g = gaps(&platform.heartbeats);
                let slack = Duration::from_millis(400);
                for (i, ceiling) in [1u64, 2, 4].iter().enumerate() {
                    ensure(g[i] <= Duration::from_secs(*ceiling) + slack, format!("retry {} waited {:?}, above the {ceiling}s ceiling", i + 1, g[i]))?;
                }
                let sequences: Vec<u64> =
                    platform.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, b)| b["sequence"].as_u64().unwrap_or(0)).collect();
                ensure(sequences[..4].iter().all(|s| *s == sequences[0]), format!("retries must resend the same sequence: {sequences:?}"))
            }
            .await,
        )
    })
}

pub fn sigterm(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let (platform, run) = enrolled_or_return!(enrolled(ctx, vec![], accepted()));
        outcome(
            async {
                let mut agent = run.spawn("run")?;
                wait_for(&platform.heartbeats, 1, DEADLINE).await?;
                let sent = std::time::Instant::now();
                agent.terminate()?;
                let exit = agent.wait_exit(Duration::from_secs(2)).ok_or("still running 2 s after SIGTERM")?;
                ensure(exit.code() == Some(0), format!("exit code {:?} after SIGTERM", exit.code()))?;
                ensure(sent.elapsed() <= Duration::from_secs(2), "stopped too slowly")
            }
            .await,
        )
    })
}

pub fn bodies_match_contract(ctx: &Ctx) -> CheckFuture<'_> {
    Box::pin(async move {
        let (platform, run) = enrolled_or_return!(enrolled(ctx, vec![], accepted()));
        outcome(
            async {
                let _agent = run.spawn("run")?;
                wait_for(&platform.heartbeats, 2, DEADLINE).await?;
                for (_, body) in platform.exchanges.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    oneprotect_contracts::contract::validate_schema("EnrollmentExchangeRequest", body).map_err(|v| format!("exchange body: {v:?}"))?;
                }
                for (_, body) in platform.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    oneprotect_contracts::contract::validate_schema("AgentHeartbeatTelemetryRequest", body).map_err(|v| format!("heartbeat body: {v:?}"))?;
                }
                Ok(())
            }
            .await,
        )
    })
}
