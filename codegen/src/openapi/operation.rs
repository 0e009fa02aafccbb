//! One OpenAPI operation checked against what the generators and the
//! stubs can serve: its id, security, parameters, body, responses, and
//! the statuses an operation of its shape must document.

use super::*;

/// One operation, checked in the order a reader meets it: its id, its
/// security, its parameters, its body, its responses, then the statuses an
/// operation of its shape must document. `None` when anything was reported.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_operation(
    ctx: &mut Ctx<'_>,
    path: &str,
    method: &str,
    op: &Value,
    ptr: &str,
    template_params: &BTreeSet<String>,
    global_security: Option<&Value>,
    principals: &BTreeMap<String, String>,
    item_params: Option<&Value>,
) -> Option<Operation> {
    let before = ctx.diags.len();
    let id = operation_id(ctx, path, method, op, ptr);
    let security = operation_security(ctx, op.get("security").or(global_security), ptr, principals);
    let (path_params, query_params) = parameters(ctx, path, op, ptr, template_params, item_params);
    let body = request_body(ctx, op, ptr);
    let max_body_bytes = op.get(MAX_BODY_EXT).and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let mut responses = responses(ctx, op, ptr);
    let client_certificate = op.get(CLIENT_CERTIFICATE_EXT).and_then(Value::as_bool).unwrap_or(false);
    if client_certificate && security.is_none() {
        ctx.err(
            &format!("{ptr}/{CLIENT_CERTIFICATE_EXT}"),
            format!("`{CLIENT_CERTIFICATE_EXT}` on an operation without a security scheme"),
            "a client certificate is an alternative to a scheme's bearer: give the operation a `security` requirement",
        );
    }
    let shape = Shape {
        principal: security.as_ref().and_then(|s| principals.get(s)).map(String::as_str),
        authenticated: security.is_some(),
        has_body: body.is_some(),
        has_path_params: !path_params.is_empty(),
        has_params: !path_params.is_empty() || !query_params.is_empty(),
    };
    required_statuses(ctx, path, method, ptr, &responses, &shape);

    if ctx.diags.len() > before {
        return None;
    }
    responses.sort_by_key(|r| r.status);
    Some(Operation {
        id,
        method: method.to_string(),
        path: path.to_string(),
        summary: op.get("summary").and_then(Value::as_str).map(String::from),
        security,
        path_params,
        query_params,
        body,
        max_body_bytes,
        responses,
        client_certificate,
    })
}

/// A lowerCamelCase `operationId` (it names the generated methods).
fn operation_id(ctx: &mut Ctx<'_>, path: &str, method: &str, op: &Value, ptr: &str) -> String {
    match op.get("operationId").and_then(Value::as_str) {
        Some(id) if is_camel_ident(id) => id.to_string(),
        Some(id) => {
            ctx.err(
                &format!("{ptr}/operationId"),
                format!("operationId `{id}` is not a lowerCamelCase identifier"),
                "use e.g. `issueEnrollmentToken`; it names the generated method",
            );
            String::new()
        }
        None => {
            ctx.err(
                ptr,
                format!("{} {path} has no operationId", method.to_uppercase()),
                "add a unique lowerCamelCase operationId",
            );
            String::new()
        }
    }
}

/// At most one requirement naming one bearer scheme (or none: public).
fn operation_security(
    ctx: &mut Ctx<'_>,
    security_value: Option<&Value>,
    ptr: &str,
    principals: &BTreeMap<String, String>,
) -> Option<String> {
    let mut security = None;
    if let Some(reqs) = security_value.and_then(Value::as_array) {
        let non_empty: Vec<&Map<String, Value>> =
            reqs.iter().filter_map(Value::as_object).filter(|m| !m.is_empty()).collect();
        if non_empty.len() > 1
            || non_empty.iter().any(|m| m.len() > 1)
            || (non_empty.len() == 1 && reqs.len() > 1)
        {
            ctx.err(
                &format!("{ptr}/security"),
                "alternative or combined security requirements are not supported",
                "require exactly one bearer scheme, or `security: []` for public operations",
            );
        } else if let Some(req) = non_empty.first() {
            let name = req.keys().next().cloned().unwrap_or_default();
            if principals.contains_key(&name) {
                security = Some(name);
            } else {
                ctx.err(
                    &format!("{ptr}/security/0"),
                    format!("unknown security scheme `{name}`"),
                    "define it under components/securitySchemes",
                );
            }
        }
    }
    security
}

/// Path and query parameters (the path item's and the operation's): string
/// or integer, snake_case, path ones required and in the template.
fn parameters(
    ctx: &mut Ctx<'_>,
    path: &str,
    op: &Value,
    ptr: &str,
    template_params: &BTreeSet<String>,
    item_params: Option<&Value>,
) -> (Vec<Param>, Vec<Param>) {
    let mut path_params = Vec::new();
    let mut query_params = Vec::new();
    let mut params: Vec<(Value, String)> = Vec::new();
    for (src, base) in [
        (item_params, pointer(["paths", path, "parameters"])),
        (op.get("parameters"), format!("{ptr}/parameters")),
    ] {
        if let Some(list) = src.and_then(Value::as_array) {
            for (i, p) in list.iter().enumerate() {
                let p_ptr = format!("{base}/{i}");
                if let Some((resolved, _)) = ctx.resolve(p, p_ptr.clone()) {
                    params.push((resolved, p_ptr));
                }
            }
        }
    }
    for (p, p_ptr) in params {
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let location = p.get("in").and_then(Value::as_str).unwrap_or_default();
        let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
        let schema = p.get("schema").cloned().unwrap_or(Value::Null);
        check_parameter_schema(ctx, &schema, &format!("{p_ptr}/schema"), &name);
        let ty = match (
            schema.get("type").and_then(Value::as_str),
            schema.get("format").and_then(Value::as_str),
        ) {
            (Some("string"), Some("uuid")) => ParamType::Uuid,
            (Some("string"), _) => {
                ParamType::String { max_length: schema.get("maxLength").and_then(Value::as_u64) }
            }
            (Some("integer"), _) => {
                let min = schema.get("minimum").and_then(Value::as_i64);
                let rust = integer_rust_type(schema.get("format").and_then(Value::as_str), min);
                ParamType::Integer { min, max: schema.get("maximum").and_then(Value::as_i64), rust }
            }
            _ => {
                ctx.err(
                    &format!("{p_ptr}/schema"),
                    format!("parameter `{name}` must be a string or integer"),
                    "use `type: string` (optionally `format: uuid`) or `type: integer`",
                );
                continue;
            }
        };
        if !is_snake_ident(&name) {
            ctx.err(
                &format!("{p_ptr}/name"),
                format!("parameter name `{name}` is not snake_case"),
                "use snake_case names such as `agent_id`",
            );
        }
        let param = Param {
            name: name.clone(),
            required,
            ty,
            description: p.get("description").and_then(Value::as_str).map(String::from),
        };
        match location {
            "path" => {
                if !required {
                    ctx.err(
                        &format!("{p_ptr}/required"),
                        format!("path parameter `{name}` must be required"),
                        "add `required: true`",
                    );
                }
                if !template_params.contains(&name) {
                    ctx.err(
                        &p_ptr,
                        format!("path parameter `{name}` does not appear in `{path}`"),
                        "fix the name or the path template",
                    );
                }
                path_params.push(param);
            }
            "query" => query_params.push(param),
            other => ctx.err(
                &format!("{p_ptr}/in"),
                format!("`in: {other}` parameters are not supported"),
                "use path or query parameters; credentials go in security schemes",
            ),
        }
    }
    for name in template_params {
        if !path_params.iter().any(|p| &p.name == name) {
            ctx.err(
                ptr,
                format!("path template parameter `{name}` is not declared"),
                format!("add a `{name}` path parameter"),
            );
        }
    }
    (path_params, query_params)
}

/// One required `application/json` body, a `$ref` to a named schema.
fn request_body(ctx: &mut Ctx<'_>, op: &Value, ptr: &str) -> Option<String> {
    let mut body = None;
    if let Some(rb) = op.get("requestBody") {
        let rb_ptr = format!("{ptr}/requestBody");
        if let Some((rb, rb_ptr)) = ctx.resolve(rb, rb_ptr) {
            let content = rb.get("content").and_then(Value::as_object).cloned().unwrap_or_default();
            if content.len() != 1 || !content.contains_key("application/json") {
                ctx.err(
                    &format!("{rb_ptr}/content"),
                    "a request body must have exactly one media type, `application/json`",
                    "progenitor and the stubs take one JSON body per operation",
                );
            } else if rb.get("required").and_then(Value::as_bool) != Some(true) {
                ctx.err(
                    &format!("{rb_ptr}/required"),
                    "request bodies must be required",
                    "add `required: true`; use a schema whose fields are optional instead",
                );
            } else {
                match schema_ref_name(&content["application/json"]) {
                    Some(name) => body = Some(name),
                    None => ctx.err(
                        &format!("{rb_ptr}/content/application~1json/schema"),
                        "request body schema must be a $ref to components/schemas",
                        "move the schema into components/schemas so both client and server share one named type",
                    ),
                }
            }
        }
    }
    body
}

/// Text media types a response may have (with `type: string`): metrics
/// text, and PEM certificate chains (RFC 8555, section 9.1) and CRLs.
pub const TEXT_MEDIA_TYPES: [&str; 3] =
    ["text/plain", "application/pem-certificate-chain", "application/x-pem-file"];

/// Numeric statuses with one media type each; errors are the Problem
/// schema; every 2xx has one body type.
fn responses(ctx: &mut Ctx<'_>, op: &Value, ptr: &str) -> Vec<Response> {
    let mut responses = Vec::new();
    let mut success_bodies = BTreeSet::new();
    let res_map = op.get("responses").and_then(Value::as_object).cloned().unwrap_or_default();
    for (code, resp) in &res_map {
        let r_ptr = format!("{ptr}/responses/{code}");
        if code.starts_with("x-") {
            // Specification extensions are allowed in the Responses Object.
            continue;
        }
        let Ok(status) = code.parse::<u16>() else {
            ctx.err(
                &r_ptr,
                format!("response `{code}` is not a numeric status"),
                "document each status explicitly; `default` and ranges make progenitor merge success and error bodies",
            );
            continue;
        };
        let Some((resp, res_ptr)) = ctx.resolve(resp, r_ptr.clone()) else { continue };
        let description = resp.get("description").and_then(Value::as_str).unwrap_or_default().to_string();
        let content = resp.get("content").and_then(Value::as_object).cloned().unwrap_or_default();
        let body = if content.is_empty() {
            ResponseBody::Empty
        } else if content.len() > 1 {
            ctx.err(
                &format!("{res_ptr}/content"),
                "a response must have exactly one media type",
                "keep one of them",
            );
            continue;
        } else if let Some(media) = content.get("application/json") {
            match schema_ref_name(media) {
                Some(n) => ResponseBody::Json(n),
                None => {
                    ctx.err(
                        &format!("{res_ptr}/content/application~1json/schema"),
                        "response schema must be a $ref to components/schemas",
                        "move the schema into components/schemas",
                    );
                    continue;
                }
            }
        } else if let Some((media_type, media)) =
            content.iter().find(|(m, _)| TEXT_MEDIA_TYPES.contains(&m.as_str()))
        {
            if media.pointer("/schema/type").and_then(Value::as_str) != Some("string") {
                ctx.err(
                    &format!("{res_ptr}/content/{}/schema", media_type.replace('/', "~1")),
                    format!("{media_type} responses must have `type: string`"),
                    "set the schema to `type: string`",
                );
            }
            ResponseBody::Text(media_type.clone())
        } else {
            let media = content.keys().next().cloned().unwrap_or_default();
            ctx.err(
                &format!("{res_ptr}/content"),
                format!("media type `{media}` is not supported"),
                format!(
                    "progenitor types only exact `application/json`; the stubs also serve the text types {}",
                    TEXT_MEDIA_TYPES.join(", ")
                ),
            );
            continue;
        };
        if status >= 400 && body != ResponseBody::Json(ctx.config.problem.schema.clone()) {
            ctx.err(
                &res_ptr,
                format!(
                    "{status} response must use the {} schema as `application/json`",
                    ctx.config.problem.schema
                ),
                "reference one of components/responses (BadRequest, Unauthorized, …)",
            );
        }
        if (200..300).contains(&status) {
            success_bodies.insert(format!("{body:?}"));
        }
        let mut headers = Vec::new();
        if let Some(hs) = resp.get("headers").and_then(Value::as_object) {
            for (h_name, h) in hs {
                let h_ptr = format!("{res_ptr}/headers/{}", crate::diagnostics::escape_token(h_name));
                let Some((h, _)) = ctx.resolve(h, h_ptr.clone()) else { continue };
                let ty = h.pointer("/schema/type").and_then(Value::as_str);
                match ty {
                    Some("integer") => headers.push(ResponseHeader { name: h_name.clone(), integer: true }),
                    Some("string") => headers.push(ResponseHeader { name: h_name.clone(), integer: false }),
                    _ => ctx.err(
                        &h_ptr,
                        "response headers must be integer or string",
                        "give the header a `schema` with `type: integer` or `type: string`",
                    ),
                }
            }
        }
        responses.push(Response { status, body, headers, description });
    }
    if success_bodies.len() > 1 {
        ctx.err(
            &format!("{ptr}/responses"),
            "success responses have different body types",
            "progenitor needs one body type for every 2xx response of an operation",
        );
    }
    if success_bodies.is_empty() {
        ctx.err(&format!("{ptr}/responses"), "no 2xx response documented", "document the success response");
    }
    responses
}

/// What decides which statuses an operation must document.
struct Shape<'a> {
    principal: Option<&'a str>,
    authenticated: bool,
    has_body: bool,
    has_path_params: bool,
    has_params: bool,
}

/// The statuses every operation of a given shape must document
/// (`codegen.toml` `[statuses]`).
fn required_statuses(
    ctx: &mut Ctx<'_>,
    path: &str,
    method: &str,
    ptr: &str,
    responses: &[Response],
    shape: &Shape<'_>,
) {
    let documented: BTreeSet<u16> = responses.iter().map(|r| r.status).collect();
    let st = &ctx.config.statuses;
    let mut required: Vec<(u16, &str)> =
        st.every.iter().map(|s| (*s, "every operation can fail unexpectedly")).collect();
    if shape.authenticated {
        required.extend(st.authenticated.iter().map(|s| (*s, "the operation requires credentials")));
    }
    match shape.principal {
        Some("tenant-admin") => {
            required
                .extend(st.tenant_admin.iter().map(|s| (*s, "a tenant admin credential can lack the role")));
            if shape.has_path_params {
                required.extend(
                    st.tenant_admin_resource.iter().map(|s| (*s, "the path names a tenant-scoped resource")),
                );
            }
        }
        Some(_) => required.extend(st.agent.iter().map(|s| (*s, "an agent identity can be revoked"))),
        None => {}
    }
    if shape.has_body {
        required.extend(st.body.iter().map(|s| {
            let why = match s {
                400 => "the body can be malformed",
                413 => "the body can be too large",
                415 => "the body can have the wrong media type",
                _ => "the operation takes a body",
            };
            (*s, why)
        }));
    }
    if shape.has_params {
        required.extend(st.parameters.iter().map(|s| (*s, "parameters can be malformed")));
    }
    for (status, why) in required {
        if !documented.contains(&status) {
            ctx.err(
                &format!("{ptr}/responses"),
                format!("{} {path} does not document {status} ({why})", method.to_uppercase()),
                format!("add `'{status}'` referencing the matching components/responses entry"),
            );
        }
    }
}
