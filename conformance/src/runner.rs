//! Runs the applicable checks in catalogue order, with a progress line per
//! check on a terminal, then cleans up.

use std::io::IsTerminal;
use std::time::Instant;

use crate::report::{CheckResult, Report};
use crate::{Check, Ctx, Outcome, Target};

/// The checks a target reports on. A live deployment (`http`) also reports
/// the platform checks that need the local target's powers, as skipped.
/// `--only` accepts a family (`replay`) or a check id (`replay.nonce-reuse-rejected`).
pub fn selected<'a>(checks: &'a [Check], target: Target, only: &[String]) -> Vec<&'a Check> {
    checks
        .iter()
        .filter(|c| c.targets.contains(&target) || (target == Target::Http && c.targets.contains(&Target::Local)))
        .filter(|c| only.is_empty() || only.iter().any(|o| o == c.id || o == c.family.as_str()))
        .collect()
}

pub async fn run(ctx: &Ctx, target: Target, checks: &[&Check], progress: bool) -> Report {
    let tty = progress && std::io::stderr().is_terminal();
    let started_at = chrono::Utc::now();
    let mut results = Vec::with_capacity(checks.len());
    let mut transcripts = std::collections::BTreeMap::new();
    let mut run_errors = Vec::new();
    if target != Target::Agent
        && let Err(e) = ctx.mark_list_starts().await
    {
        run_errors.push(format!("before the checks: {e}"));
    }
    ctx.take_exchanges();
    for (i, check) in checks.iter().enumerate() {
        if tty {
            eprint!("\r[{}/{}] {:<60}", i + 1, checks.len(), check.id);
        }
        let started = Instant::now();
        let outcome = if check.targets.contains(&target) {
            (check.run)(ctx).await
        } else {
            Outcome::Skip("needs the local target (a controllable clock, the secrets or storage inspection)".into())
        };
        if progress {
            let tag = match &outcome {
                Outcome::Pass => "pass",
                Outcome::Fail(_) => "FAIL",
                Outcome::Skip(_) => "skip",
            };
            if tty {
                eprintln!("\r[{}/{}] {tag} {:<60}", i + 1, checks.len(), check.id);
            }
        }
        transcripts.insert(check.id.to_owned(), ctx.take_exchanges());
        results.push(CheckResult {
            id: check.id.to_owned(),
            family: check.family,
            promise: check.promise.to_owned(),
            outcome,
            duration_ms: started.elapsed().as_millis(),
        });
    }
    // The agent target talks to its own mock platforms; only platform
    // targets have objects to revoke.
    let cleanup_failures = if target == Target::Agent { Vec::new() } else { ctx.cleanup().await };
    let throttling = ctx.throttling();
    let notes = if throttling.answers > 0 {
        vec![format!(
            "the deployment answered 429 rate_limited {} time(s); the run waited {} s in all, as Retry-After asked, and sent those requests again",
            throttling.answers,
            throttling.waited.as_secs()
        )]
    } else {
        Vec::new()
    };
    ctx.take_exchanges();
    Report { run_id: ctx.run_id.clone(), target, results, cleanup_failures, run_errors, notes, started_at, finished_at: chrono::Utc::now(), transcripts }
}
