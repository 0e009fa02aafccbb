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
        .filter(|c| {
            c.targets.contains(&target) || (target == Target::Http && c.targets.contains(&Target::Local))
        })
        .filter(|c| only.is_empty() || only.iter().any(|o| o == c.id || o == c.family.as_str()))
        .collect()
}

/// Runs one check with its requests attributed to it.
async fn run_one(ctx: &Ctx, target: Target, check: &Check) -> (CheckResult, Vec<crate::ctx::Exchange>) {
    let started = Instant::now();
    let outcome = if check.targets.contains(&target) {
        let running = crate::ctx::CURRENT_CHECK.scope(check.id, (check.run)(ctx));
        match tokio::time::timeout(ctx.check_timeout, running).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Fail(format!(
                "the check did not finish within {} s; it is stopped and the run goes on",
                ctx.check_timeout.as_secs()
            )),
        }
    } else {
        Outcome::Skip(
            "needs the local target (a controllable clock, the secrets or storage inspection)".into(),
        )
    };
    let result = CheckResult {
        id: check.id.to_owned(),
        family: check.family,
        promise: check.promise.to_owned(),
        outcome,
        duration_ms: started.elapsed().as_millis(),
    };
    (result, ctx.take_exchanges_of(check.id))
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
    let mut notes = Vec::new();
    if target == Target::Http && ctx.agent_tls.is_some() {
        // Only over TLS can agents present certificates: the policy is probed there.
        match ctx.probe_agent_auth().await {
            Ok(auth) => notes.push(format!(
                "the deployment authenticates agents by {} (found with one enrolled agent's heartbeats){}",
                auth.as_str(),
                if auth.needs_certificate() { "; agent calls present the agent's certificate" } else { "" }
            )),
            Err(e) => run_errors.push(format!("finding how the deployment authenticates agents: {e}")),
        }
    }
    ctx.take_exchanges();
    // Against a deployment, checks that wait in real time start first and
    // run beside the others, so the run lasts about as long as its longest
    // wait. The local target's waits move its one clock, which the other
    // checks rely on: there every check takes its turn.
    let beside = target == Target::Http && ctx.allow_waits;
    let (waiting, ordinary): (Vec<&Check>, Vec<&Check>) =
        checks.iter().copied().partition(|c| beside && c.waits && c.targets.contains(&target));
    let waits = async {
        let mut out = Vec::new();
        for check in &waiting {
            out.push(run_one(ctx, target, check).await);
        }
        out
    };
    let sequential = async {
        let mut out = Vec::new();
        for (i, check) in ordinary.iter().enumerate() {
            if tty {
                eprint!("\r[{}/{}] {:<60}", i + 1, ordinary.len(), check.id);
            }
            let result = run_one(ctx, target, check).await;
            if tty {
                let tag = match &result.0.outcome {
                    Outcome::Pass => "pass",
                    Outcome::Fail(_) => "FAIL",
                    _ => "skip",
                };
                eprintln!("\r[{}/{}] {tag} {:<60}", i + 1, ordinary.len(), check.id);
            }
            out.push(result);
        }
        out
    };
    let (waited, ran) = tokio::join!(waits, sequential);
    let mut by_id: std::collections::BTreeMap<String, (CheckResult, Vec<crate::ctx::Exchange>)> =
        waited.into_iter().chain(ran).map(|(r, t)| (r.id.clone(), (r, t))).collect();
    for check in checks {
        if let Some((result, transcript)) = by_id.remove(check.id) {
            transcripts.insert(check.id.to_owned(), transcript);
            results.push(result);
        }
    }
    // The agent target talks to its own mock platforms; only platform
    // targets have objects to revoke.
    let cleanup_failures = if target == Target::Agent { Vec::new() } else { ctx.cleanup().await };
    let throttling = ctx.throttling();
    if throttling.answers > 0 {
        notes.push(format!(
            "the deployment answered 429 rate_limited {} time(s); the run waited {} s in all, as Retry-After asked, and sent those requests again",
            throttling.answers,
            throttling.waited.as_secs()
        ));
    }
    ctx.take_exchanges();
    Report {
        run_id: ctx.run_id.clone(),
        target,
        results,
        cleanup_failures,
        run_errors,
        notes,
        certification: Vec::new(),
        started_at,
        finished_at: chrono::Utc::now(),
        transcripts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CheckFuture, Family};

    fn never(_: &Ctx) -> CheckFuture<'_> {
        Box::pin(std::future::pending())
    }

    fn passes(_: &Ctx) -> CheckFuture<'_> {
        Box::pin(async { Outcome::Pass })
    }

    const STUCK: Check = Check {
        id: "fail-closed.stuck",
        family: Family::FailClosed,
        promise: "never answers",
        targets: &[Target::Http],
        waits: false,
        run: never,
    };
    const AFTER: Check = Check {
        id: "fail-closed.after",
        family: Family::FailClosed,
        promise: "answers",
        targets: &[Target::Http],
        waits: false,
        run: passes,
    };

    #[tokio::test(start_paused = true)]
    async fn a_check_that_never_finishes_fails_at_the_timeout_and_the_run_goes_on() {
        let mut ctx = Ctx::new(
            "http://127.0.0.1:9",
            reqwest::Client::new(),
            String::new().into(),
            String::new().into(),
            crate::ctx::LocalPowers::default(),
        );
        ctx.check_timeout = std::time::Duration::from_secs(7);
        let (stuck, _) = run_one(&ctx, Target::Http, &STUCK).await;
        match stuck.outcome {
            Outcome::Fail(message) => assert!(message.contains("within 7 s"), "{message}"),
            other => panic!("a stuck check ended as {other:?}"),
        }
        assert_eq!(run_one(&ctx, Target::Http, &AFTER).await.0.outcome, Outcome::Pass);
    }
}
