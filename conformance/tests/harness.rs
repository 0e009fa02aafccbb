//! The harness passes against the real implementations and fails against
//! deliberately faulty ones — each fault caught by the check meant for it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use oneprotect_conformance::checks::CATALOGUE;
use oneprotect_conformance::faults::Fault;
use oneprotect_conformance::{Family, Outcome, Target, local, runner};

fn check(id: &str) -> &'static oneprotect_conformance::Check {
    CATALOGUE.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no check {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_check_passes_against_the_real_server_on_sqlite() {
    let platform = local::start(None, None).await.expect("local platform");
    let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
    let skipped: Vec<&str> = report.results.iter().filter(|r| matches!(r.outcome, Outcome::Skip(_))).map(|r| r.id.as_str()).collect();
    assert_eq!(skipped, ["tenant-isolation.row-level-security-forced"], "only the PostgreSQL-only check is skipped on SQLite");
    for family in Family::ALL {
        assert!(report.counts()[family.as_str()].passed > 0, "{} has checks", family.as_str());
    }
}

fn postgres_url() -> String {
    std::env::var("ONEPROTECT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_check_passes_against_the_real_server_on_postgres() {
    let platform = local::start(Some(&postgres_url()), None).await.expect("PostgreSQL must be reachable for this test");
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
    let platform = local::start(database, Some(fault)).await.expect("local platform");
    let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
    let expected: BTreeMap<&str, &str> = fault.caught_by().iter().copied().collect();
    let mut wrong = Vec::new();
    for r in &report.results {
        match (&r.outcome, expected.get(r.id.as_str())) {
            (Outcome::Fail(message), Some(fragment)) if !message.contains(fragment) => {
                wrong.push(format!("{fault:?}: {} failed with {message:?}, expected it to mention {fragment:?}", r.id))
            }
            (Outcome::Fail(_), Some(_)) => {}
            (Outcome::Fail(message), None) => wrong.push(format!("{fault:?}: {} failed too: {message}", r.id)),
            (_, Some(_)) => wrong.push(format!("{fault:?}: {} did not fail ({:?})", r.id, r.outcome)),
            (_, None) => {}
        }
    }
    wrong
}

/// The faults of one family, by the checks they declare.
fn faults_of(family: Family) -> Vec<Fault> {
    Fault::ALL.iter().copied().filter(|f| f.caught_by().iter().any(|(id, _)| id.starts_with(&format!("{}.", family.as_str())))).collect()
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
    let caught: BTreeSet<&str> = Fault::ALL.iter().chain(Fault::POSTGRES_ONLY).flat_map(|f| f.caught_by().iter().map(|(id, _)| *id)).collect();
    let ids: BTreeSet<&str> = CATALOGUE.iter().map(|c| c.id).collect();
    for id in &caught {
        assert!(ids.contains(id), "a fault names {id}, which is not in the catalogue");
    }
    let uncaught: Vec<&str> = CATALOGUE.iter().filter(|c| c.targets.contains(&Target::Local) && !caught.contains(c.id)).map(|c| c.id).collect();
    assert!(uncaught.is_empty(), "checks without a fault: {uncaught:?}");
}

fn agent_binary() -> PathBuf {
    let dir = std::env::current_exe().ok().and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf)).expect("target dir");
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
    oneprotect_conformance::Ctx::new("http://127.0.0.1:9", reqwest::Client::new(), String::new().into(), String::new().into(), powers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_check_passes_against_the_real_agent() {
    let ctx = agent_ctx(agent_binary());
    let checks = runner::selected(&CATALOGUE, Target::Agent, &[]);
    let report = runner::run(&ctx, Target::Agent, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_leaves_its_key_world_readable_is_caught() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("faulty-agent");
    // Runs the real agent, then loosens the key file like a careless agent would.
    let script = format!(
        "#!/bin/sh\n\"{}\" \"$@\"\nstatus=$?\nstate=$(sed -n 's/^state_dir: //p' \"$2\")\n[ -f \"$state/agent.key\" ] && chmod 644 \"$state/agent.key\"\nexit $status\n",
        agent_binary().display()
    );
    std::fs::write(&wrapper, script).expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ctx = agent_ctx(wrapper);
    assert!(matches!((check("redaction.agent-files-owner-only").run)(&ctx).await, Outcome::Fail(_)));
    let real = agent_ctx(agent_binary());
    assert_eq!((check("redaction.agent-files-owner-only").run)(&real).await, Outcome::Pass);
}

#[test]
fn the_catalogue_has_unique_ids_prefixed_by_their_family_and_covers_every_family() {
    let mut ids = std::collections::BTreeSet::new();
    for c in CATALOGUE.iter() {
        assert!(ids.insert(c.id), "duplicate id {}", c.id);
        assert!(c.id.starts_with(&format!("{}.", c.family.as_str())), "{} is not prefixed by its family", c.id);
        assert!(!c.targets.is_empty() && !c.promise.is_empty());
    }
    for f in Family::ALL {
        assert!(CATALOGUE.iter().filter(|c| c.family == f).count() >= 3, "{} has at least three checks", f.as_str());
    }
}

#[test]
fn reports_render_as_json_and_junit_with_per_family_counts() {
    use oneprotect_conformance::report::{CheckResult, Report};
    let report = Report {
        run_id: "conf-fixture".into(),
        target: Target::Http,
        results: vec![
            CheckResult { id: "replay.a".into(), family: Family::Replay, promise: "p <&>".into(), outcome: Outcome::Pass, duration_ms: 3 },
            CheckResult { id: "expiry.b".into(), family: Family::Expiry, promise: "q".into(), outcome: Outcome::Skip("needs a clock".into()), duration_ms: 0 },
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
    };
    assert!(!report.passed());
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
    assert_eq!(json["counts"]["replay"]["passed"], 1);
    assert_eq!(json["counts"]["expiry"]["skipped"], 1);
    assert_eq!(json["total"]["failed"], 1);
    let junit = report.junit();
    assert!(junit.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
    assert!(junit.contains("message=\"r &lt;&amp;&gt;\"") && junit.contains("leak &quot;x&quot;"), "XML is escaped: {junit}");
    assert!(report.human().contains("1 passed, 1 failed, 1 skipped"));
}
