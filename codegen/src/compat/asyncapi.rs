//! AsyncAPI edits (channels, messages, operations) and event schema edits.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::schema::{self, At, Site};
use super::{Differ, resolve};
use crate::diagnostics::escape_token;
use crate::load::{ASYNCAPI_FILE, EVENTS_DIR};

const FILE: &str = ASYNCAPI_FILE;

pub(super) fn diff(d: &mut Differ) {
    if let (Some(base), Some(rev)) = (d.base.doc(FILE), d.rev.doc(FILE)) {
        document(d, base, rev);
    }
    event_files(d);
}

fn keyed<'v>(doc: &'v Value, pointer: &str) -> &'v Map<String, Value> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    doc.pointer(pointer).and_then(Value::as_object).unwrap_or(&EMPTY)
}

fn document(d: &mut Differ, base: &Value, rev: &Value) {
    super::version_change(d, FILE, base, rev);
    for key in ["asyncapi", "info", "servers", "tags", "externalDocs", "id"] {
        d.examine(FILE, format!("/{key}"));
        let strip = |v: &Value| {
            let mut x = v.get(key).cloned().unwrap_or(Value::Null);
            if let Some(o) = x.as_object_mut() {
                o.remove("version");
            }
            x
        };
        if strip(base) != strip(rev) {
            d.emit(
                "metadata-changed",
                FILE,
                Some(&format!("/{key}")),
                Some(&format!("/{key}")),
                key,
                format!("`{key}` changed"),
            );
        }
    }
    d.examine(FILE, "/defaultContentType");
    if base.get("defaultContentType") != rev.get("defaultContentType") {
        d.emit(
            "default-content-type-changed",
            FILE,
            Some("/defaultContentType"),
            Some("/defaultContentType"),
            "document",
            "defaultContentType changed".to_string(),
        );
    }
    channels(d, base, rev);
    let (bo, ro) = (keyed(base, "/operations"), keyed(rev, "/operations"));
    for (name, b_op) in bo {
        if let Some(r_op) = ro.get(name) {
            let ptr = format!("/operations/{}/bindings", escape_token(name));
            d.examine(FILE, ptr.clone());
            if b_op.get("bindings") != r_op.get("bindings") {
                d.emit(
                    "operation-bindings-changed",
                    FILE,
                    Some(&ptr),
                    Some(&ptr),
                    &format!("operation {name}"),
                    format!("the protocol bindings of `{name}` changed"),
                );
            }
        }
    }
    for (section, removed, added) in [
        ("/operations", "operation-removed", "operation-added"),
        ("/components/messages", "message-removed", "message-added"),
    ] {
        let (b, r) = (keyed(base, section), keyed(rev, section));
        for name in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
            let ptr = format!("{section}/{}", escape_token(name));
            match (b.get(name), r.get(name)) {
                (Some(_), None) => {
                    d.removed(
                        removed,
                        FILE,
                        &ptr,
                        section.trim_start_matches('/'),
                        format!("`{name}` was removed"),
                    );
                }
                (None, Some(_)) => {
                    d.added(
                        added,
                        FILE,
                        &ptr,
                        section.trim_start_matches('/'),
                        format!("`{name}` was added"),
                    );
                }
                _ => {}
            }
        }
    }
}

fn channels(d: &mut Differ, base: &Value, rev: &Value) {
    let (b, r) = (keyed(base, "/channels"), keyed(rev, "/channels"));
    for name in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
        let ptr = format!("/channels/{}", escape_token(name));
        let context = format!("channel {name}");
        match (b.get(name), r.get(name)) {
            (Some(_), None) => {
                d.removed("channel-removed", FILE, &ptr, &context, format!("channel `{name}` was removed"));
            }
            (None, Some(_)) => {
                d.added("channel-added", FILE, &ptr, &context, format!("channel `{name}` was added"));
            }
            (Some(bc), Some(rc)) => {
                let ap = format!("{ptr}/address");
                d.examine(FILE, ap.clone());
                if bc.get("address") != rc.get("address") {
                    let show =
                        |c: &Value| c.get("address").and_then(Value::as_str).unwrap_or("none").to_string();
                    d.emit(
                        "channel-address-changed",
                        FILE,
                        Some(&ap),
                        Some(&ap),
                        &context,
                        format!("address went from `{}` to `{}`", show(bc), show(rc)),
                    );
                }
                messages(d, base, rev, &context, &ptr, bc, rc);
            }
            (None, None) => {}
        }
    }
}

fn messages(d: &mut Differ, base: &Value, rev: &Value, context: &str, ptr: &str, bc: &Value, rc: &Value) {
    let (b, r) = (keyed(bc, "/messages"), keyed(rc, "/messages"));
    for name in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
        let mp = format!("{ptr}/messages/{}", escape_token(name));
        match (b.get(name), r.get(name)) {
            (Some(_), None) => {
                d.removed(
                    "channel-message-removed",
                    FILE,
                    &mp,
                    context,
                    format!("message `{name}` was removed from the channel"),
                );
            }
            (None, Some(_)) => {
                d.added(
                    "channel-message-added",
                    FILE,
                    &mp,
                    context,
                    format!("message `{name}` was added to the channel"),
                );
            }
            (Some(bm), Some(rm)) => {
                let (bm, bp) = resolve(d, FILE, base, bm, mp.clone());
                let (rm, rp) = resolve(d, FILE, rev, rm, mp.clone());
                let payload =
                    |m: &Value| m.pointer("/payload/$ref").cloned().or_else(|| m.get("payload").cloned());
                d.examine(FILE, format!("{bp}/payload"));
                d.examine(FILE, format!("{rp}/payload"));
                if payload(bm) != payload(rm) {
                    let show = |m: &Value| {
                        payload(m)
                            .map_or("none".to_string(), |p| p.as_str().map_or(p.to_string(), str::to_string))
                    };
                    d.emit(
                        "message-payload-changed",
                        FILE,
                        Some(&format!("{bp}/payload")),
                        Some(&format!("{rp}/payload")),
                        context,
                        format!("message `{name}` payload went from {} to {}", show(bm), show(rm)),
                    );
                }
                headers(d, base, rev, context, name, (bm, &bp), (rm, &rp));
                let content_type = |doc: &Value, m: &Value| {
                    m.get("contentType").or_else(|| doc.get("defaultContentType")).cloned()
                };
                d.examine(FILE, format!("{bp}/contentType"));
                d.examine(FILE, format!("{rp}/contentType"));
                if content_type(base, bm) != content_type(rev, rm) {
                    d.emit(
                        "message-content-type-changed",
                        FILE,
                        Some(&format!("{bp}/contentType")),
                        Some(&format!("{rp}/contentType")),
                        context,
                        format!("message `{name}` content type changed"),
                    );
                }
            }
            (None, None) => {}
        }
    }
}

/// A message's headers, judged by name: a header added is safe for
/// consumers, a required one removed or one whose schema changed is not.
/// The headers schema may be a `$ref` into `components/schemas` (judged
/// here, where it is used).
fn headers(
    d: &mut Differ,
    base: &Value,
    rev: &Value,
    context: &str,
    name: &str,
    (bm, bp): (&Value, &str),
    (rm, rp): (&Value, &str),
) {
    let (bh, rh) = (format!("{bp}/headers"), format!("{rp}/headers"));
    let schema = |d: &mut Differ, doc: &Value, m: &Value, ptr: &str| -> Value {
        match m.get("headers") {
            Some(h) => {
                let (h, at) = resolve(d, FILE, doc, h, ptr.to_string());
                d.examine(FILE, at);
                h.clone()
            }
            None => Value::Null,
        }
    };
    d.examine(FILE, bh.clone());
    d.examine(FILE, rh.clone());
    let (bs, rs) = (schema(d, base, bm, &bh), schema(d, rev, rm, &rh));
    let required = |s: &Value| -> BTreeSet<String> {
        s.get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let properties = |s: &Value| s.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    let (b_props, r_props) = (properties(&bs), properties(&rs));
    for header in required(&bs).difference(&required(&rs)) {
        d.emit(
            "message-header-removed",
            FILE,
            Some(&bh),
            Some(&rh),
            context,
            format!("message `{name}` no longer always carries header `{header}`"),
        );
    }
    for (header, b_schema) in &b_props {
        match r_props.get(header) {
            None if !required(&bs).contains(header) => d.emit(
                "message-header-removed",
                FILE,
                Some(&bh),
                Some(&rh),
                context,
                format!("message `{name}` no longer declares header `{header}`"),
            ),
            Some(r_schema) if strip_docs(b_schema) != strip_docs(r_schema) => d.emit(
                "message-header-changed",
                FILE,
                Some(&bh),
                Some(&rh),
                context,
                format!("the schema of header `{header}` of message `{name}` changed"),
            ),
            _ => {}
        }
    }
    for header in r_props.keys().filter(|h| !b_props.contains_key(*h)) {
        d.emit(
            "message-header-added",
            FILE,
            Some(&bh),
            Some(&rh),
            context,
            format!("message `{name}` gained header `{header}`"),
        );
    }
}

/// A schema without its documentation keywords.
fn strip_docs(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(o) = s.as_object_mut() {
        for key in ["description", "title", "examples", "example"] {
            o.remove(key);
        }
    }
    s
}

/// Event schema files: a version file is added, removed, or edited in place.
fn event_files(d: &mut Differ) {
    let names = |s: &super::Spec| -> BTreeSet<String> {
        s.files.keys().filter(|f| f.starts_with(&format!("{EVENTS_DIR}/"))).cloned().collect()
    };
    let (b, r) = (names(d.base), names(d.rev));
    for file in b.union(&r) {
        let version =
            file.trim_start_matches(&format!("{EVENTS_DIR}/")).trim_end_matches(".schema.json").to_string();
        let context = format!("event {version}");
        match (b.contains(file), r.contains(file)) {
            (true, false) => {
                d.examine(file, "");
                d.emit("event-schema-removed", file, Some(""), None, &context, format!("{file} was removed"));
            }
            (false, true) => {
                d.examine(file, "");
                d.emit("event-schema-added", file, None, Some(""), &context, format!("{file} was added"));
            }
            _ => {
                let (Some(bs), Some(rs)) = (d.base.doc(file).cloned(), d.rev.doc(file).cloned()) else {
                    continue;
                };
                d.examine(file, "/$id");
                d.examine(file, "/$schema");
                if bs.get("$id") != rs.get("$id") {
                    d.emit(
                        "event-schema-id-changed",
                        file,
                        Some("/$id"),
                        Some("/$id"),
                        &context,
                        "`$id` changed".to_string(),
                    );
                }
                if bs.get("$schema") != rs.get("$schema") {
                    d.emit(
                        "unclassified",
                        file,
                        Some("/$schema"),
                        Some("/$schema"),
                        &context,
                        "`$schema` (the JSON Schema dialect) changed".to_string(),
                    );
                }
                schema::compare(
                    d,
                    &At { file, site: Site::EventPayload, context: &context },
                    &bs,
                    String::new(),
                    &rs,
                    String::new(),
                );
            }
        }
    }
}
