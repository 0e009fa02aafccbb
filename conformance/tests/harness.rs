//! The harness passes against the real implementations and fails against
//! deliberately faulty ones — each fault caught by the check meant for it.

use std::path::{Path, PathBuf};

use oneprotect_conformance::checks::CATALOGUE;
use oneprotect_conformance::faults::Fault;
use oneprotect_conformance::{Outcome, Target, local, runner};

fn check(id: &str) -> &'static oneprotect_conformance::Check {
    CATALOGUE.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no check {id}"))
}

async fn outcome_with_fault(fault: Option<Fault>, id: &str) -> Outcome {
    let platform = local::start(None, fault).await.expect("local platform");
    (check(id).run)(&platform.ctx).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_check_passes_against_the_real_server_on_sqlite() {
    let platform = local::start(None, None).await.expect("local platform");
    let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
    assert_eq!(report.total().skipped, 0, "nothing is skipped locally");
    for family in oneprotect_conformance::Family::ALL {
        assert!(report.counts()[family.as_str()].passed > 0, "{} has checks", family.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_check_passes_against_the_real_server_on_postgres() {
    let url = std::env::var("ONEPROTECT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let platform = local::start(Some(&url), None).await.expect("PostgreSQL must be reachable for this test");
    let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;
    assert!(report.passed(), "{}", report.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_leaks_the_secret_in_list_is_caught() {
    assert!(matches!(outcome_with_fault(Some(Fault::LeakSecretInList), "redaction.issued-secret-shown-once").await, Outcome::Fail(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_skips_the_tenant_predicate_is_caught() {
    assert!(matches!(outcome_with_fault(Some(Fault::SkipTenantPredicate), "tenant-isolation.cross-tenant-agent-read-is-404").await, Outcome::Fail(_)));
    assert!(matches!(outcome_with_fault(Some(Fault::SkipTenantPredicate), "tenant-isolation.lists-are-tenant-scoped").await, Outcome::Fail(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_an_expired_token_is_caught() {
    assert!(matches!(outcome_with_fault(Some(Fault::AcceptExpiredToken), "expiry.enrollment-token-expires").await, Outcome::Fail(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_skips_the_nonce_check_is_caught() {
    assert!(matches!(outcome_with_fault(Some(Fault::SkipNonceCheck), "replay.nonce-reuse-rejected").await, Outcome::Fail(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_a_tampered_runtime_token_is_caught() {
    assert!(matches!(outcome_with_fault(Some(Fault::AcceptTamperedRuntimeToken), "fail-closed.tampered-runtime-token-rejected").await, Outcome::Fail(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_logs_the_bearer_is_caught() {
    assert!(matches!(outcome_with_fault(Some(Fault::LogBearer), "redaction.logs-hold-no-secret").await, Outcome::Fail(_)));
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
    for f in oneprotect_conformance::Family::ALL {
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
            CheckResult {
                id: "replay.a".into(),
                family: oneprotect_conformance::Family::Replay,
                promise: "p <&>".into(),
                outcome: Outcome::Pass,
                duration_ms: 3,
            },
            CheckResult {
                id: "expiry.b".into(),
                family: oneprotect_conformance::Family::Expiry,
                promise: "q".into(),
                outcome: Outcome::Skip("needs a clock".into()),
                duration_ms: 0,
            },
            CheckResult {
                id: "redaction.c".into(),
                family: oneprotect_conformance::Family::Redaction,
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
