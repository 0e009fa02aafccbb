//! The catalogue. Ids are stable: reports, CI and reviewers refer to them.
//!
//! A check is one `async fn(&Ctx) -> Checked` in its family's module, with
//! its catalogue row in that module's `CHECKS`; `?` on a helper's error
//! fails it, `?` on `ctx.needs(…)` skips it. Its faulty platform (or agent)
//! variant lives in `faults.rs`, whose self-test proves the check can fail.

use std::sync::LazyLock;

use crate::{Check, Target};

const BOTH: &[Target] = &[Target::Http, Target::Local];
const LOCAL: &[Target] = &[Target::Local];
const AGENT: &[Target] = &[Target::Agent];

/// A catalogue row: id, family, targets, promise and the async fn that
/// keeps it.
macro_rules! check {
    ($id:literal, $family:ident, $targets:expr, $promise:literal, $f:ident) => {
        check!($id, $family, $targets, $promise, $f, waits: false)
    };
    ($id:literal, $family:ident, $targets:expr, $promise:literal, $f:ident, waits: $waits:expr) => {
        $crate::Check {
            id: $id,
            family: $crate::Family::$family,
            promise: $promise,
            targets: $targets,
            waits: $waits,
            run: {
                fn run(ctx: &$crate::Ctx) -> $crate::CheckFuture<'_> {
                    Box::pin(async move { $crate::outcome($f(ctx).await) })
                }
                run
            },
        }
    };
}

mod agent;
mod expiry;
mod fail_closed;
mod isolation;
mod pki;
mod redaction;
mod replay;

/// Every check, in the order a run takes them: the rate limit after every
/// other exchange, then the scans of what the run left behind.
pub static CATALOGUE: LazyLock<Vec<Check>> = LazyLock::new(|| {
    [
        redaction::CHECKS,
        replay::CHECKS,
        expiry::CHECKS,
        isolation::CHECKS,
        fail_closed::CHECKS,
        pki::CHECKS,
        agent::CHECKS,
        fail_closed::RATE_LIMIT_CHECKS,
        redaction::FINAL_CHECKS,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
});
