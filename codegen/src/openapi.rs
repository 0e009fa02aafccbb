//! Rules for `specs/openapi.yaml` and the operation model derived from it.
//!
//! Everything the generators cannot handle is reported here, with a JSON
//! pointer, before any generator runs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::config::Config;
use crate::diagnostics::{Diagnostic, Diagnostics, pointer};
use crate::load::RawContracts;

pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Extension on a component schema: property names a request may not carry.
pub const FORBIDDEN_PROPERTIES_EXT: &str = "x-oneprotect-forbidden-properties";
/// Extension on an operation: the request body size limit in bytes.
pub const MAX_BODY_EXT: &str = "x-oneprotect-max-body-bytes";
/// Who holds a security scheme's credential: `tenant-admin` (a person
/// acting for a tenant: can lack the role, names tenant resources) or
/// `agent` (an enrolled identity: can be revoked).
pub const PRINCIPAL_EXT: &str = "x-oneprotect-principal";
pub const PRINCIPALS: [&str; 2] = ["tenant-admin", "agent"];
/// Extension on an operation with a security scheme: `true` when the
/// caller may authenticate by the TLS client certificate the server
/// verified (mutual TLS), with or instead of the scheme's bearer. OpenAPI
/// 3.0.3 has no `mutualTLS` security scheme type (3.1 added it).
pub const CLIENT_CERTIFICATE_EXT: &str = "x-oneprotect-client-certificate";
/// The largest `x-oneprotect-max-body-bytes` the validator accepts (16 MiB).
pub const MAX_BODY_CEILING: u64 = 16 * 1024 * 1024;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
const UNSUPPORTED_KEYWORDS: [(&str, &str); 4] = [
    ("anyOf", "typify cannot generate usable types for anyOf; use a single object schema"),
    ("oneOf", "keep bodies to one concrete object schema"),
    ("not", "typify cannot generate types for `not`; document the constraint instead"),
    ("discriminator", "polymorphic bodies are not supported by the generators"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    Uuid,
    String {
        max_length: Option<u64>,
    },
    /// `rust` is the type typify (and so the progenitor client) gives the
    /// same schema, so the client and the stubs agree.
    Integer {
        min: Option<i64>,
        max: Option<i64>,
        rust: &'static str,
    },
}

mod operation;
use operation::check_operation;

/// The Rust type typify chooses for an integer schema: the `format`'s
/// width and sign, and a `NonZero` type for an unsigned one whose minimum is
/// at least 1; `i64` without a format.
pub fn integer_rust_type(format: Option<&str>, min: Option<i64>) -> &'static str {
    let positive = min.is_some_and(|m| m >= 1);
    match (format, positive) {
        (Some("int8"), _) => "i8",
        (Some("int16"), _) => "i16",
        (Some("int32"), _) => "i32",
        (Some("uint8"), false) => "u8",
        (Some("uint8"), true) => "std::num::NonZeroU8",
        (Some("uint16"), false) => "u16",
        (Some("uint16"), true) => "std::num::NonZeroU16",
        (Some("uint32"), false) => "u32",
        (Some("uint32"), true) => "std::num::NonZeroU32",
        (Some("uint64"), false) => "u64",
        (Some("uint64"), true) => "std::num::NonZeroU64",
        _ => "i64",
    }
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub required: bool,
    pub ty: ParamType,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// `application/json` with a named component schema.
    Json(String),
    /// A text media type (`text/plain`, PEM) with a string schema.
    Text(String),
    /// No content.
    Empty,
}

#[derive(Debug, Clone)]
pub struct ResponseHeader {
    pub name: String,
    pub integer: bool,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: ResponseBody,
    pub headers: Vec<ResponseHeader>,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub method: String,
    pub path: String,
    pub summary: Option<String>,
    /// Security scheme name required, if any.
    pub security: Option<String>,
    pub path_params: Vec<Param>,
    pub query_params: Vec<Param>,
    /// Component schema name of the JSON request body.
    pub body: Option<String>,
    pub max_body_bytes: u64,
    pub responses: Vec<Response>,
    /// `x-oneprotect-client-certificate`: a verified client certificate is
    /// accepted as the credential (see `CLIENT_CERTIFICATE_EXT`).
    pub client_certificate: bool,
}

#[derive(Debug, Clone)]
pub struct ApiModel {
    pub operations: Vec<Operation>,
    /// Bearer security scheme names, sorted.
    pub security_schemes: Vec<String>,
    /// Scheme name → its `x-oneprotect-principal`.
    pub principals: BTreeMap<String, String>,
    /// Component schema name → forbidden request properties.
    pub forbidden_properties: BTreeMap<String, Vec<String>>,
    pub schema_names: BTreeSet<String>,
    /// `Problem.code`'s `x-extensible-enum`: every code the platform answers with.
    pub problem_codes: Vec<String>,
}

impl ApiModel {
    /// Schemas used as a JSON request or response body.
    pub fn body_schemas(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for op in &self.operations {
            out.extend(op.body.iter().cloned());
            for r in &op.responses {
                if let ResponseBody::Json(name) = &r.body {
                    out.insert(name.clone());
                }
            }
        }
        out
    }
}

struct Ctx<'a> {
    file: String,
    doc: &'a Value,
    diags: &'a mut Diagnostics,
    config: &'a Config,
}

impl Ctx<'_> {
    fn err(&mut self, ptr: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic::new(&self.file, ptr, message).hint(hint));
    }

    /// Follows a local `$ref` (one level at a time, at most 16 hops).
    fn resolve(&self, value: &Value, mut ptr: String) -> Option<(Value, String)> {
        let mut value = value.clone();
        for _ in 0..16 {
            match value.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let target = r.strip_prefix('#')?.to_string();
                    value = self.doc.pointer(&target)?.clone();
                    ptr = target;
                }
                None => return Some((value, ptr)),
            }
        }
        None
    }
}

/// Checks the OpenAPI document and returns the operation model.
pub fn check(raw: &RawContracts, config: &Config, diags: &mut Diagnostics) -> Option<ApiModel> {
    let file = raw.file(crate::load::OPENAPI_FILE);
    let doc = &raw.openapi;
    let mut ctx = Ctx { file, doc, diags, config };

    match doc.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0.") => {}
        Some(v) => {
            ctx.err(
                "/openapi",
                format!("OpenAPI version `{v}` is not supported: progenitor and openapiv3 accept only 3.0.x"),
                "set `openapi: 3.0.3`",
            );
            return None;
        }
        None => {
            ctx.err(
                "/openapi",
                "missing `openapi` version field",
                "add `openapi: 3.0.3` at the top of the document",
            );
            return None;
        }
    }

    let before = ctx.diags.len();
    check_refs(&mut ctx, doc, String::new());
    if ctx.diags.len() > before {
        return None;
    }
    if let Err(e) = serde_path_to_error::deserialize::<_, openapiv3::OpenAPI>(doc) {
        let path = e.path().to_string();
        let ptr = if path == "." { String::new() } else { pointer(path.split('.')) };
        ctx.err(
            &ptr,
            format!("not a valid OpenAPI 3.0 document: {}", e.inner()),
            "compare the object with the OpenAPI 3.0.3 specification",
        );
        return None;
    }

    let schemas = doc.pointer("/components/schemas").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut schema_names = BTreeSet::new();
    let mut forbidden_properties = BTreeMap::new();
    let mut problem_codes = Vec::new();
    for (name, schema) in &schemas {
        let ptr = pointer(["components", "schemas", name]);
        if !is_pascal_ident(name) {
            ctx.err(
                &ptr,
                format!("schema name `{name}` is not a PascalCase identifier"),
                "rename it, e.g. `AgentIdentity`; generated Rust types take this name",
            );
        }
        schema_names.insert(name.clone());
        check_schema(&mut ctx, schema, &ptr);
        if let Some(list) = schema.get(FORBIDDEN_PROPERTIES_EXT) {
            let props = list
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect::<Vec<_>>());
            match props {
                Some(p) if !p.is_empty() => {
                    forbidden_properties.insert(name.clone(), p);
                }
                _ => ctx.err(
                    &format!("{ptr}/{FORBIDDEN_PROPERTIES_EXT}"),
                    "must be a non-empty array of property names",
                    "list the identity fields a request may not carry",
                ),
            }
        }
    }
    let problem = config.problem.schema.clone();
    match schemas.get(&problem) {
        None => ctx.err(
            "/components/schemas",
            format!("missing the `{problem}` schema used by every 4xx/5xx response"),
            format!("add components/schemas/{problem} (RFC 9457 fields plus `code` and `request_id`)"),
        ),
        Some(p) => {
            match p.pointer("/properties/code/x-extensible-enum").and_then(Value::as_array) {
                Some(codes) if !codes.is_empty() => {
                    problem_codes = codes.iter().filter_map(Value::as_str).map(str::to_string).collect();
                    for code in RUNTIME_CODES.iter().filter(|c| !problem_codes.iter().any(|p| p == *c)) {
                        ctx.err(
                            &format!("/components/schemas/{problem}/properties/code/{EXTENSIBLE_ENUM}"),
                            format!("the generated server runtime answers with `{code}`, which the list lacks"),
                            format!("add `{code}`; the stubs refuse malformed requests, unknown routes and oversized bodies with it"),
                        );
                    }
                    for (i, c) in codes.iter().enumerate() {
                        if !c.as_str().is_some_and(is_snake_ident) {
                            ctx.err(
                                &format!("/components/schemas/{problem}/properties/code/{EXTENSIBLE_ENUM}/{i}"),
                                format!("problem code {c} is not a snake_case identifier"),
                                "codes are stable machine names such as `not_found`",
                            );
                        }
                    }
                }
                _ => ctx.err(
                    &format!("/components/schemas/{problem}/properties/code"),
                    format!("{problem}.code must list every code in `{EXTENSIBLE_ENUM}`"),
                    "list the codes the platform answers with; `ProblemCode` is generated from them and clients tolerate codes added later",
                ),
            }
            let required: BTreeSet<&str> = p
                .get("required")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for field in ["type", "title", "status", "code", "request_id"] {
                if !required.contains(field) {
                    ctx.err(
                        &format!("/components/schemas/{problem}/required"),
                        format!("{problem} must require `{field}`"),
                        format!("add `{field}` to {problem}.required"),
                    );
                }
            }
            for (field, ty, format) in PROBLEM_FIELDS {
                let Some(prop) = p.pointer(&format!("/properties/{field}")) else {
                    ctx.err(
                        &format!("/components/schemas/{problem}/properties"),
                        format!("{problem} has no `{field}` property"),
                        format!("add `{field}: {{type: {ty}}}`"),
                    );
                    continue;
                };
                let (got_ty, got_format) =
                    (prop.get("type").and_then(Value::as_str), prop.get("format").and_then(Value::as_str));
                if got_ty != Some(ty) || (format.is_some() && got_format != format) {
                    let want = format
                        .map_or(format!("`type: {ty}`"), |f| format!("`type: {ty}` with `format: {f}`"));
                    ctx.err(
                        &format!("/components/schemas/{problem}/properties/{field}"),
                        format!("{problem}.{field} must be {want}; the server runtime builds it so"),
                        format!("declare `{field}` as {want}"),
                    );
                }
            }
        }
    }

    let doc = ctx.doc.clone();
    check_extensions(&mut ctx, &doc, &mut Vec::new());
    check_extensible_enums(&mut ctx, &doc, String::new());
    let principals = check_security_schemes(&mut ctx);
    let security_schemes: Vec<String> = principals.keys().cloned().collect();
    let operations = check_operations(&mut ctx, &principals);
    Some(ApiModel {
        operations,
        security_schemes,
        principals,
        forbidden_properties,
        schema_names,
        problem_codes,
    })
}

fn check_refs(ctx: &mut Ctx<'_>, value: &Value, ptr: String) {
    match value {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref") {
                let here = format!("{ptr}/$ref");
                match r.as_str() {
                    Some(r) if r.starts_with("#/") => {
                        if ctx.doc.pointer(&r[1..]).is_none() {
                            ctx.err(
                                &here,
                                format!("dangling $ref `{r}`: nothing at that pointer"),
                                "define the target or fix the reference",
                            );
                        }
                    }
                    Some(r) => ctx.err(
                        &here,
                        format!("external $ref `{r}` is not supported by the generators"),
                        "move the target into components and reference it as `#/components/...`",
                    ),
                    None => {
                        ctx.err(&here, "$ref must be a string", "write `$ref: '#/components/schemas/Name'`")
                    }
                }
            }
            for (k, v) in map {
                check_refs(ctx, v, format!("{ptr}/{}", crate::diagnostics::escape_token(k)));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_refs(ctx, v, format!("{ptr}/{i}"));
            }
        }
        _ => {}
    }
}

fn check_schema(ctx: &mut Ctx<'_>, schema: &Value, ptr: &str) {
    let Some(map) = schema.as_object() else {
        ctx.err(ptr, "a schema must be an object", "OpenAPI 3.0 has no boolean schemas");
        return;
    };
    for (kw, why) in UNSUPPORTED_KEYWORDS {
        if map.contains_key(kw) {
            ctx.err(&format!("{ptr}/{kw}"), format!("`{kw}` is not supported"), why);
        }
    }
    if map.get("nullable").and_then(Value::as_bool) == Some(true) {
        ctx.err(
            &format!("{ptr}/nullable"),
            "`nullable` is not supported",
            "make the property optional (leave it out of `required`) instead",
        );
    }
    if let Some(all) = map.get("allOf").and_then(Value::as_array)
        && all.len() > 1
    {
        ctx.err(
            &format!("{ptr}/allOf"),
            "`allOf` with more than one member is not supported by typify",
            "flatten the properties into one object schema",
        );
    }
    if map.get("type").and_then(Value::as_str) == Some("object")
        && !map.contains_key("additionalProperties")
        && map.contains_key("properties")
    {
        ctx.err(
            ptr,
            "object schema does not say whether extra properties are allowed",
            "add `additionalProperties: false` (or `true` where extension is intended)",
        );
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            check_schema(ctx, p, &format!("{ptr}/properties/{}", crate::diagnostics::escape_token(name)));
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v @ Value::Object(_)) = map.get(key) {
            check_schema(ctx, v, &format!("{ptr}/{key}"));
        }
    }
}

/// The stubs parse a parameter as one scalar: composition and `nullable`
/// would generate a client type the server never honours.
fn check_parameter_schema(ctx: &mut Ctx<'_>, schema: &Value, ptr: &str, name: &str) {
    let Some(map) = schema.as_object() else { return };
    for kw in ["oneOf", "anyOf", "allOf", "not", "nullable", "discriminator"] {
        if map.contains_key(kw) {
            ctx.err(
                &format!("{ptr}/{kw}"),
                format!("`{kw}` in the schema of parameter `{name}` is not supported"),
                "give the parameter one scalar type (string, string/uuid or integer); an absent optional parameter is how to say `none`",
            );
        }
    }
}

/// Where each OneProtect extension may appear: `x-oneprotect-max-body-bytes`
/// on an operation, `x-oneprotect-forbidden-properties` on a component
/// schema. Any other `x-oneprotect-*` key is a typo the generators would
/// silently ignore.
fn check_extensions(ctx: &mut Ctx<'_>, value: &Value, tokens: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k.starts_with("x-oneprotect-") {
                    let ptr = pointer(tokens.iter().map(String::as_str).chain([k.as_str()]));
                    let at_operation =
                        tokens.len() == 3 && tokens[0] == "paths" && METHODS.contains(&tokens[2].as_str());
                    let at_component_schema =
                        tokens.len() == 3 && tokens[0] == "components" && tokens[1] == "schemas";
                    let at_security_scheme =
                        tokens.len() == 3 && tokens[0] == "components" && tokens[1] == "securitySchemes";
                    match k.as_str() {
                        MAX_BODY_EXT if at_operation => match v.as_u64() {
                            Some(n) if (1..=MAX_BODY_CEILING).contains(&n) => {}
                            _ => ctx.err(
                                &ptr,
                                format!("`{MAX_BODY_EXT}` must be a whole number of bytes from 1 to {MAX_BODY_CEILING}, not {v}"),
                                "write the limit in bytes, e.g. `65536`",
                            ),
                        },
                        CLIENT_CERTIFICATE_EXT if at_operation => {
                            if !v.is_boolean() {
                                ctx.err(
                                    &ptr,
                                    format!("`{CLIENT_CERTIFICATE_EXT}` must be `true` or `false`, not {v}"),
                                    "write `true` on operations that accept a verified client certificate",
                                );
                            }
                        }
                        FORBIDDEN_PROPERTIES_EXT if at_component_schema => {}
                        PRINCIPAL_EXT if at_security_scheme => {}
                        MAX_BODY_EXT | CLIENT_CERTIFICATE_EXT | FORBIDDEN_PROPERTIES_EXT | PRINCIPAL_EXT => ctx.err(
                            &ptr,
                            format!("`{k}` is not allowed here"),
                            format!(
                                "`{MAX_BODY_EXT}` and `{CLIENT_CERTIFICATE_EXT}` go on an operation, `{FORBIDDEN_PROPERTIES_EXT}` on a schema under components/schemas, `{PRINCIPAL_EXT}` on a security scheme"
                            ),
                        ),
                        _ => ctx.err(
                            &ptr,
                            format!("unknown extension `{k}`"),
                            format!(
                                "the OneProtect extensions are `{MAX_BODY_EXT}`, `{CLIENT_CERTIFICATE_EXT}`, `{FORBIDDEN_PROPERTIES_EXT}` and `{PRINCIPAL_EXT}`; other tools' extensions use their own `x-` prefix"
                            ),
                        ),
                    }
                    continue;
                }
                tokens.push(k.clone());
                check_extensions(ctx, v, tokens);
                tokens.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                tokens.push(i.to_string());
                check_extensions(ctx, v, tokens);
                tokens.pop();
            }
        }
        _ => {}
    }
}

/// The codes the generated server runtime itself answers with
/// (`codegen/templates/server_runtime.rs`, `gen_server`).
pub const RUNTIME_CODES: [&str; 9] = [
    "request_invalid",
    "parameter_invalid",
    "identity_override_rejected",
    "unauthenticated",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "internal_error",
];

/// `x-extensible-enum` (Zalando's convention, which oasdiff also reads): the
/// values known today of a string a later release may extend. Readers
/// tolerate values they do not know, so adding one is not breaking.
pub const EXTENSIBLE_ENUM: &str = "x-extensible-enum";

fn check_extensible_enums(ctx: &mut Ctx<'_>, value: &Value, ptr: String) {
    match value {
        Value::Object(map) => {
            if let Some(list) = map.get(EXTENSIBLE_ENUM) {
                let here = format!("{ptr}/{EXTENSIBLE_ENUM}");
                let strings: Option<Vec<&str>> =
                    list.as_array().map(|a| a.iter().filter_map(Value::as_str).collect());
                let unique =
                    strings.as_ref().is_some_and(|v| v.iter().collect::<BTreeSet<_>>().len() == v.len());
                if !(list
                    .as_array()
                    .is_some_and(|a| !a.is_empty() && strings.as_ref().is_some_and(|v| v.len() == a.len()))
                    && unique)
                {
                    ctx.err(
                        &here,
                        format!("`{EXTENSIBLE_ENUM}` must be a non-empty list of distinct strings"),
                        "list each value once, as a string",
                    );
                }
                if map.get("type").and_then(Value::as_str) != Some("string") {
                    ctx.err(
                        &here,
                        format!("`{EXTENSIBLE_ENUM}` applies to `type: string` only"),
                        "declare the schema as `type: string`",
                    );
                }
                if map.contains_key("enum") {
                    ctx.err(
                        &here,
                        format!("`{EXTENSIBLE_ENUM}` and `enum` contradict each other"),
                        "keep `enum` for a closed list or the extension for an open one",
                    );
                }
            }
            for (k, v) in map {
                check_extensible_enums(ctx, v, format!("{ptr}/{}", crate::diagnostics::escape_token(k)));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_extensible_enums(ctx, v, format!("{ptr}/{i}"));
            }
        }
        _ => {}
    }
}

/// The Problem fields the server runtime builds, with the types it builds them as.
const PROBLEM_FIELDS: [(&str, &str, Option<&str>); 6] = [
    ("type", "string", None),
    ("title", "string", None),
    ("status", "integer", Some("uint16")),
    ("detail", "string", None),
    ("code", "string", None),
    ("request_id", "string", None),
];

fn check_security_schemes(ctx: &mut Ctx<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let schemes = ctx
        .doc
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, scheme) in &schemes {
        let ptr = pointer(["components", "securitySchemes", name]);
        let ok = scheme.get("type").and_then(Value::as_str) == Some("http")
            && scheme.get("scheme").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref()
                == Some("bearer");
        if !ok {
            ctx.err(
                &ptr,
                "only HTTP bearer security schemes are supported by the server stubs",
                "use `type: http` with `scheme: bearer`",
            );
            continue;
        }
        if !is_camel_ident(name) {
            ctx.err(
                &ptr,
                format!("security scheme name `{name}` is not a lowerCamelCase identifier"),
                "rename it, e.g. `tenantAdminBearer`",
            );
            continue;
        }
        match scheme.get(PRINCIPAL_EXT).and_then(Value::as_str) {
            Some(p) if PRINCIPALS.contains(&p) => {
                out.insert(name.clone(), p.to_string());
            }
            _ => ctx.err(
                &format!("{ptr}/{PRINCIPAL_EXT}"),
                format!("security scheme `{name}` must say who holds its credential in `{PRINCIPAL_EXT}`"),
                format!("set `{PRINCIPAL_EXT}` to one of {}; it decides which refusals every operation using it documents", PRINCIPALS.join(", ")),
            ),
        }
    }
    out
}

fn check_operations(ctx: &mut Ctx<'_>, principals: &BTreeMap<String, String>) -> Vec<Operation> {
    let paths = ctx.doc.get("paths").and_then(Value::as_object).cloned().unwrap_or_default();
    let global_security = ctx.doc.get("security").cloned();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut ops = Vec::new();
    for (path, item) in &paths {
        let item_ptr = pointer(["paths", path]);
        let Some(item) = item.as_object() else { continue };
        if item.contains_key("$ref") {
            ctx.err(&item_ptr, "path item $ref is not supported", "inline the path item");
            continue;
        }
        let template_params: BTreeSet<String> = path_template_params(path);
        for (method, op) in item {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let ptr = format!("{item_ptr}/{method}");
            if let Some(op) = check_operation(
                ctx,
                path,
                method,
                op,
                &ptr,
                &template_params,
                global_security.as_ref(),
                principals,
                item.get("parameters"),
            ) {
                if let Some(first) = seen.get(&op.id) {
                    ctx.err(
                        &format!("{ptr}/operationId"),
                        format!("duplicate operationId `{}` (first used at {first})", op.id),
                        "give every operation a unique operationId",
                    );
                } else {
                    seen.insert(op.id.clone(), format!("{ptr}/operationId"));
                    ops.push(op);
                }
            }
        }
    }
    ops
}

fn schema_ref_name(media: &Value) -> Option<String> {
    media
        .pointer("/schema/$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .map(String::from)
}

fn path_template_params(path: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else { break };
        out.insert(rest[start + 1..start + end].to_string());
        rest = &rest[start + end + 1..];
    }
    out
}

pub fn is_pascal_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

pub fn is_camel_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

fn is_snake_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `issueEnrollmentToken` → `issue_enrollment_token`.
pub fn snake_case(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `issueEnrollmentToken` / `agent_enrolled` → `IssueEnrollmentToken` / `AgentEnrolled`.
pub fn pascal_case(s: &str) -> String {
    let mut out = String::new();
    let mut upper = true;
    for c in s.chars() {
        if c == '_' || c == '.' || c == '-' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
