//! OpenAPI edits: operations, parameters, bodies, responses, security.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::schema::{self, At, Site};
use super::{Differ, resolve};
use crate::diagnostics::escape_token;
use crate::load::OPENAPI_FILE;
use crate::openapi::{CLIENT_CERTIFICATE_EXT, MAX_BODY_EXT};

const FILE: &str = OPENAPI_FILE;
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// The default of `x-oneprotect-max-body-bytes` (64 KiB), as the generated stubs apply it.
const DEFAULT_MAX_BODY: u64 = 64 * 1024;

pub(super) fn diff(d: &mut Differ) {
    let (Some(base), Some(rev)) = (d.base.doc(FILE), d.rev.doc(FILE)) else { return };
    metadata(d, base, rev);
    security_schemes(d, base, rev);
    components(d, base, rev);
    let empty = Map::new();
    let bpaths = base.get("paths").and_then(Value::as_object).unwrap_or(&empty);
    let rpaths = rev.get("paths").and_then(Value::as_object).unwrap_or(&empty);
    let names: BTreeSet<&String> = bpaths.keys().chain(rpaths.keys()).collect();
    for path in names {
        let ptr = format!("/paths/{}", escape_token(path));
        let bitem = bpaths.get(path).unwrap_or(&Value::Null);
        let ritem = rpaths.get(path).unwrap_or(&Value::Null);
        for method in METHODS {
            let op_ptr = format!("{ptr}/{method}");
            let context = format!("{} {path}", method.to_uppercase());
            match (bitem.get(method), ritem.get(method)) {
                (Some(_), None) => {
                    d.removed("endpoint-removed", FILE, &op_ptr, &context, format!("{context} was removed"));
                }
                (None, Some(_)) => {
                    d.added("endpoint-added", FILE, &op_ptr, &context, format!("{context} was added"));
                }
                (Some(bo), Some(ro)) => operation(d, base, rev, &context, &op_ptr, (bitem, bo), (ritem, ro)),
                (None, None) => {}
            }
        }
        d.examine_exact(FILE, format!("{ptr}/parameters"));
    }
}

fn metadata(d: &mut Differ, base: &Value, rev: &Value) {
    super::version_change(d, FILE, base, rev);
    for key in ["openapi", "info", "servers", "tags", "externalDocs"] {
        d.examine(FILE, format!("/{key}"));
        if key != "info" && base.get(key) != rev.get(key) {
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
    let strip = |v: &Value| {
        let mut info = v.get("info").cloned().unwrap_or(Value::Null);
        if let Some(o) = info.as_object_mut() {
            o.remove("version");
        }
        info
    };
    if strip(base) != strip(rev) {
        d.emit("metadata-changed", FILE, Some("/info"), Some("/info"), "info", "`info` changed".to_string());
    }
}

fn security_schemes(d: &mut Differ, base: &Value, rev: &Value) {
    let empty = Map::new();
    let b = base.pointer("/components/securitySchemes").and_then(Value::as_object).unwrap_or(&empty);
    let r = rev.pointer("/components/securitySchemes").and_then(Value::as_object).unwrap_or(&empty);
    for name in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
        let ptr = format!("/components/securitySchemes/{}", escape_token(name));
        let context = format!("security scheme {name}");
        match (b.get(name), r.get(name)) {
            (Some(_), None) => {
                d.removed(
                    "security-scheme-removed",
                    FILE,
                    &ptr,
                    &context,
                    format!("security scheme `{name}` was removed"),
                );
            }
            (None, Some(_)) => {
                d.added(
                    "security-scheme-added",
                    FILE,
                    &ptr,
                    &context,
                    format!("security scheme `{name}` was added"),
                );
            }
            (Some(bs), Some(rs)) => {
                let principal = crate::openapi::PRINCIPAL_EXT;
                let pp = format!("{ptr}/{principal}");
                if bs.get(principal).is_none() && rs.get(principal).is_some() {
                    d.examine(FILE, pp.clone());
                    d.emit(
                        "security-scheme-principal-declared",
                        FILE,
                        None,
                        Some(&pp),
                        &context,
                        format!("security scheme `{name}` now declares who holds it"),
                    );
                }
                for field in
                    ["type", "scheme", "bearerFormat", "in", "name", "flows", "openIdConnectUrl", principal]
                {
                    let fp = format!("{ptr}/{field}");
                    d.examine(FILE, fp.clone());
                    if field == principal && bs.get(field).is_none() {
                        continue;
                    }
                    if bs.get(field) != rs.get(field) {
                        d.emit(
                            "security-scheme-changed",
                            FILE,
                            Some(&fp),
                            Some(&fp),
                            &context,
                            format!("`{field}` of security scheme `{name}` changed"),
                        );
                    }
                }
            }
            (None, None) => {}
        }
    }
}

/// Reusable components appear and disappear; what uses them is judged where used.
fn components(d: &mut Differ, base: &Value, rev: &Value) {
    for kind in
        ["schemas", "parameters", "responses", "requestBodies", "headers", "examples", "links", "callbacks"]
    {
        let empty = Map::new();
        let b = base.pointer(&format!("/components/{kind}")).and_then(Value::as_object).unwrap_or(&empty);
        let r = rev.pointer(&format!("/components/{kind}")).and_then(Value::as_object).unwrap_or(&empty);
        let (added, removed) = if kind == "schemas" {
            ("schema-component-added", "schema-component-removed")
        } else {
            ("component-added", "component-removed")
        };
        for name in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
            let ptr = format!("/components/{kind}/{}", escape_token(name));
            let context = format!("components/{kind}");
            match (b.get(name), r.get(name)) {
                (Some(_), None) => {
                    d.removed(removed, FILE, &ptr, &context, format!("`{name}` was removed"));
                }
                (None, Some(_)) => {
                    d.added(added, FILE, &ptr, &context, format!("`{name}` was added"));
                }
                _ => {}
            }
        }
    }
}

type Side<'v> = (&'v Value, &'v Value);

fn operation(
    d: &mut Differ,
    base: &Value,
    rev: &Value,
    context: &str,
    ptr: &str,
    (bitem, bo): Side,
    (ritem, ro): Side,
) {
    let field = |f: &str| format!("{ptr}/{f}");
    d.examine(FILE, field("operationId"));
    if bo.get("operationId") != ro.get("operationId") {
        let show = |o: &Value| o.get("operationId").and_then(Value::as_str).unwrap_or("none").to_string();
        d.emit(
            "operation-id-changed",
            FILE,
            Some(&field("operationId")),
            Some(&field("operationId")),
            context,
            format!("operationId went from `{}` to `{}`", show(bo), show(ro)),
        );
    }
    d.examine(FILE, field("deprecated"));
    let deprecated = |o: &Value| o.get("deprecated").and_then(Value::as_bool).unwrap_or(false);
    match (deprecated(bo), deprecated(ro)) {
        (false, true) => d.emit(
            "endpoint-deprecated",
            FILE,
            None,
            Some(&field("deprecated")),
            context,
            format!("{context} is now deprecated"),
        ),
        (true, false) => d.emit(
            "endpoint-reactivated",
            FILE,
            Some(&field("deprecated")),
            None,
            context,
            format!("{context} is no longer deprecated"),
        ),
        _ => {}
    }
    d.examine(FILE, field("tags"));
    security(d, base, rev, context, ptr, bo, ro);
    max_body(d, context, ptr, bo, ro);
    client_certificate(d, context, ptr, bo, ro);
    parameters(d, base, rev, context, ptr, (bitem, bo), (ritem, ro));
    request_body(d, base, rev, context, ptr, bo, ro);
    responses(d, base, rev, context, ptr, bo, ro);
}

/// The schemes an operation accepts: alternatives of scheme sets; empty = no credential.
fn requirements(doc: &Value, op: &Value) -> BTreeSet<BTreeSet<String>> {
    let reqs = op
        .get("security")
        .or_else(|| doc.get("security"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    reqs.iter()
        .filter_map(Value::as_object)
        .map(|o| o.keys().cloned().collect::<BTreeSet<_>>())
        .filter(|s| !s.is_empty())
        .collect()
}

fn security(d: &mut Differ, base: &Value, rev: &Value, context: &str, ptr: &str, bo: &Value, ro: &Value) {
    let sp = format!("{ptr}/security");
    d.examine(FILE, sp.clone());
    d.examine(FILE, "/security");
    let (b, r) = (requirements(base, bo), requirements(rev, ro));
    if b == r {
        return;
    }
    let names = |s: &BTreeSet<BTreeSet<String>>| {
        if s.is_empty() {
            "none".to_string()
        } else {
            s.iter().map(|a| a.iter().cloned().collect::<Vec<_>>().join("+")).collect::<Vec<_>>().join(" or ")
        }
    };
    let kind = if b.is_empty() {
        "security-added"
    } else if r.is_empty() {
        "security-removed"
    } else {
        "security-changed"
    };
    d.emit(
        kind,
        FILE,
        Some(&sp),
        Some(&sp),
        context,
        format!("accepted credentials went from {} to {}", names(&b), names(&r)),
    );
}

fn max_body(d: &mut Differ, context: &str, ptr: &str, bo: &Value, ro: &Value) {
    let p = format!("{ptr}/{MAX_BODY_EXT}");
    d.examine(FILE, p.clone());
    let get = |o: &Value| o.get(MAX_BODY_EXT).and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_BODY);
    let (b, r) = (get(bo), get(ro));
    if b != r {
        let kind =
            if r < b { "request-body-max-bytes-decreased" } else { "request-body-max-bytes-increased" };
        d.emit(kind, FILE, Some(&p), Some(&p), context, format!("{MAX_BODY_EXT} went from {b} to {r}"));
    }
}

/// Whether an operation accepts a verified client certificate as its credential.
fn client_certificate(d: &mut Differ, context: &str, ptr: &str, bo: &Value, ro: &Value) {
    let p = format!("{ptr}/{CLIENT_CERTIFICATE_EXT}");
    d.examine(FILE, p.clone());
    let get = |o: &Value| o.get(CLIENT_CERTIFICATE_EXT).and_then(Value::as_bool).unwrap_or(false);
    let (b, r) = (get(bo), get(ro));
    if b != r {
        let kind = if r { "client-certificate-accepted" } else { "client-certificate-no-longer-accepted" };
        d.emit(
            kind,
            FILE,
            Some(&p),
            Some(&p),
            context,
            format!("{CLIENT_CERTIFICATE_EXT} went from {b} to {r}"),
        );
    }
}

/// Parameters by (in, name), path-item parameters overridden by the operation's.
fn params<'v>(
    d: &mut Differ,
    doc: &'v Value,
    ptr: &str,
    item: &'v Value,
    op: &'v Value,
) -> BTreeMap<(String, String), (&'v Value, String)> {
    let mut out = BTreeMap::new();
    let item_ptr = ptr.rsplit_once('/').map_or("", |(p, _)| p);
    for (holder, hptr) in [(item, item_ptr), (op, ptr)] {
        let list = holder.get("parameters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for (i, p) in list.iter().enumerate() {
            let (p, pptr) = resolve(d, FILE, doc, p, format!("{hptr}/parameters/{i}"));
            let key = (
                p.get("in").and_then(Value::as_str).unwrap_or("").to_string(),
                p.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
            );
            out.insert(key, (p, pptr));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn parameters(
    d: &mut Differ,
    base: &Value,
    rev: &Value,
    context: &str,
    ptr: &str,
    (bitem, bo): Side,
    (ritem, ro): Side,
) {
    let b = params(d, base, ptr, bitem, bo);
    let r = params(d, rev, ptr, ritem, ro);
    d.examine_exact(FILE, format!("{ptr}/parameters"));
    let required = |p: &Value| {
        p.get("required").and_then(Value::as_bool).unwrap_or(false)
            || p.get("in").and_then(Value::as_str) == Some("path")
    };
    for key in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
        let what = format!("{} parameter `{}`", key.0, key.1);
        match (b.get(key), r.get(key)) {
            (Some((_, bp)), None) => {
                d.examine(FILE, bp.clone());
                d.emit(
                    "request-parameter-removed",
                    FILE,
                    Some(bp),
                    None,
                    context,
                    format!("{what} was removed"),
                );
            }
            (None, Some((rp_v, rp))) => {
                d.examine(FILE, rp.clone());
                let kind = if required(rp_v) {
                    "request-parameter-added-required"
                } else {
                    "request-parameter-added-optional"
                };
                d.emit(kind, FILE, None, Some(rp), context, format!("{what} was added"));
            }
            (Some((bv, bp)), Some((rv, rp))) => {
                for f in ["name", "in", "required"] {
                    d.examine(FILE, format!("{bp}/{f}"));
                    d.examine(FILE, format!("{rp}/{f}"));
                }
                match (required(bv), required(rv)) {
                    (false, true) => d.emit(
                        "request-parameter-became-required",
                        FILE,
                        Some(bp),
                        Some(rp),
                        context,
                        format!("{what} became required"),
                    ),
                    (true, false) => d.emit(
                        "request-parameter-became-optional",
                        FILE,
                        Some(bp),
                        Some(rp),
                        context,
                        format!("{what} became optional"),
                    ),
                    _ => {}
                }
                if let (Some(bs), Some(rs)) = (bv.get("schema"), rv.get("schema")) {
                    let ctx = format!("{context} {what}");
                    schema::compare(
                        d,
                        &At { file: FILE, site: Site::Parameter, context: &ctx },
                        bs,
                        format!("{bp}/schema"),
                        rs,
                        format!("{rp}/schema"),
                    );
                }
            }
            (None, None) => {}
        }
    }
}

fn content_map(v: &Value) -> Map<String, Value> {
    v.get("content").and_then(Value::as_object).cloned().unwrap_or_default()
}

fn request_body(d: &mut Differ, base: &Value, rev: &Value, context: &str, ptr: &str, bo: &Value, ro: &Value) {
    let p = format!("{ptr}/requestBody");
    let ctx = format!("{context} request body");
    let required = |b: &Value| b.get("required").and_then(Value::as_bool).unwrap_or(false);
    match (bo.get("requestBody"), ro.get("requestBody")) {
        (None, None) => {}
        (Some(_), None) => {
            d.removed("request-body-removed", FILE, &p, &ctx, "the request body was removed".to_string());
        }
        (None, Some(rb)) => {
            d.examine(FILE, p.clone());
            let (rb, _) = resolve(d, FILE, rev, rb, p.clone());
            let kind =
                if required(rb) { "request-body-added-required" } else { "request-body-added-optional" };
            d.emit(kind, FILE, None, Some(&p), &ctx, "a request body was added".to_string());
        }
        (Some(bb), Some(rb)) => {
            let (bb, bp) = resolve(d, FILE, base, bb, p.clone());
            let (rb, rp) = resolve(d, FILE, rev, rb, p.clone());
            d.examine(FILE, format!("{bp}/required"));
            d.examine(FILE, format!("{rp}/required"));
            match (required(bb), required(rb)) {
                (false, true) => d.emit(
                    "request-body-became-required",
                    FILE,
                    Some(&bp),
                    Some(&rp),
                    &ctx,
                    "the request body became required".to_string(),
                ),
                (true, false) => d.emit(
                    "request-body-became-optional",
                    FILE,
                    Some(&bp),
                    Some(&rp),
                    &ctx,
                    "the request body became optional".to_string(),
                ),
                _ => {}
            }
            media(
                d,
                &ctx,
                (&bp, &content_map(bb)),
                (&rp, &content_map(rb)),
                Site::RequestBody,
                ("request-media-type-removed", "request-media-type-added"),
            );
        }
    }
}

/// Media types of a body: removed, added, and the schemas of those in both.
fn media(
    d: &mut Differ,
    context: &str,
    (bp, b): (&str, &Map<String, Value>),
    (rp, r): (&str, &Map<String, Value>),
    site: Site,
    (removed, added): (&str, &str),
) {
    for mt in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
        let bm = format!("{bp}/content/{}", escape_token(mt));
        let rm = format!("{rp}/content/{}", escape_token(mt));
        match (b.get(mt), r.get(mt)) {
            (Some(_), None) => {
                d.removed(removed, FILE, &bm, context, format!("media type `{mt}` was removed"));
            }
            (None, Some(_)) => {
                d.added(added, FILE, &rm, context, format!("media type `{mt}` was added"));
            }
            (Some(bv), Some(rv)) => {
                if let (Some(bs), Some(rs)) = (bv.get("schema"), rv.get("schema")) {
                    schema::compare(
                        d,
                        &At { file: FILE, site, context },
                        bs,
                        format!("{bm}/schema"),
                        rs,
                        format!("{rm}/schema"),
                    );
                }
            }
            (None, None) => {}
        }
    }
}

fn responses(d: &mut Differ, base: &Value, rev: &Value, context: &str, ptr: &str, bo: &Value, ro: &Value) {
    let empty = Map::new();
    let b = bo.get("responses").and_then(Value::as_object).unwrap_or(&empty);
    let r = ro.get("responses").and_then(Value::as_object).unwrap_or(&empty);
    for status in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
        let sp = format!("{ptr}/responses/{}", escape_token(status));
        let success = status.starts_with('2');
        let ctx = format!("{context} response {status}");
        match (b.get(status), r.get(status)) {
            (Some(_), None) => {
                d.examine(FILE, sp.clone());
                let kind =
                    if success { "response-success-status-removed" } else { "response-error-status-removed" };
                d.emit(kind, FILE, Some(&sp), None, &ctx, format!("status {status} was removed"));
            }
            (None, Some(_)) => {
                d.examine(FILE, sp.clone());
                let kind =
                    if success { "response-success-status-added" } else { "response-error-status-added" };
                d.emit(kind, FILE, None, Some(&sp), &ctx, format!("status {status} was added"));
            }
            (Some(bv), Some(rv)) => {
                let (bv, bp) = resolve(d, FILE, base, bv, sp.clone());
                let (rv, rp) = resolve(d, FILE, rev, rv, sp.clone());
                media(
                    d,
                    &ctx,
                    (&bp, &content_map(bv)),
                    (&rp, &content_map(rv)),
                    Site::ResponseBody,
                    ("response-media-type-removed", "response-media-type-added"),
                );
                headers(d, base, rev, &ctx, (&bp, bv), (&rp, rv));
            }
            (None, None) => {}
        }
    }
}

fn headers(
    d: &mut Differ,
    base: &Value,
    rev: &Value,
    context: &str,
    (bp, bv): (&str, &Value),
    (rp, rv): (&str, &Value),
) {
    let empty = Map::new();
    let b = bv.get("headers").and_then(Value::as_object).unwrap_or(&empty);
    let r = rv.get("headers").and_then(Value::as_object).unwrap_or(&empty);
    for name in b.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
        let bh = format!("{bp}/headers/{}", escape_token(name));
        let rh = format!("{rp}/headers/{}", escape_token(name));
        match (b.get(name), r.get(name)) {
            (Some(_), None) => {
                d.removed(
                    "response-header-removed",
                    FILE,
                    &bh,
                    context,
                    format!("header `{name}` was removed"),
                );
            }
            (None, Some(_)) => {
                d.added("response-header-added", FILE, &rh, context, format!("header `{name}` was added"));
            }
            (Some(bx), Some(rx)) => {
                let (bx, bxp) = resolve(d, FILE, base, bx, bh);
                let (rx, rxp) = resolve(d, FILE, rev, rx, rh);
                if let (Some(bs), Some(rs)) = (bx.get("schema"), rx.get("schema")) {
                    let ctx = format!("{context} header {name}");
                    schema::compare(
                        d,
                        &At { file: FILE, site: Site::ResponseBody, context: &ctx },
                        bs,
                        format!("{bxp}/schema"),
                        rs,
                        format!("{rxp}/schema"),
                    );
                }
            }
            (None, None) => {}
        }
    }
}
