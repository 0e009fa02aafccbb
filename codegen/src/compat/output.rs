//! The report as text for people, JSON for tools, JUnit XML for CI test
//! views and GitHub workflow annotations.

use std::fmt::Write as _;

use clap::ValueEnum;
use serde_json::json;

use super::gate::Refusal;
use super::{Change, Level, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    Junit,
    Github,
}

/// Renders the report. `root` prefixes file names (`specs`); `refusals`,
/// when the gate ran, marks the changes it refuses.
pub fn render(format: Format, report: &Report, root: &str, refusals: Option<&[Refusal]>) -> String {
    match format {
        Format::Human => human(report, root, refusals),
        Format::Json => json(report, root, refusals),
        Format::Junit => junit(report, root, refusals),
        Format::Github => github(report, root, refusals),
    }
}

fn refusal_of<'r>(refusals: Option<&'r [Refusal]>, c: &Change) -> Option<&'r Refusal> {
    refusals?.iter().find(|r| &r.change == c)
}

fn place(root: &str, c: &Change) -> String {
    let rev = c.revision.as_ref().map(|l| format!("{root}/{}:{}", c.file, l.line));
    let base = c.base.as_ref().map(|l| format!("base {}:{}", c.file, l.line));
    match (rev, base) {
        (Some(r), Some(b)) => format!("{r} ({b})"),
        (Some(r), None) => r,
        (None, Some(b)) => b,
        (None, None) => format!("{root}/{}", c.file),
    }
}

pub fn summary(report: &Report) -> String {
    format!(
        "{} breaking, {} unclassified, {} non-breaking, {} informational",
        report.count(Level::Breaking),
        report.count(Level::Unclassified),
        report.count(Level::NonBreaking),
        report.count(Level::Info)
    )
}

fn human(report: &Report, root: &str, refusals: Option<&[Refusal]>) -> String {
    let mut out = format!("contract changes from {} to {}\n", report.base, report.revision);
    for c in &report.changes {
        let _ = writeln!(out, "{:<12} {:<40} {}", c.level.as_str().to_uppercase(), c.rule, place(root, c));
        let _ = writeln!(out, "    {}: {}", c.context, c.detail);
        let _ = writeln!(out, "    why: {}", c.why);
        if let Some(r) = refusal_of(refusals, c) {
            let _ = writeln!(out, "    refused: {}", r.resolution);
        }
    }
    let _ = write!(out, "{}", summary(report));
    if let Some(r) = refusals {
        let _ = write!(out, "; {} refused by the versioning policy", r.len());
    }
    out.push('\n');
    out
}

fn json(report: &Report, root: &str, refusals: Option<&[Refusal]>) -> String {
    let changes: Vec<_> = report
        .changes
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            v["path"] = json!(format!("{root}/{}", c.file));
            if let Some(r) = refusal_of(refusals, c) {
                v["refused"] = json!(r.resolution);
            }
            v
        })
        .collect();
    let doc = json!({
        "base": report.base,
        "revision": report.revision,
        "summary": {
            "breaking": report.count(Level::Breaking),
            "unclassified": report.count(Level::Unclassified),
            "non_breaking": report.count(Level::NonBreaking),
            "info": report.count(Level::Info),
            "refused": refusals.map(<[Refusal]>::len),
        },
        "changes": changes,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t') => format!("&#{};", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// One test case per change; a refused change (or, without the gate, a
/// breaking or unclassified one) is a failure.
fn junit(report: &Report, root: &str, refusals: Option<&[Refusal]>) -> String {
    let failed = |c: &Change| match refusals {
        Some(_) => refusal_of(refusals, c).is_some(),
        None => matches!(c.level, Level::Breaking | Level::Unclassified),
    };
    let failures = report.changes.iter().filter(|c| failed(c)).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"contract-compat\" tests=\"{}\" failures=\"{failures}\">",
        report.changes.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
        xml(&format!("{} -> {}", report.base, report.revision)),
        report.changes.len()
    );
    for c in &report.changes {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\"",
            xml(&c.rule),
            xml(&format!("{} {}", place(root, c), c.detail))
        );
        if failed(c) {
            let message = refusal_of(refusals, c).map_or(c.why.clone(), |r| r.resolution.clone());
            let _ = writeln!(
                out,
                ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                xml(&message),
                c.level.as_str(),
                xml(&c.why)
            );
        } else {
            out.push_str("/>\n");
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// GitHub workflow commands; `%`, CR and LF are escaped as the runner requires.
fn github(report: &Report, root: &str, refusals: Option<&[Refusal]>) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let prop = |s: &str| esc(s).replace(':', "%3A").replace(',', "%2C");
    let mut out = String::new();
    for c in &report.changes {
        let refusal = refusal_of(refusals, c);
        let command = match (refusals.is_some(), refusal, c.level) {
            (true, Some(_), _) | (false, _, Level::Breaking | Level::Unclassified) => "error",
            (_, _, Level::Breaking | Level::Unclassified) => "warning",
            _ => "notice",
        };
        let line = c.revision.as_ref().or(c.base.as_ref()).map_or(1, |l| l.line);
        let mut message = format!("{}: {} ({})", c.context, c.detail, c.why);
        if let Some(r) = refusal {
            message.push_str(&format!(" Refused: {}", r.resolution));
        }
        let _ = writeln!(
            out,
            "::{command} file={},line={line},title={}::{}",
            prop(&format!("{root}/{}", c.file)),
            prop(&c.rule),
            esc(&message)
        );
    }
    out
}
