//! Schema edits, judged at the site the schema is used.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

pub use super::rules::Site;
use super::{Differ, resolve};

/// Where two versions of one schema are being compared.
pub(super) struct At<'a> {
    pub file: &'a str,
    pub site: Site,
    pub context: &'a str,
}

/// Compares the schema `b` (base, at `bptr`) with `r` (revision, at `rptr`).
pub(super) fn compare(d: &mut Differ, at: &At, b: &Value, bptr: String, r: &Value, rptr: String) {
    let (base_root, rev_root) = match (d.base.doc(at.file), d.rev.doc(at.file)) {
        (Some(x), Some(y)) => (x, y),
        _ => return,
    };
    let (b, bptr) = resolve(d, at.file, base_root, b, bptr);
    let (r, rptr) = resolve(d, at.file, rev_root, r, rptr);
    if !d.visited.insert((at.site, at.file.to_string(), bptr.clone(), rptr.clone())) {
        return;
    }
    let cmp = Cmp { at, bptr: &bptr, rptr: &rptr };
    types(d, &cmp, b, r);
    enums(d, &cmp, b, r);
    extensible_enums(d, &cmp, b, r);
    bound(d, &cmp, b, r, Bound::Max);
    bound(d, &cmp, b, r, Bound::Min);
    for (keyword, smaller, larger, is_max) in [
        ("maxLength", "max-length-decreased", "max-length-increased", true),
        ("minLength", "min-length-decreased", "min-length-increased", false),
        ("maxItems", "max-items-decreased", "max-items-increased", true),
        ("minItems", "min-items-decreased", "min-items-increased", false),
    ] {
        count_limit(d, &cmp, b, r, keyword, smaller, larger, is_max);
    }
    pattern(d, &cmp, b, r);
    default(d, &cmp, b, r);
    if at.site != Site::Parameter {
        properties(d, &cmp, b, r);
    }
    if let (Some(bi), Some(ri)) = (b.get("items"), r.get("items")) {
        compare(d, at, bi, format!("{bptr}/items"), ri, format!("{rptr}/items"));
    }
}

struct Cmp<'a> {
    at: &'a At<'a>,
    bptr: &'a str,
    rptr: &'a str,
}

impl Cmp<'_> {
    /// Marks `keyword` judged in both versions.
    fn judged(&self, d: &mut Differ, keyword: &str) {
        d.examine(self.at.file, format!("{}/{keyword}", self.bptr));
        d.examine(self.at.file, format!("{}/{keyword}", self.rptr));
    }

    fn emit(&self, d: &mut Differ, kind: &str, keyword: &str, detail: String) {
        let bp = format!("{}/{keyword}", self.bptr);
        let rp = format!("{}/{keyword}", self.rptr);
        d.emit(&self.at.site.rule(kind), self.at.file, Some(&bp), Some(&rp), self.at.context, detail);
    }

    fn place(&self) -> String {
        if self.rptr.is_empty() { "the root".to_string() } else { format!("`{}`", self.rptr) }
    }
}

/// The types a schema admits, with `null` for `nullable: true` (OpenAPI
/// 3.0) or a `"null"` entry (JSON Schema), and its format.
fn type_set(s: &Value) -> (BTreeSet<String>, Option<String>) {
    let mut set: BTreeSet<String> = match s.get("type") {
        Some(Value::String(t)) => [t.clone()].into(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => BTreeSet::new(),
    };
    if s.get("nullable").and_then(Value::as_bool) == Some(true) {
        set.insert("null".to_string());
    }
    (set, s.get("format").and_then(Value::as_str).map(str::to_string))
}

fn types(d: &mut Differ, c: &Cmp, b: &Value, r: &Value) {
    for k in ["type", "nullable", "format"] {
        c.judged(d, k);
    }
    let ((mut bt, bf), (mut rt, rf)) = (type_set(b), type_set(r));
    let (bnull, rnull) = (bt.remove("null"), rt.remove("null"));
    if bt != rt || bf != rf {
        let show = |t: &BTreeSet<String>, f: &Option<String>| {
            let names = if t.is_empty() {
                "any".to_string()
            } else {
                t.iter().cloned().collect::<Vec<_>>().join("|")
            };
            f.as_ref().map_or(names.clone(), |f| format!("{names} ({f})"))
        };
        c.emit(
            d,
            "type-changed",
            "type",
            format!("{} changed from {} to {}", c.place(), show(&bt, &bf), show(&rt, &rf)),
        );
    }
    if bnull != rnull {
        let (kind, word) = if rnull {
            ("became-nullable", "now admits")
        } else {
            ("became-not-nullable", "no longer admits")
        };
        let keyword =
            if r.get("nullable").is_some() || b.get("nullable").is_some() { "nullable" } else { "type" };
        c.emit(d, kind, keyword, format!("{} {word} null", c.place()));
    }
}

fn enums(d: &mut Differ, c: &Cmp, b: &Value, r: &Value) {
    c.judged(d, "enum");
    let values = |s: &Value| s.get("enum").and_then(Value::as_array).cloned();
    match (values(b), values(r)) {
        (None, Some(_)) => {
            c.emit(d, "became-enum", "enum", format!("{} is now restricted to an enum", c.place()))
        }
        (Some(_), None) => {
            c.emit(d, "enum-removed", "enum", format!("{} is no longer restricted to an enum", c.place()))
        }
        (Some(bv), Some(rv)) => {
            for v in bv.iter().filter(|v| !rv.contains(v)) {
                c.emit(d, "enum-value-removed", "enum", format!("{} no longer admits {v}", c.place()));
            }
            for v in rv.iter().filter(|v| !bv.contains(v)) {
                c.emit(d, "enum-value-added", "enum", format!("{} now admits {v}", c.place()));
            }
        }
        (None, None) => {}
    }
}

/// `x-extensible-enum`: the known values of an open list. JSON Schema
/// validation ignores it; readers must tolerate values they do not know.
fn extensible_enums(d: &mut Differ, c: &Cmp, b: &Value, r: &Value) {
    const KEY: &str = crate::openapi::EXTENSIBLE_ENUM;
    c.judged(d, KEY);
    let values = |s: &Value| s.get(KEY).and_then(Value::as_array).cloned().unwrap_or_default();
    let (bv, rv) = (values(b), values(r));
    for v in bv.iter().filter(|v| !rv.contains(v)) {
        c.emit(d, "extensible-enum-value-removed", KEY, format!("{} no longer lists {v}", c.place()));
    }
    for v in rv.iter().filter(|v| !bv.contains(v)) {
        c.emit(d, "extensible-enum-value-added", KEY, format!("{} now lists {v}", c.place()));
    }
}

#[derive(Clone, Copy)]
enum Bound {
    Max,
    Min,
}

/// A numeric bound: its value and whether it is exclusive. OpenAPI 3.0
/// writes exclusivity as a boolean beside the bound; JSON Schema 2020-12
/// writes `exclusiveMaximum: <number>`.
fn bound_of(s: &Value, which: Bound) -> Option<(f64, bool)> {
    let (incl, excl) = match which {
        Bound::Max => ("maximum", "exclusiveMaximum"),
        Bound::Min => ("minimum", "exclusiveMinimum"),
    };
    if let Some(n) = s.get(excl).and_then(Value::as_f64) {
        return Some((n, true));
    }
    let n = s.get(incl).and_then(Value::as_f64)?;
    Some((n, s.get(excl).and_then(Value::as_bool) == Some(true)))
}

fn bound(d: &mut Differ, c: &Cmp, b: &Value, r: &Value, which: Bound) {
    let (keyword, excl, tighter_kind, looser_kind) = match which {
        Bound::Max => ("maximum", "exclusiveMaximum", "max-decreased", "max-increased"),
        Bound::Min => ("minimum", "exclusiveMinimum", "min-increased", "min-decreased"),
    };
    c.judged(d, keyword);
    c.judged(d, excl);
    let (bb, rb) = (bound_of(b, which), bound_of(r, which));
    if bb == rb {
        return;
    }
    // Tighter: fewer values admitted. A missing bound admits everything.
    let tighter = match (bb, rb) {
        (None, Some(_)) => true,
        (Some(_), None) => false,
        (Some((bn, be)), Some((rn, re))) => {
            let stricter_value = match which {
                Bound::Max => rn < bn,
                Bound::Min => rn > bn,
            };
            stricter_value || (rn == bn && re && !be)
        }
        (None, None) => return,
    };
    let show = |x: Option<(f64, bool)>| {
        x.map_or("none".to_string(), |(n, e)| if e { format!("{n} (exclusive)") } else { n.to_string() })
    };
    let kind = if tighter { tighter_kind } else { looser_kind };
    let keyword = if r.get(keyword).is_some() || b.get(keyword).is_some() { keyword } else { excl };
    c.emit(d, kind, keyword, format!("{} {keyword} went from {} to {}", c.place(), show(bb), show(rb)));
}

#[allow(clippy::too_many_arguments)]
fn count_limit(
    d: &mut Differ,
    c: &Cmp,
    b: &Value,
    r: &Value,
    keyword: &str,
    smaller: &str,
    larger: &str,
    is_max: bool,
) {
    c.judged(d, keyword);
    let (bv, rv) = (b.get(keyword).and_then(Value::as_u64), r.get(keyword).and_then(Value::as_u64));
    if bv == rv {
        return;
    }
    // A missing maximum is unbounded; a missing minimum is zero.
    let (bx, rx) = if is_max {
        (bv.unwrap_or(u64::MAX), rv.unwrap_or(u64::MAX))
    } else {
        (bv.unwrap_or(0), rv.unwrap_or(0))
    };
    if bx == rx {
        return;
    }
    let kind = if rx < bx { smaller } else { larger };
    let show = |x: Option<u64>| x.map_or("none".to_string(), |n| n.to_string());
    c.emit(d, kind, keyword, format!("{} {keyword} went from {} to {}", c.place(), show(bv), show(rv)));
}

fn pattern(d: &mut Differ, c: &Cmp, b: &Value, r: &Value) {
    c.judged(d, "pattern");
    let p = |s: &Value| s.get("pattern").and_then(Value::as_str).map(str::to_string);
    let (kind, detail) = match (p(b), p(r)) {
        (None, Some(rp)) => ("pattern-added", format!("{} must now match `{rp}`", c.place())),
        (Some(bp), None) => ("pattern-removed", format!("{} no longer has to match `{bp}`", c.place())),
        (Some(bp), Some(rp)) if bp != rp => {
            ("pattern-changed", format!("{} pattern went from `{bp}` to `{rp}`", c.place()))
        }
        _ => return,
    };
    c.emit(d, kind, "pattern", detail);
}

fn default(d: &mut Differ, c: &Cmp, b: &Value, r: &Value) {
    c.judged(d, "default");
    let (bd, rd) = (b.get("default"), r.get("default"));
    if bd != rd {
        let show = |v: Option<&Value>| v.map_or("none".to_string(), Value::to_string);
        c.emit(
            d,
            "default-changed",
            "default",
            format!("{} default went from {} to {}", c.place(), show(bd), show(rd)),
        );
    }
}

fn required_set(s: &Value) -> BTreeSet<String> {
    s.get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn closed(s: &Value) -> bool {
    s.get("additionalProperties") == Some(&Value::Bool(false))
}

fn properties(d: &mut Differ, c: &Cmp, b: &Value, r: &Value) {
    let empty = serde_json::Map::new();
    let bp = b.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let rp = r.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let (breq, rreq) = (required_set(b), required_set(r));
    c.judged(d, "required");
    let names: BTreeSet<&String> = bp.keys().chain(rp.keys()).collect();
    let mut pairs: BTreeMap<&String, (&Value, &Value)> = BTreeMap::new();
    for name in names {
        let bptr = format!("{}/properties/{}", c.bptr, crate::diagnostics::escape_token(name));
        let rptr = format!("{}/properties/{}", c.rptr, crate::diagnostics::escape_token(name));
        match (bp.get(name), rp.get(name)) {
            (Some(_), None) => {
                d.examine(c.at.file, bptr.clone());
                let parent = format!("{}/properties", c.rptr);
                d.emit(
                    &c.at.site.rule("property-removed"),
                    c.at.file,
                    Some(&bptr),
                    Some(&parent),
                    c.at.context,
                    format!("property `{name}` was removed"),
                );
            }
            (None, Some(_)) => {
                d.examine(c.at.file, rptr.clone());
                let (kind, word) = if rreq.contains(name) {
                    ("property-added-required", "required")
                } else {
                    ("property-added-optional", "optional")
                };
                let parent = format!("{}/properties", c.bptr);
                d.emit(
                    &c.at.site.rule(kind),
                    c.at.file,
                    Some(&parent),
                    Some(&rptr),
                    c.at.context,
                    format!("{word} property `{name}` was added"),
                );
            }
            (Some(bv), Some(rv)) => {
                let (was, is) = (breq.contains(name), rreq.contains(name));
                if was != is {
                    let kind = if is { "property-became-required" } else { "property-became-optional" };
                    let word = if is { "required" } else { "optional" };
                    d.emit(
                        &c.at.site.rule(kind),
                        c.at.file,
                        Some(&format!("{}/required", c.bptr)),
                        Some(&format!("{}/required", c.rptr)),
                        c.at.context,
                        format!("property `{name}` became {word}"),
                    );
                }
                pairs.insert(name, (bv, rv));
            }
            (None, None) => {}
        }
    }
    let both_schemas = b.get("additionalProperties").is_some_and(Value::is_object)
        && r.get("additionalProperties").is_some_and(Value::is_object);
    if !both_schemas {
        c.judged(d, "additionalProperties");
    }
    match (closed(b), closed(r)) {
        (false, true) => c.emit(
            d,
            "became-closed",
            "additionalProperties",
            format!("{} no longer admits properties it does not name", c.place()),
        ),
        (true, false) => c.emit(
            d,
            "became-open",
            "additionalProperties",
            format!("{} now admits properties it does not name", c.place()),
        ),
        _ => {}
    }
    for (name, (bv, rv)) in pairs {
        let tok = crate::diagnostics::escape_token(name);
        compare(
            d,
            c.at,
            bv,
            format!("{}/properties/{tok}", c.bptr),
            rv,
            format!("{}/properties/{tok}", c.rptr),
        );
    }
    if let (Some(ba @ Value::Object(_)), Some(ra @ Value::Object(_))) =
        (b.get("additionalProperties"), r.get("additionalProperties"))
    {
        compare(
            d,
            c.at,
            ba,
            format!("{}/additionalProperties", c.bptr),
            ra,
            format!("{}/additionalProperties", c.rptr),
        );
    }
}
