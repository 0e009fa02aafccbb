//! Run profiles and certified runs: declared failures with reasons, and a
//! verdict that refuses what a reviewer could not sign.

use std::collections::BTreeMap;
use std::process::Command;

use oneprotect_conformance::checks::CATALOGUE;
use oneprotect_conformance::faults::Fault;
use oneprotect_conformance::profile::{self, Profile};
use oneprotect_conformance::{Outcome, Target, Tenant, local, runner};

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn a_profile_resolves_paths_beside_itself_and_refuses_what_it_cannot_mean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(
        dir.path(),
        "good.yaml",
        "target: http\nbase_url: https://platform.example\nca_bundle: ca.pem\nadmin_token_a_file: a.jwt\nadmin_token_b_file: /abs/b.jwt\n\
         expected_failures:\n  - check: fail-closed.unknown-routes-are-problems\n    reason: the proxy answers unknown paths (fixture)\n",
    );
    let p = Profile::load(&good, &CATALOGUE).expect("loads");
    assert_eq!(p.ca_bundle, Some(dir.path().join("ca.pem")));
    assert_eq!(p.admin_token_a_file, Some(dir.path().join("a.jwt")));
    assert_eq!(p.admin_token_b_file, Some("/abs/b.jwt".into()));
    assert_eq!(
        p.expected().get("fail-closed.unknown-routes-are-problems"),
        Some(&"the proxy answers unknown paths (fixture)")
    );
    for (name, text, says) in [
        (
            "unknown.yaml",
            "expected_failures:\n  - check: replay.no-such-check\n    reason: r\n",
            "is not a check of this catalogue",
        ),
        (
            "no-reason.yaml",
            "expected_failures:\n  - check: replay.nonce-reuse-rejected\n    reason: ' '\n",
            "has no reason",
        ),
        (
            "twice.yaml",
            "expected_failures:\n  - {check: replay.nonce-reuse-rejected, reason: a}\n  - {check: replay.nonce-reuse-rejected, reason: b}\n",
            "declared twice",
        ),
        ("inline-token.yaml", "admin_token_a: eyJ.fixture.not-a-secret\n", "unknown field"),
    ] {
        let err = Profile::load(&write(dir.path(), name, text), &CATALOGUE).expect_err(name);
        assert!(err.contains(says), "{name}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_failure_is_expected_and_certifiable_while_an_undeclared_or_stale_one_is_not() {
    let platform = local::start(None, Some(Fault::PlainTextNotFound)).await.expect("local platform");
    let checks = runner::selected(&CATALOGUE, Target::Local, &[]);
    let report = runner::run(&platform.ctx, Target::Local, &checks, false).await;

    let none = BTreeMap::new();
    let problems = profile::certification_problems(&report, Target::Local, &none);
    assert_eq!(
        problems,
        ["fail-closed.unknown-routes-are-problems: failed, and the profile does not declare it"]
    );

    let declared: BTreeMap<&str, &str> = [
        ("fail-closed.unknown-routes-are-problems", "fixture: the proxy answers unknown paths"),
        ("replay.nonce-reuse-rejected", "fixture: stale"),
    ]
    .into();
    let mut certified = report.clone();
    profile::apply_expected_failures(&mut certified, &declared);
    let unknown_routes =
        certified.results.iter().find(|r| r.id == "fail-closed.unknown-routes-are-problems").expect("ran");
    assert!(
        matches!(&unknown_routes.outcome, Outcome::ExpectedFailure(d) if d.contains("declared: fixture: the proxy answers unknown paths"))
    );
    certified.certification = profile::certification_problems(&certified, Target::Local, &declared);
    assert_eq!(
        certified.certification,
        [
            "replay.nonce-reuse-rejected: declared as an expected failure but passed; remove it from the profile"
        ]
    );
    assert!(!certified.passed());
    assert_eq!(certified.total().expected_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certified_runs_exit_0_on_the_local_target_and_1_over_http_when_a_runnable_check_was_not_requested() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_oneprotect-conformance");
    let local_profile = write(dir.path(), "local.yaml", "target: local\n");
    let out = Command::new(bin)
        .args(["run", "--certified", "--profile"])
        .arg(&local_profile)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    let platform = local::start(None, None).await.expect("local platform");
    write(dir.path(), "a.jwt", platform.ctx.admin(Tenant::A));
    write(dir.path(), "b.jwt", platform.ctx.admin(Tenant::B));
    let http_profile = write(
        dir.path(),
        "http.yaml",
        &format!(
            "target: http\nbase_url: {}\nadmin_token_a_file: a.jwt\nadmin_token_b_file: b.jwt\n",
            platform.ctx.base
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin).args(["run", "--certified", "--profile"]).arg(&http_profile).output().expect("run")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let refusals: Vec<&str> = stdout.lines().filter(|l| l.starts_with("NOT CERTIFIED: ")).collect();
    assert_eq!(
        refusals,
        [
            "NOT CERTIFIED: expiry.enrollment-token-expires-in-real-time: the target could run it but this run did not (waits 61 s of real time; run with --allow-waits)"
        ]
    );
}
