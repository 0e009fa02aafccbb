//! What no rule looked at: the raw difference of each pair of documents,
//! minus what the rules examined. Documentation keywords become `doc-changed`;
//! anything else is `unclassified`, never dropped.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Differ;
use crate::diagnostics::escape_token;

/// Keys whose value no client parses.
const DOC_KEYWORDS: [&str; 8] =
    ["description", "summary", "title", "example", "examples", "externalDocs", "$comment", "x-internal-note"];

pub(super) fn report_unexamined(d: &mut Differ) {
    let files: BTreeSet<String> = d.base.files.keys().chain(d.rev.files.keys()).cloned().collect();
    for file in files {
        let b = d.base.doc(&file).cloned().unwrap_or(Value::Null);
        let r = d.rev.doc(&file).cloned().unwrap_or(Value::Null);
        let mut found = Vec::new();
        walk(d, &file, Some(&b), Some(&r), String::new(), &mut found);
        for (ptr, in_base, in_rev) in found {
            let last = ptr.rsplit('/').next().unwrap_or("");
            let parent = ptr.rsplit('/').nth(1).unwrap_or("");
            let (rule, detail) = if DOC_KEYWORDS.contains(&last) && parent != "properties" {
                ("doc-changed", format!("`{last}` changed"))
            } else {
                ("unclassified", format!("`{ptr}` changed and no rule judges it"))
            };
            let context = context_of(&ptr);
            d.emit(
                rule,
                &file,
                in_base.then_some(ptr.as_str()),
                in_rev.then_some(ptr.as_str()),
                &context,
                detail,
            );
        }
    }
}

/// Names the operation or component a pointer is in, for the report.
fn context_of(ptr: &str) -> String {
    let tokens: Vec<String> =
        ptr.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
    match tokens.as_slice() {
        [p, path, method, ..] if p == "paths" => format!("{} {path}", method.to_uppercase()),
        [c, kind, name, ..] if c == "components" => format!("components/{kind}/{name}"),
        [first, ..] => first.clone(),
        [] => "document".to_string(),
    }
}

impl Differ<'_> {
    fn explained(&self, file: &str, ptr: &str) -> bool {
        self.examined_exact.contains(&(file.to_string(), ptr.to_string()))
            || self
                .examined
                .iter()
                .any(|(f, e)| f == file && (ptr == e || ptr.starts_with(&format!("{e}/")) || e.is_empty()))
    }
}

/// Collects (pointer, present in base, present in revision) for every
/// unexplained difference.
fn walk(
    d: &Differ,
    file: &str,
    b: Option<&Value>,
    r: Option<&Value>,
    ptr: String,
    out: &mut Vec<(String, bool, bool)>,
) {
    if b == r {
        return;
    }
    if d.explained(file, &ptr) {
        return;
    }
    match (b, r) {
        (Some(Value::Object(bo)), Some(Value::Object(ro))) => {
            for k in bo.keys().chain(ro.keys()).collect::<BTreeSet<_>>() {
                walk(d, file, bo.get(k), ro.get(k), format!("{ptr}/{}", escape_token(k)), out);
            }
        }
        (Some(Value::Array(ba)), Some(Value::Array(ra))) if ba.len() == ra.len() => {
            for (i, (x, y)) in ba.iter().zip(ra).enumerate() {
                walk(d, file, Some(x), Some(y), format!("{ptr}/{i}"), out);
            }
        }
        // Present on one side only: its parts may have been judged one by one.
        (Some(Value::Object(o)), None) => {
            for (k, v) in o {
                walk(d, file, Some(v), None, format!("{ptr}/{}", escape_token(k)), out);
            }
        }
        (None, Some(Value::Object(o))) => {
            for (k, v) in o {
                walk(d, file, None, Some(v), format!("{ptr}/{}", escape_token(k)), out);
            }
        }
        _ => out.push((ptr, b.is_some(), r.is_some())),
    }
}
