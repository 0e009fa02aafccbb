//! Compatibility of two versions of `specs/`: every difference between them
//! is judged by a rule (breaking, non-breaking or informational), or reported
//! as unclassified; nothing is dropped.
//!
//! Data is judged in the direction it flows. A request schema may only
//! widen (the new server accepts whatever an old client sends); a response
//! schema may only narrow (an old client understands whatever the new server
//! returns), except that an added optional response property is safe because
//! the generated clients are tolerant readers. An event schema is both: old
//! events in a stream must stay valid and old consumers must read new
//! events, so it must stay fully compatible or move to a new version file.
//!
//! `rules` is the catalogue, `openapi`/`asyncapi`/`schema` find the changes,
//! `rawdiff` reports what no rule examined, `gate` applies the versioning
//! policy and `output` renders the report.

pub mod gate;
pub mod output;
pub mod rules;

mod asyncapi;
mod openapi;
mod rawdiff;
mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use crate::load::{ASYNCAPI_FILE, EVENTS_DIR, OPENAPI_FILE};
use crate::locate::LineIndex;
pub use rules::Level;

/// One contract document of a version.
#[derive(Debug, Clone)]
pub struct Doc {
    pub value: Value,
    pub lines: LineIndex,
}

/// One version of `specs/`: its OpenAPI, AsyncAPI and event schema documents.
#[derive(Debug, Clone)]
pub struct Spec {
    /// How the report names this version: a directory or `<ref>:<path>`.
    pub label: String,
    /// Path relative to `specs/` (`openapi.yaml`, `events/<file>`) → document.
    pub files: BTreeMap<String, Doc>,
}

impl Spec {
    /// Reads a `specs/` directory.
    pub fn from_dir(dir: &Path) -> Result<Spec, String> {
        let mut texts = Vec::new();
        for name in [OPENAPI_FILE, ASYNCAPI_FILE] {
            let path = dir.join(name);
            if path.exists() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                texts.push((name.to_string(), text));
            }
        }
        let events = dir.join(EVENTS_DIR);
        if events.is_dir() {
            let mut names: Vec<String> = std::fs::read_dir(&events)
                .map_err(|e| format!("cannot list {}: {e}", events.display()))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter(|n| n.ends_with(".schema.json"))
                .collect();
            names.sort();
            for n in names {
                let path = events.join(&n);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                texts.push((format!("{EVENTS_DIR}/{n}"), text));
            }
        }
        Spec::from_texts(dir.display().to_string(), texts)
    }

    /// Reads `specs_dir` as it was at git revision `rev` of the repository
    /// that holds it.
    pub fn from_git(specs_dir: &Path, rev: &str) -> Result<Spec, String> {
        let git = |args: &[&str]| -> Result<String, String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(specs_dir)
                .args(args)
                .output()
                .map_err(|e| format!("cannot run git: {e}"))?;
            if out.status.success() {
                String::from_utf8(out.stdout).map_err(|_| "git printed non-UTF-8 output".to_string())
            } else {
                Err(format!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        let prefix = git(&["rev-parse", "--show-prefix"])?.trim().to_string();
        git(&["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")]).map_err(|_| {
            format!(
                "`{rev}` is neither a directory nor a git revision of the repository holding {}",
                specs_dir.display()
            )
        })?;
        let listing = git(&["ls-tree", "-r", "--full-name", "--name-only", rev, "--", "."])?;
        let mut texts = Vec::new();
        for full in listing.lines() {
            let Some(rel) = full.strip_prefix(prefix.as_str()) else { continue };
            let wanted = rel == OPENAPI_FILE
                || rel == ASYNCAPI_FILE
                || (rel.starts_with(&format!("{EVENTS_DIR}/"))
                    && rel.ends_with(".schema.json")
                    && !rel[EVENTS_DIR.len() + 1..].contains('/'));
            if wanted {
                texts.push((rel.to_string(), git(&["show", &format!("{rev}:{full}")])?));
            }
        }
        Spec::from_texts(format!("{rev}:{}", prefix.trim_end_matches('/')), texts)
    }

    /// `--base` is a directory when one exists at that path, else a git revision.
    pub fn from_dir_or_git(base: &str, specs_dir: &Path) -> Result<Spec, String> {
        let path = Path::new(base);
        if path.is_dir() { Spec::from_dir(path) } else { Spec::from_git(specs_dir, base) }
    }

    fn from_texts(label: String, texts: Vec<(String, String)>) -> Result<Spec, String> {
        let mut files = BTreeMap::new();
        for (name, text) in texts {
            let value: Value = if name.ends_with(".json") {
                serde_json::from_str(&text).map_err(|e| format!("{label}/{name}: not valid JSON: {e}"))?
            } else {
                serde_norway::from_str(&text).map_err(|e| format!("{label}/{name}: not valid YAML: {e}"))?
            };
            files.insert(name, Doc { value, lines: LineIndex::new(&text) });
        }
        if !files.contains_key(OPENAPI_FILE) {
            return Err(format!("{label} has no {OPENAPI_FILE}"));
        }
        Ok(Spec { label, files })
    }

    pub fn doc(&self, file: &str) -> Option<&Value> {
        self.files.get(file).map(|d| &d.value)
    }

    fn line(&self, file: &str, pointer: &str) -> usize {
        self.files.get(file).map_or(1, |d| d.lines.line_of(pointer))
    }
}

/// A place in one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub pointer: String,
    pub line: usize,
}

/// One classified difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub rule: String,
    pub level: Level,
    /// Path relative to `specs/`.
    pub file: String,
    pub base: Option<Location>,
    pub revision: Option<Location>,
    /// What the change is part of: `POST /api/v1/agents/{agent_id}/revoke request body`, `event agent.enrolled v1`.
    pub context: String,
    /// What changed, with the values.
    pub detail: String,
    /// Why the rule judges it so.
    pub why: String,
}

/// Every change between two versions, most severe first.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub base: String,
    pub revision: String,
    pub changes: Vec<Change>,
}

impl Report {
    pub fn count(&self, level: Level) -> usize {
        self.changes.iter().filter(|c| c.level == level).count()
    }
}

/// Compares two versions of `specs/`.
pub fn diff(base: &Spec, revision: &Spec) -> Report {
    let mut d = Differ {
        base,
        rev: revision,
        changes: Vec::new(),
        examined: BTreeSet::new(),
        examined_exact: BTreeSet::new(),
        visited: BTreeSet::new(),
    };
    openapi::diff(&mut d);
    asyncapi::diff(&mut d);
    rawdiff::report_unexamined(&mut d);
    let mut changes = std::mem::take(&mut d.changes);
    changes.sort_by(|a, b| {
        (a.level, &a.file, a.revision.as_ref().or(a.base.as_ref()).map(|l| l.line), &a.rule, &a.detail).cmp(
            &(b.level, &b.file, b.revision.as_ref().or(b.base.as_ref()).map(|l| l.line), &b.rule, &b.detail),
        )
    });
    changes.dedup_by(|a, b| {
        a.rule == b.rule
            && a.file == b.file
            && a.base == b.base
            && a.revision == b.revision
            && a.detail == b.detail
    });
    Report { base: base.label.clone(), revision: revision.label.clone(), changes }
}

/// Which pointers of which file a rule has judged, so that the raw
/// difference of the two documents can tell what no rule looked at.
struct Differ<'a> {
    base: &'a Spec,
    rev: &'a Spec,
    changes: Vec<Change>,
    /// (file, pointer): the subtree at pointer was judged.
    examined: BTreeSet<(String, String)>,
    /// (file, pointer): the value at pointer (an array whose length changed) was judged as a whole.
    examined_exact: BTreeSet<(String, String)>,
    /// Schema pairs already compared, per site: recursive schemas end, shared ones are judged once per site.
    visited: BTreeSet<(schema::Site, String, String, String)>,
}

impl Differ<'_> {
    fn examine(&mut self, file: &str, pointer: impl Into<String>) {
        self.examined.insert((file.to_string(), pointer.into()));
    }

    fn examine_exact(&mut self, file: &str, pointer: impl Into<String>) {
        self.examined_exact.insert((file.to_string(), pointer.into()));
    }

    /// Something present only in the base: judged whole, reported at its base pointer.
    fn removed(&mut self, rule: &str, file: &str, pointer: &str, context: &str, detail: String) {
        self.examine(file, pointer);
        self.emit(rule, file, Some(pointer), None, context, detail);
    }

    /// Something present only in the revision: judged whole, reported at its revision pointer.
    fn added(&mut self, rule: &str, file: &str, pointer: &str, context: &str, detail: String) {
        self.examine(file, pointer);
        self.emit(rule, file, None, Some(pointer), context, detail);
    }

    /// Records a change under `rule`; its level and reason come from the catalogue.
    fn emit(
        &mut self,
        rule: &str,
        file: &str,
        base_ptr: Option<&str>,
        rev_ptr: Option<&str>,
        context: &str,
        detail: String,
    ) {
        let (level, why) = match rules::lookup(rule) {
            Some(r) => (r.level, r.why.clone()),
            None => (
                Level::Unclassified,
                format!("`{rule}` is not in the rule catalogue; review the change by hand"),
            ),
        };
        let base = base_ptr.map(|p| Location { pointer: p.to_string(), line: self.base.line(file, p) });
        let revision = rev_ptr.map(|p| Location { pointer: p.to_string(), line: self.rev.line(file, p) });
        self.changes.push(Change {
            rule: rule.to_string(),
            level,
            file: file.to_string(),
            base,
            revision,
            context: context.to_string(),
            detail,
            why,
        });
    }
}

/// Follows local `$ref`s (`#/…`) from `value` at `pointer`; returns the
/// target and its pointer. Each `$ref` followed is marked examined: what it
/// points at is judged instead.
fn resolve<'v>(
    d: &mut Differ,
    file: &str,
    root: &'v Value,
    value: &'v Value,
    pointer: String,
) -> (&'v Value, String) {
    let (mut v, mut p) = (value, pointer);
    for _ in 0..32 {
        let Some(target) = v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) else {
            break;
        };
        d.examine(file, format!("{p}/$ref"));
        match root.pointer(target) {
            Some(next) => {
                v = next;
                p = target.to_string();
            }
            None => break,
        }
    }
    (v, p)
}

/// `info.version` of `file` (OpenAPI or AsyncAPI): one informational change
/// that says whether the major number went up, which the gate reads.
fn version_change(d: &mut Differ, file: &str, base: &Value, rev: &Value) {
    let (bv, rv) = (base.pointer("/info/version"), rev.pointer("/info/version"));
    d.examine(file, "/info/version");
    if bv != rv {
        let show = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("none").to_string();
        let bump = if major_version(rv) > major_version(bv) { " (a new major version)" } else { "" };
        d.emit(
            "api-version-changed",
            file,
            Some("/info/version"),
            Some("/info/version"),
            "info",
            format!("info.version went from {} to {}{bump}", show(bv), show(rv)),
        );
    }
}

/// `major` of a `major.minor.patch` version string.
pub fn major_version(v: Option<&Value>) -> Option<u64> {
    v?.as_str()?.split('.').next()?.trim_start_matches('v').parse().ok()
}
