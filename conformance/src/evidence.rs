//! The evidence bundle a reviewer attaches to an audit: every request and
//! answer of every check with each secret replaced by a labelled keyed
//! hash, the JSON report, a self-contained HTML report and a manifest
//! whose digests `verify` re-checks.
//!
//! Secrets become `<enrollment_token:3f2a9c01b7e4>`: the label says what it
//! was, and the same secret gets the same tag everywhere in the bundle so a
//! reader can follow it from the issue answer to the exchange. The tag is
//! an HMAC under a key drawn for the run and never written, so a tag cannot
//! be tested against guesses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ctx::Exchange;
use crate::report::Report;
use crate::{Family, Outcome};

pub const MANIFEST: &str = "manifest.json";
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_HTML: &str = "report.html";
pub const TRANSCRIPTS: &str = "transcripts";

/// Bodies' fields that hold a secret whatever their value looks like.
const SECRET_FIELDS: &[&str] =
    &["enrollment_token", "csr_pem", "nonce", "token", "hardware_fingerprint_hash", "private_key_pem"];

/// What the manifest says about the run besides its files.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub target_url: Option<String>,
    pub tls_certificate_sha256: Option<String>,
    pub profile: Option<Value>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of the catalogue as a reviewer sees it: ids, families, targets
/// and promises, in order.
pub fn catalogue_sha256() -> String {
    let rows: Vec<String> = crate::checks::CATALOGUE
        .iter()
        .map(|c| format!("{}\t{}\t{:?}\t{}", c.id, c.family.as_str(), c.targets, c.promise))
        .collect();
    sha256_hex(rows.join("\n").as_bytes())
}

/// Replaces secrets with labelled keyed hashes.
pub struct Redactor {
    key: [u8; 32],
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: &[String]) -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        let mut secrets: Vec<String> = secrets.iter().filter(|s| s.len() >= 16).cloned().collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { key, secrets }
    }

    fn label(secret: &str) -> &'static str {
        if secret.starts_with("opet_") {
            "enrollment_token"
        } else if secret.starts_with("oprt.") {
            "runtime_token"
        } else if secret.starts_with("eyJ") && secret.matches('.').count() == 2 {
            "admin_jwt"
        } else if secret.contains("BEGIN CERTIFICATE REQUEST") || secret.len() > 100 {
            "csr"
        } else if secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            "fingerprint_hash"
        } else if secret.len() == 32 {
            "nonce"
        } else {
            "secret"
        }
    }

    pub fn tag(&self, secret: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(secret.as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("<{}:{hex}>", Self::label(secret))
    }

    /// Every known secret in `text` replaced by its tag.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), &self.tag(s));
            }
        }
        out
    }

    /// A body: JSON fields that hold secrets are tagged whatever their
    /// value, then every known secret anywhere.
    pub fn body(&self, body: &str) -> Value {
        match serde_json::from_str::<Value>(body) {
            Ok(mut v) => {
                self.fields(&mut v);
                serde_json::from_str(&self.text(&v.to_string())).unwrap_or(Value::Null)
            }
            Err(_) => Value::String(self.text(body)),
        }
    }

    fn fields(&self, v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match v {
                        Value::String(s) if SECRET_FIELDS.contains(&k.as_str()) => {
                            *v = Value::String(self.tag(s))
                        }
                        other => self.fields(other),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.fields(i)),
            _ => {}
        }
    }

    pub fn headers(&self, headers: &[(String, String)]) -> Value {
        let map: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                let value = match v.strip_prefix("Bearer ") {
                    Some(token) if k.eq_ignore_ascii_case("authorization") => {
                        format!("Bearer {}", self.tag(token))
                    }
                    _ => self.text(v),
                };
                (k.clone(), Value::String(value))
            })
            .collect();
        Value::Object(map)
    }

    pub fn exchange(&self, e: &Exchange) -> Value {
        json!({
            "request": {"method": e.method, "path": self.text(&e.path), "headers": self.headers(&e.request_headers),
                        "body": e.request_body.as_deref().map(|b| self.body(b))},
            "response": {"status": e.status, "headers": self.headers(&e.response_headers), "body": self.body(&e.response_body)},
        })
    }
}

fn file_name(check_id: &str) -> String {
    format!("{check_id}.json")
}

/// Writes the bundle into `dir` (created if missing, refused if not empty).
pub fn write(dir: &Path, report: &Report, secrets: &[String], facts: &RunFacts) -> Result<(), String> {
    if dir.exists() && std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.next().is_some()
    {
        return Err(format!("{} is not empty; the evidence bundle goes into a new directory", dir.display()));
    }
    std::fs::create_dir_all(dir.join(TRANSCRIPTS)).map_err(|e| format!("{}: {e}", dir.display()))?;
    let redactor = Redactor::new(secrets);
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |name: String, bytes: Vec<u8>| -> Result<(), String> {
        let path = dir.join(&name);
        std::fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        files.insert(name, sha256_hex(&bytes));
        Ok(())
    };
    let mut redacted: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (id, exchanges) in &report.transcripts {
        let items: Vec<Value> = exchanges.iter().map(|e| redactor.exchange(e)).collect();
        let text = serde_json::to_vec_pretty(&json!({"check": id, "exchanges": items})).unwrap_or_default();
        put(format!("{TRANSCRIPTS}/{}", file_name(id)), text)?;
        redacted.insert(id, items);
    }
    put(REPORT_JSON.into(), redactor.text(&report.json()).into_bytes())?;
    put(REPORT_HTML.into(), redactor.text(&html(report, &redacted)).into_bytes())?;
    let outcomes: BTreeMap<&str, &Outcome> =
        report.results.iter().map(|r| (r.id.as_str(), &r.outcome)).collect();
    let manifest = json!({
        "suite": {"name": "oneprotect-conformance", "version": env!("CARGO_PKG_VERSION")},
        "catalogue_sha256": catalogue_sha256(),
        "contract_sha256": oneprotect_contracts::contract::SPEC_SHA256,
        "target": {"kind": report.target, "url": facts.target_url, "tls_certificate_sha256": facts.tls_certificate_sha256},
        "profile": facts.profile,
        "run_id": report.run_id,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "passed": report.passed(),
        "outcomes": outcomes,
        "files": files,
    });
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    std::fs::write(dir.join(MANIFEST), text).map_err(|e| format!("{MANIFEST}: {e}"))
}

/// Every problem `verify` finds, one line each.
pub fn verify(dir: &Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read(dir.join(MANIFEST)).map_err(|e| format!("{}: {e}", dir.join(MANIFEST).display()))?;
    let manifest: Value =
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST} is not JSON: {e}"))?;
    let files = manifest["files"].as_object().ok_or(format!("{MANIFEST} lists no files"))?;
    let mut problems = Vec::new();
    for (name, digest) in files {
        let path = safe_join(dir, name)
            .ok_or_else(|| format!("{MANIFEST} names a path outside the bundle: {name}"))?;
        match std::fs::read(&path) {
            Ok(bytes) if Some(sha256_hex(&bytes).as_str()) == digest.as_str() => {}
            Ok(_) => problems.push(format!("{name}: changed (its SHA-256 differs from the manifest)")),
            Err(_) => problems.push(format!("{name}: missing")),
        }
    }
    for path in walk(dir) {
        let name = path.strip_prefix(dir).map(|p| p.to_string_lossy().replace('\\', "/")).unwrap_or_default();
        if name != MANIFEST && !files.contains_key(&name) {
            problems.push(format!("{name}: not in the manifest"));
        }
    }
    Ok(problems)
}

fn safe_join(dir: &Path, name: &str) -> Option<PathBuf> {
    let relative = Path::new(name);
    relative.components().all(|c| matches!(c, std::path::Component::Normal(_))).then(|| dir.join(relative))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#1b1b1b;padding:0 1em}\
h1{font-size:1.6em}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}\
.pass{color:#0a6b2a}.fail{color:#b00020;font-weight:bold}.skip{color:#7a5c00}\
details{margin:.4em 0 .8em 1em}pre{background:#f5f5f5;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}\
.check{border-top:1px solid #ddd;padding:.5em 0}.id{font-family:monospace;font-weight:bold}";

/// The self-contained HTML report: no script, no external resource.
pub fn html(report: &Report, transcripts: &BTreeMap<&str, Vec<Value>>) -> String {
    let total = report.total();
    let verdict = if report.passed() {
        "<span class=\"pass\">PASSED</span>"
    } else {
        "<span class=\"fail\">FAILED</span>"
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>OneProtect conformance {}</title><style>{STYLE}</style></head><body>",
        esc(&report.run_id)
    );
    let _ = write!(
        out,
        "<h1>OneProtect conformance: {verdict}</h1><p>Run <code>{}</code>, target <b>{:?}</b>, {} to {}.</p>",
        esc(&report.run_id),
        report.target,
        report.started_at.to_rfc3339(),
        report.finished_at.to_rfc3339()
    );
    let _ = write!(
        out,
        "<p id=\"totals\">{} passed, {} failed, {} skipped, {} expected failures</p>",
        total.passed, total.failed, total.skipped, total.expected_failures
    );
    out.push_str("<table id=\"families\"><tr><th>family</th><th>passed</th><th>failed</th><th>skipped</th><th>expected failures</th></tr>");
    for (family, c) in report.counts() {
        let _ = write!(
            out,
            "<tr><td>{family}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.passed, c.failed, c.skipped, c.expected_failures
        );
    }
    out.push_str("</table>");
    for note in report.notes.iter().chain(&report.run_errors).chain(&report.cleanup_failures) {
        let _ = write!(out, "<p class=\"skip\">{}</p>", esc(note));
    }
    for family in Family::ALL {
        let _ = write!(out, "<h2>{}</h2>", family.as_str());
        for r in report.results.iter().filter(|r| r.family == family) {
            let (class, tag, detail) = match &r.outcome {
                Outcome::Pass => ("pass", "PASS", String::new()),
                Outcome::Fail(d) => ("fail", "FAIL", d.clone()),
                Outcome::Skip(d) => ("skip", "SKIP", d.clone()),
                Outcome::NotRequested(d) => ("skip", "SKIP", format!("not requested: {d}")),
                Outcome::ExpectedFailure(d) => ("skip", "EXPECTED FAILURE", d.clone()),
            };
            let _ = write!(
                out,
                "<div class=\"check\" id=\"{}\"><span class=\"{class}\">{tag}</span> <span class=\"id\">{}</span> ({} ms)<br>{}",
                esc(&r.id),
                esc(&r.id),
                r.duration_ms,
                esc(&r.promise)
            );
            if !detail.is_empty() {
                let _ = write!(out, "<br><span class=\"{class}\">{}</span>", esc(&detail));
            }
            if let Some(items) = transcripts.get(r.id.as_str()).filter(|t| !t.is_empty()) {
                let _ = write!(out, "<details><summary>{} request(s)</summary>", items.len());
                for item in items {
                    let title = format!(
                        "{} {} → {}",
                        item["request"]["method"].as_str().unwrap_or(""),
                        item["request"]["path"].as_str().unwrap_or(""),
                        item["response"]["status"]
                    );
                    let _ = write!(
                        out,
                        "<details><summary>{}</summary><pre>{}</pre></details>",
                        esc(&title),
                        esc(&serde_json::to_string_pretty(item).unwrap_or_default())
                    );
                }
                out.push_str("</details>");
            }
            out.push_str("</div>");
        }
    }
    out.push_str("</body></html>\n");
    out
}
