//! The harness passes against the real implementations and fails against
//! deliberately faulty ones — each fault caught by the check meant for it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oneprotect_conformance::checks::CATALOGUE;
use oneprotect_conformance::faults::Fault;
use oneprotect_conformance::{Family, Outcome, Target, local, runner};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_check_passes_against_the_real_server_on_sqlite() {
    let platform = local::start(None, None).await.expect("local platform");
    let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
    let skipped: Vec<&str> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skip(_)))
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(
        skipped,
        ["tenant-isolation.row-level-security-forced"],
        "only the PostgreSQL-only check is skipped on SQLite"
    );
    for family in Family::ALL {
        assert!(report.counts()[family.as_str()].passed > 0, "{} has checks", family.as_str());
    }
}

fn postgres_url() -> String {
    std::env::var("ONEPROTECT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_check_passes_against_the_real_server_on_postgres() {
    let platform =
        local::start(Some(&postgres_url()), None).await.expect("PostgreSQL must be reachable for this test");
    let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
    assert_eq!(report.total().skipped, 0, "nothing is skipped on PostgreSQL");
}

/// Runs the whole local catalogue against a faulty platform and returns
/// what differs from what the fault declares: a check that should fail and
/// passed, one that failed with another message, or one that failed and
/// should not have.
async fn mismatches(database: Option<&str>, fault: Fault) -> Vec<String> {
    let run = async {
        let platform = local::start(database, Some(fault)).await.expect("local platform");
        let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
        let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
        differences(&format!("{fault:?}"), &report, fault.caught_by())
    };
    // Each check is bounded by the runner; this bounds the platform's
    // start and the run's cleanup too, so a stuck run names its fault.
    tokio::time::timeout(FAULT_RUN_LIMIT, run).await.unwrap_or_else(|_| {
        vec![format!("{fault:?}: the run did not end within {} s", FAULT_RUN_LIMIT.as_secs())]
    })
}

const FAULT_RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// What differs between a run against a faulty variant and what the fault
/// declares: a declared check that passed or failed with another message,
/// or a check that failed and should not have.
fn differences(
    fault: &str,
    report: &oneprotect_conformance::report::Report,
    declared: &[(&str, &str)],
) -> Vec<String> {
    let expected: BTreeMap<&str, &str> = declared.iter().copied().collect();
    let mut wrong = Vec::new();
    for r in &report.results {
        match (&r.outcome, expected.get(r.id.as_str())) {
            (Outcome::Fail(message), Some(fragment)) if !message.contains(fragment) => wrong.push(format!(
                "{fault}: {} failed with {message:?}, expected it to mention {fragment:?}",
                r.id
            )),
            (Outcome::Fail(_), Some(_)) => {}
            (Outcome::Fail(message), None) => wrong.push(format!("{fault}: {} failed too: {message}", r.id)),
            (_, Some(_)) => wrong.push(format!("{fault}: {} did not fail ({:?})", r.id, r.outcome)),
            (_, None) => {}
        }
    }
    wrong
}

/// The faults of one family, by the checks they declare.
fn faults_of(family: Family) -> Vec<Fault> {
    Fault::ALL
        .iter()
        .copied()
        .filter(|f| f.caught_by().iter().any(|(id, _)| id.starts_with(&format!("{}.", family.as_str()))))
        .collect()
}

async fn family_faults_fail_exactly_their_checks(family: Family) {
    let faults = faults_of(family);
    assert!(!faults.is_empty());
    let mut wrong = Vec::new();
    for fault in faults {
        wrong.extend(mismatches(None, fault).await);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_faults_fail_exactly_their_checks() {
    family_faults_fail_exactly_their_checks(Family::Redaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_faults_fail_exactly_their_checks() {
    family_faults_fail_exactly_their_checks(Family::Replay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_faults_fail_exactly_their_checks() {
    family_faults_fail_exactly_their_checks(Family::Expiry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_isolation_faults_fail_exactly_their_checks() {
    family_faults_fail_exactly_their_checks(Family::TenantIsolation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_faults_fail_exactly_their_checks() {
    family_faults_fail_exactly_their_checks(Family::FailClosed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_faults_fail_exactly_their_checks_on_postgres() {
    let mut wrong = Vec::new();
    for fault in Fault::POSTGRES_ONLY {
        wrong.extend(mismatches(Some(&postgres_url()), *fault).await);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_platform_check_has_a_fault_that_fails_it() {
    let caught: BTreeSet<&str> = Fault::ALL
        .iter()
        .chain(Fault::POSTGRES_ONLY)
        .flat_map(|f| f.caught_by().iter().map(|(id, _)| *id))
        .collect();
    let ids: BTreeSet<&str> = CATALOGUE.iter().map(|c| c.id).collect();
    for id in &caught {
        assert!(ids.contains(id), "a fault names {id}, which is not in the catalogue");
    }
    let uncaught: Vec<&str> = CATALOGUE
        .iter()
        .filter(|c| c.targets.contains(&Target::Local) && !caught.contains(c.id))
        .map(|c| c.id)
        .collect();
    assert!(uncaught.is_empty(), "checks without a fault: {uncaught:?}");
}

fn agent_binary() -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
        .expect("target dir");
    let bin = dir.join(format!("oneprotect-agent{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", "oneprotect-agent", "--bin", "oneprotect-agent"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "building oneprotect-agent failed");
    }
    bin
}

fn agent_ctx(bin: PathBuf) -> oneprotect_conformance::Ctx {
    let powers = oneprotect_conformance::ctx::LocalPowers { agent_bin: Some(bin), ..Default::default() };
    oneprotect_conformance::Ctx::new(
        "http://127.0.0.1:9",
        reqwest::Client::new(),
        String::new().into(),
        String::new().into(),
        powers,
    )
}

/// The agent built with its `fault-injection` feature, in a target
/// directory of its own so the agent under test is never replaced.
fn faulty_agent_binary() -> PathBuf {
    let target = agent_binary().parent().and_then(Path::parent).map(Path::to_path_buf).expect("target dir");
    let dir = target.join("faulty-agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = std::process::Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "oneprotect-agent",
            "--bin",
            "oneprotect-agent",
            "--features",
            "fault-injection",
            "--target-dir",
        ])
        .arg(&dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "building the fault-injection agent failed");
    dir.join("debug").join(format!("oneprotect-agent{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_shipped_agent_contains_no_fault_injection() {
    let binary = std::fs::read(agent_binary()).expect("read the agent binary");
    let needle = b"OPAGENT_FAULT_INJECTION";
    assert!(
        !binary.windows(needle.len()).any(|w| w == needle),
        "the agent under test was built with fault injection"
    );
}

#[test]
fn every_agent_fault_of_the_agent_build_is_declared_and_every_agent_check_has_one() {
    let declared: BTreeSet<&str> =
        oneprotect_conformance::faults::AGENT_FAULTS.iter().map(|(name, _)| *name).collect();
    let built: BTreeSet<&str> = oneprotect_agent::faults::NAMES.iter().copied().collect();
    assert_eq!(declared, built, "the harness declares exactly the faults the agent can inject");
    let caught: BTreeSet<&str> = oneprotect_conformance::faults::AGENT_FAULTS
        .iter()
        .flat_map(|(_, checks)| checks.iter().map(|(id, _)| *id))
        .collect();
    let uncaught: Vec<&str> = CATALOGUE
        .iter()
        .filter(|c| c.targets.contains(&Target::Agent) && !caught.contains(c.id))
        .map(|c| c.id)
        .collect();
    assert!(uncaught.is_empty(), "agent checks without a faulty agent: {uncaught:?}");
}

/// What differs from the declaration when the agent catalogue runs against
/// the fault-injection agent with `fault` chosen.
async fn agent_mismatches(
    bin: PathBuf,
    fault: &'static str,
    expected: &'static [(&'static str, &'static str)],
) -> Vec<String> {
    let mut ctx = agent_ctx(bin);
    ctx.local.agent_fault = Some(fault.to_owned());
    let checks = runner::selected(&CATALOGUE, Target::Agent, &[]);
    let report = runner::run(&ctx, Target::Agent, &checks, false).await;
    differences(fault, &report, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_faulty_agent_fails_exactly_its_checks() {
    let bin = tokio::task::spawn_blocking(faulty_agent_binary).await.expect("build");
    // Three faulty agents at a time: each spends most of its time waiting.
    let permits = Arc::new(tokio::sync::Semaphore::new(3));
    let mut runs = tokio::task::JoinSet::new();
    for (fault, expected) in oneprotect_conformance::faults::AGENT_FAULTS {
        let (bin, permits) = (bin.clone(), permits.clone());
        runs.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            agent_mismatches(bin, fault, expected).await
        });
    }
    let mut wrong = Vec::new();
    while let Some(r) = runs.join_next().await {
        wrong.extend(r.expect("join"));
    }
    wrong.sort();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_check_passes_against_the_real_agent() {
    let ctx = agent_ctx(agent_binary());
    let checks = runner::selected(&CATALOGUE, Target::Agent, &[]);
    let report = runner::run(&ctx, Target::Agent, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
}

#[test]
fn the_catalogue_has_unique_ids_prefixed_by_their_family_and_covers_every_family() {
    let mut ids = std::collections::BTreeSet::new();
    for c in CATALOGUE.iter() {
        assert!(ids.insert(c.id), "duplicate id {}", c.id);
        assert!(
            c.id.starts_with(&format!("{}.", c.family.as_str())),
            "{} is not prefixed by its family",
            c.id
        );
        assert!(!c.targets.is_empty() && !c.promise.is_empty());
    }
    for f in Family::ALL {
        assert!(
            CATALOGUE.iter().filter(|c| c.family == f).count() >= 3,
            "{} has at least three checks",
            f.as_str()
        );
    }
}

#[test]
fn reports_render_as_json_and_junit_with_per_family_counts() {
    use oneprotect_conformance::report::{CheckResult, Report};
    let report = Report {
        run_id: "conf-fixture".into(),
        target: Target::Http,
        results: vec![
            CheckResult {
                id: "replay.a".into(),
                family: Family::Replay,
                promise: "p <&>".into(),
                outcome: Outcome::Pass,
                duration_ms: 3,
            },
            CheckResult {
                id: "expiry.b".into(),
                family: Family::Expiry,
                promise: "q".into(),
                outcome: Outcome::Skip("needs a clock".into()),
                duration_ms: 0,
            },
            CheckResult {
                id: "redaction.c".into(),
                family: Family::Redaction,
                promise: "r <&>".into(),
                outcome: Outcome::Fail("leak \"x\"".into()),
                duration_ms: 1,
            },
        ],
        cleanup_failures: vec![],
        run_errors: vec![],
        notes: vec![],
        certification: vec![],
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        transcripts: Default::default(),
    };
    assert!(!report.passed());
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
    assert_eq!(json["counts"]["replay"]["passed"], 1);
    assert_eq!(json["counts"]["expiry"]["skipped"], 1);
    assert_eq!(json["total"]["failed"], 1);
    let junit = report.junit();
    assert!(junit.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
    assert!(
        junit.contains("message=\"r &lt;&amp;&gt;\"") && junit.contains("leak &quot;x&quot;"),
        "XML is escaped: {junit}"
    );
    assert!(report.human().contains("1 passed, 1 failed, 1 skipped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_is_read_back_and_a_revoke_that_did_not_stick_is_reported() {
    let platform = local::start(None, Some(Fault::RevokeTokenNotWritten)).await.expect("local platform");
    let checks = runner::selected(&CATALOGUE, Target::Local, &["replay.nonce-reuse-rejected".to_owned()]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
    assert!(
        report.cleanup_failures.iter().any(|f| f.contains("is still active after cleanup")),
        "{:?}",
        report.cleanup_failures
    );
    assert!(!report.passed());
    let real = local::start(None, None).await.expect("local platform");
    let report = runner::run(&real.ctx, Target::Local, &checks, false).await;
    assert!(report.cleanup_failures.is_empty() && report.passed(), "{}", report.human());
}
