//! Reports: human (one line per check, counts per family), JSON and JUnit XML.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::{Family, Outcome, Target};

#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub id: String,
    pub family: Family,
    pub promise: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub duration_ms: u128,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub run_id: String,
    pub target: Target,
    pub results: Vec<CheckResult>,
    /// Objects the run could not clean up (http target).
    pub cleanup_failures: Vec<String>,
    /// What kept the run itself from working as planned (a list it could
    /// not read to its end before the checks).
    pub run_errors: Vec<String>,
    /// What a reviewer should know that is no verdict: how often the
    /// deployment rate-limited the run, and how long the run waited.
    pub notes: Vec<String>,
    /// With `--certified`: why the run cannot certify its target (empty
    /// when it can).
    pub certification: Vec<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    /// Every request and answer of each check, unredacted: only the
    /// evidence bundle writes them, redacted.
    #[serde(skip)]
    pub transcripts: BTreeMap<String, Vec<crate::ctx::Exchange>>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    /// Skipped or not requested.
    pub skipped: usize,
    pub expected_failures: usize,
}

impl Report {
    pub fn counts(&self) -> BTreeMap<&'static str, Counts> {
        let mut out = BTreeMap::new();
        for f in Family::ALL {
            out.insert(f.as_str(), Counts::default());
        }
        for r in &self.results {
            let c = out.entry(r.family.as_str()).or_default();
            match r.outcome {
                Outcome::Pass => c.passed += 1,
                Outcome::Fail(_) => c.failed += 1,
                Outcome::Skip(_) | Outcome::NotRequested(_) => c.skipped += 1,
                Outcome::ExpectedFailure(_) => c.expected_failures += 1,
            }
        }
        out
    }

    pub fn total(&self) -> Counts {
        self.counts().values().fold(Counts::default(), |a, c| Counts {
            passed: a.passed + c.passed,
            failed: a.failed + c.failed,
            skipped: a.skipped + c.skipped,
            expected_failures: a.expected_failures + c.expected_failures,
        })
    }

    /// Exit 0 only when every applicable check passed and cleanup succeeded.
    pub fn passed(&self) -> bool {
        self.total().failed == 0
            && self.cleanup_failures.is_empty()
            && self.run_errors.is_empty()
            && self.certification.is_empty()
            && self.total().passed > 0
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "OneProtect conformance, target {:?}, run {}", self.target, self.run_id);
        for r in &self.results {
            let (tag, detail) = match &r.outcome {
                Outcome::Pass => ("PASS", String::new()),
                Outcome::Fail(d) => ("FAIL", format!("\n       {d}")),
                Outcome::Skip(d) => ("SKIP", format!(" ({d})")),
                Outcome::NotRequested(d) => ("SKIP", format!(" (not requested: {d})")),
                Outcome::ExpectedFailure(d) => ("XFAIL", format!("\n       {d}")),
            };
            let _ = writeln!(out, "{tag} {} — {}{detail}", r.id, r.promise);
        }
        let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &self.results {
            if let Outcome::Skip(why) | Outcome::NotRequested(why) = &r.outcome {
                *skipped.entry(why.as_str()).or_default() += 1;
            }
        }
        for (why, n) in &skipped {
            let _ = writeln!(out, "skipped {n}: {why}");
        }
        let _ = writeln!(out, "\n| family | passed | failed | skipped |\n| --- | --- | --- | --- |");
        for (family, c) in self.counts() {
            let _ = writeln!(out, "| {family} | {} | {} | {} |", c.passed, c.failed, c.skipped);
        }
        let t = self.total();
        for f in &self.cleanup_failures {
            let _ = writeln!(out, "CLEANUP FAILED: {f}");
        }
        for e in &self.run_errors {
            let _ = writeln!(out, "RUN ERROR: {e}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "NOTE: {n}");
        }
        for c in &self.certification {
            let _ = writeln!(out, "NOT CERTIFIED: {c}");
        }
        if t.expected_failures > 0 {
            let _ = writeln!(out, "\n{} expected failure(s), declared by the profile", t.expected_failures);
        }
        let _ = writeln!(out, "\n{} passed, {} failed, {} skipped", t.passed, t.failed, t.skipped);
        out
    }

    pub fn json(&self) -> String {
        let value = serde_json::json!({ "report": self, "counts": self.counts(), "total": self.total(), "passed": self.passed() });
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }

    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let t = self.total();
        let _ = writeln!(
            out,
            "<testsuites name=\"oneprotect-conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            self.results.len(),
            t.failed,
            t.skipped
        );
        for family in Family::ALL {
            let results: Vec<_> = self.results.iter().filter(|r| r.family == family).collect();
            let failures = results.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).count();
            let skipped = results
                .iter()
                .filter(|r| {
                    matches!(
                        r.outcome,
                        Outcome::Skip(_) | Outcome::NotRequested(_) | Outcome::ExpectedFailure(_)
                    )
                })
                .count();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
                family.as_str(),
                results.len()
            );
            for r in results {
                let secs = r.duration_ms as f64 / 1000.0;
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{}\" time=\"{secs:.3}\">",
                    family.as_str(),
                    xml(&r.id)
                );
                match &r.outcome {
                    Outcome::Pass => {}
                    Outcome::Fail(d) => {
                        let _ = write!(out, "<failure message=\"{}\">{}</failure>", xml(&r.promise), xml(d));
                    }
                    Outcome::Skip(d) | Outcome::NotRequested(d) | Outcome::ExpectedFailure(d) => {
                        let _ = write!(out, "<skipped message=\"{}\"/>", xml(d));
                    }
                }
                let _ = writeln!(out, "</testcase>");
            }
            let _ = writeln!(out, "  </testsuite>");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&apos;".to_owned(),
            other => other.to_string(),
        })
        .collect()
}
