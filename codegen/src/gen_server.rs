//! Generates the axum server stubs: one trait method per operation, a
//! response enum per operation, auth extraction per the spec's `security`,
//! and `router()`. Route paths come only from the spec.

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::openapi::{ApiModel, Operation, ParamType, ResponseBody, pascal_case, snake_case};

fn status_variant(status: u16) -> String {
    match status {
        200 => "Ok".into(),
        201 => "Created".into(),
        202 => "Accepted".into(),
        204 => "NoContent".into(),
        400 => "BadRequest".into(),
        401 => "Unauthorized".into(),
        403 => "Forbidden".into(),
        404 => "NotFound".into(),
        405 => "MethodNotAllowed".into(),
        409 => "Conflict".into(),
        413 => "PayloadTooLarge".into(),
        415 => "UnsupportedMediaType".into(),
        422 => "UnprocessableEntity".into(),
        429 => "TooManyRequests".into(),
        500 => "InternalError".into(),
        503 => "ServiceUnavailable".into(),
        other => format!("Status{other}"),
    }
}

fn header_field(name: &str) -> proc_macro2::Ident {
    format_ident!("{}", name.to_ascii_lowercase().replace('-', "_"))
}

fn body_type(body: &ResponseBody) -> Option<TokenStream> {
    match body {
        ResponseBody::Json(name) => {
            let ident = format_ident!("{}", name);
            Some(quote! { types::#ident })
        }
        ResponseBody::Text(_) => Some(quote! { String }),
        ResponseBody::Empty => None,
    }
}

fn query_struct_ident(op: &Operation) -> proc_macro2::Ident {
    format_ident!("{}Query", pascal_case(&op.id))
}

fn response_enum(op: &Operation) -> TokenStream {
    let enum_ident = format_ident!("{}Response", pascal_case(&op.id));
    let doc = format!("Every response `{}` documents, one variant per status.", op.id);
    let mut variants = Vec::new();
    let mut status_arms = Vec::new();
    let mut into_arms = Vec::new();
    let mut problem_arms = Vec::new();
    for r in &op.responses {
        let v = format_ident!("{}", status_variant(r.status));
        let code = r.status;
        let vdoc = format!("{}: {}", r.status, r.description.trim());
        let status_tokens =
            quote! { StatusCode::from_u16(#code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) };
        let ty = body_type(&r.body);
        let write_body = match &r.body {
            ResponseBody::Json(_) => quote! { body_response(#status_tokens, &body) },
            ResponseBody::Text(media) => {
                // Metrics keep the Prometheus text format's content type.
                let content_type = if media == "text/plain" {
                    "text/plain; version=0.0.4; charset=utf-8".to_owned()
                } else {
                    media.clone()
                };
                quote! { text_response(#status_tokens, #content_type, body) }
            }
            ResponseBody::Empty => quote! { #status_tokens.into_response() },
        };
        if r.headers.is_empty() {
            match ty {
                Some(ty) => {
                    variants.push(quote! { #[doc = #vdoc] #v(#ty) });
                    status_arms.push(quote! { Self::#v(_) => #status_tokens });
                    into_arms.push(quote! { Self::#v(body) => #write_body });
                }
                None => {
                    variants.push(quote! { #[doc = #vdoc] #v });
                    status_arms.push(quote! { Self::#v => #status_tokens });
                    into_arms.push(quote! { Self::#v => #write_body });
                }
            }
        } else {
            let fields: Vec<TokenStream> = r
                .headers
                .iter()
                .map(|h| {
                    let f = header_field(&h.name);
                    let hdoc = format!("The `{}` header.", h.name);
                    if h.integer {
                        quote! { #[doc = #hdoc] #f: u32 }
                    } else {
                        quote! { #[doc = #hdoc] #f: String }
                    }
                })
                .collect();
            let names: Vec<_> = r.headers.iter().map(|h| header_field(&h.name)).collect();
            let header_names: Vec<_> = r.headers.iter().map(|h| h.name.to_ascii_lowercase()).collect();
            let ty = ty.unwrap_or_else(|| quote! { () });
            variants.push(quote! { #[doc = #vdoc] #v { body: #ty, #(#fields),* } });
            status_arms.push(quote! { Self::#v { .. } => #status_tokens });
            into_arms.push(quote! {
                Self::#v { body, #(#names),* } => {
                    let mut response = #write_body;
                    #(
                        if let Ok(value) = HeaderValue::from_str(&#names.to_string()) {
                            response.headers_mut().insert(#header_names, value);
                        }
                    )*
                    response
                }
            });
        }
        if r.status >= 400 && r.headers.is_empty() {
            problem_arms.push(quote! { #code => Self::#v(p) });
        } else if r.status >= 400 {
            let names: Vec<_> = r.headers.iter().map(|h| header_field(&h.name)).collect();
            let defaults: Vec<TokenStream> = r
                .headers
                .iter()
                .map(|h| {
                    if h.integer {
                        quote! { 1 }
                    } else {
                        quote! { String::new() }
                    }
                })
                .collect();
            problem_arms.push(quote! { #code => Self::#v { body: p, #(#names: #defaults),* } });
        }
    }
    quote! {
        #[doc = #doc]
        #[derive(Debug)]
        pub enum #enum_ident {
            #(#variants,)*
        }

        impl #enum_ident {
            /// The HTTP status of this response.
            pub fn status(&self) -> StatusCode {
                match self {
                    #(#status_arms,)*
                }
            }

            /// The documented variant for `p.status`; an undocumented status
            /// becomes a 500 `internal_error`, so the contract always holds.
            pub fn from_problem(p: ProblemBody) -> Self {
                match p.status {
                    #(#problem_arms,)*
                    _ => Self::InternalError(problem(StatusCode::INTERNAL_SERVER_ERROR, ProblemCode::InternalError, "Internal error", None, &p.request_id)),
                }
            }
        }

        impl IntoResponse for #enum_ident {
            fn into_response(self) -> Response {
                match self {
                    #(#into_arms,)*
                }
            }
        }
    }
}

/// The client's type for a string query parameter, when progenitor made one
/// (a constrained string becomes `types::<Operation><Param>`).
fn client_string_type(
    op: &Operation,
    p: &crate::openapi::Param,
    types: &BTreeSet<String>,
) -> Option<proc_macro2::Ident> {
    let name = format!("{}{}", pascal_case(&op.id), pascal_case(&p.name));
    (matches!(p.ty, ParamType::String { .. }) && types.contains(&name)).then(|| format_ident!("{}", name))
}

fn query_struct(op: &Operation, types: &BTreeSet<String>) -> Option<TokenStream> {
    if op.query_params.is_empty() {
        return None;
    }
    let ident = query_struct_ident(op);
    let raw_ident = format_ident!("{}Raw", ident);
    let doc = format!("Query parameters of `{}`, with the types the generated client sends them as.", op.id);
    let base_ty = |p: &crate::openapi::Param| match &p.ty {
        ParamType::Uuid => quote! { uuid::Uuid },
        ParamType::String { .. } => quote! { String },
        ParamType::Integer { rust, .. } => {
            syn::parse_str::<syn::Type>(rust).map_or_else(|_| quote! { i64 }, |t| quote! { #t })
        }
    };
    let optional = |p: &crate::openapi::Param, ty: TokenStream| {
        if p.required {
            ty
        } else {
            quote! { Option<#ty> }
        }
    };
    let raw_fields = op.query_params.iter().map(|p| {
        let f = format_ident!("{}", p.name);
        let ty = optional(p, base_ty(p));
        quote! { #f: #ty }
    });
    let fields = op.query_params.iter().map(|p| {
        let f = format_ident!("{}", p.name);
        let ty = match client_string_type(op, p, types) {
            Some(t) => quote! { types::#t },
            None => base_ty(p),
        };
        let ty = optional(p, ty);
        let pdoc = p.description.clone().unwrap_or_else(|| format!("`{}`", p.name));
        quote! { #[doc = #pdoc] pub #f: #ty }
    });
    let all_optional = op.query_params.iter().all(|p| !p.required);
    let default = if all_optional {
        quote! { Default, }
    } else {
        quote! {}
    };
    Some(quote! {
        /// The query as read, before its bounds are judged.
        #[derive(Debug, Clone, serde::Deserialize)]
        struct #raw_ident {
            #(#raw_fields,)*
        }

        #[doc = #doc]
        #[derive(Debug, Clone, #default)]
        pub struct #ident {
            #(#fields,)*
        }
    })
}

fn trait_method(op: &Operation) -> TokenStream {
    let method = format_ident!("{}", snake_case(&op.id));
    let response = format_ident!("{}Response", pascal_case(&op.id));
    let doc = format!(
        "`{} {}`{}",
        op.method.to_uppercase(),
        op.path,
        op.summary.as_ref().map(|s| format!(": {s}")).unwrap_or_default()
    );
    let mut args = vec![quote! { ctx: RequestContext }];
    if let Some(scheme) = &op.security {
        let s = format_ident!("{}", pascal_case(scheme));
        args.push(quote! { auth: Self::#s });
    }
    for p in &op.path_params {
        let f = format_ident!("{}", p.name);
        let ty = if p.ty == ParamType::Uuid {
            quote! { uuid::Uuid }
        } else {
            quote! { String }
        };
        args.push(quote! { #f: #ty });
    }
    if !op.query_params.is_empty() {
        let q = query_struct_ident(op);
        args.push(quote! { query: #q });
    }
    if let Some(body) = &op.body {
        let b = format_ident!("{}", body);
        args.push(quote! { body: types::#b });
    }
    quote! {
        #[doc = #doc]
        fn #method(&self, #(#args),*) -> impl Future<Output = #response> + Send;
    }
}

fn handler(index: usize, op: &Operation, types: &BTreeSet<String>) -> TokenStream {
    let handler = format_ident!("handle_{}", snake_case(&op.id));
    let method = format_ident!("{}", snake_case(&op.id));
    let response = format_ident!("{}Response", pascal_case(&op.id));
    let mut steps = Vec::new();
    let mut call_args = vec![quote! { ctx.clone() }];
    if !op.path_params.is_empty() {
        steps.push(quote! {
            let raw_params = RawPathParams::from_request_parts(&mut parts, &()).await
                .map_err(|_| reject(StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid, "Invalid parameter", "a path parameter is malformed", &ctx))?;
            let params = path_params(&raw_params);
        });
    } else if op.security.is_some() {
        steps.push(quote! { let params = std::collections::HashMap::new(); });
    }
    // The credential first: nothing of the request is judged for a caller
    // the implementation has not verified.
    if let Some(scheme) = &op.security {
        if op.client_certificate {
            // A verified client certificate, a bearer, or both; neither is
            // 401 before the implementation is asked.
            let authenticate = format_ident!("authenticate_{}_or_client_certificate", snake_case(scheme));
            steps.push(quote! {
                let certificate = parts.extensions.get::<ClientCertificate>().cloned();
                let token = optional_bearer(&parts.headers, &ctx)?;
                if certificate.is_none() && token.is_none() {
                    return Err(reject(StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated, "Authentication required",
                        "this operation requires a client certificate or a bearer token", &ctx));
                }
                let auth = api.#authenticate(&ctx, &crate::contract::OPERATIONS[#index], &params, token, certificate).await
                    .map_err(|problem| #response::from_problem(problem).into_response())?;
            });
        } else {
            let authenticate = format_ident!("authenticate_{}", snake_case(scheme));
            steps.push(quote! {
                let token = bearer(&parts.headers, &ctx)?;
                let auth = api.#authenticate(&ctx, &crate::contract::OPERATIONS[#index], &params, token).await
                    .map_err(|problem| #response::from_problem(problem).into_response())?;
            });
        }
        call_args.push(quote! { auth });
    }
    if !op.path_params.is_empty() {
        for p in &op.path_params {
            let f = format_ident!("{}", p.name);
            let name = &p.name;
            if p.ty == ParamType::Uuid {
                steps.push(quote! { let #f = path_uuid(&params, #name, &ctx)?; });
            } else {
                steps.push(quote! { let #f = path_string(&params, #name); });
            }
            call_args.push(quote! { #f });
        }
    }
    if !op.query_params.is_empty() {
        let q = query_struct_ident(op);
        let raw_q = format_ident!("{}Raw", q);
        steps.push(quote! { let raw: #raw_q = query_params(&parts, &ctx)?; });
        for p in &op.query_params {
            let f = format_ident!("{}", p.name);
            let name = &p.name;
            match p.ty {
                ParamType::Integer { min, max, .. } => {
                    let min = min.map(|m| quote! { Some(#m) }).unwrap_or(quote! { None });
                    let max = max.map(|m| quote! { Some(#m) }).unwrap_or(quote! { None });
                    let access = if p.required {
                        quote! { Some(AsI64::as_i64(&raw.#f)) }
                    } else {
                        quote! { raw.#f.as_ref().map(AsI64::as_i64) }
                    };
                    steps.push(quote! { check_integer(#access, #name, #min, #max, &ctx)?; });
                }
                ParamType::String { max_length: Some(max) } => {
                    let max = max as usize;
                    let access = if p.required {
                        quote! { Some(raw.#f.as_str()) }
                    } else {
                        quote! { raw.#f.as_deref() }
                    };
                    steps.push(quote! { check_length(#access, #name, #max, &ctx)?; });
                }
                _ => {}
            }
        }
        // Judged: now the types the client sends them as.
        let conversions = op.query_params.iter().map(|p| {
            let f = format_ident!("{}", p.name);
            let malformed = format!("query parameter `{}` is malformed", p.name);
            match client_string_type(op, p, types) {
                Some(t) if p.required => quote! {
                    #f: types::#t::try_from(raw.#f).map_err(|_| reject(StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid, "Invalid parameter", #malformed, &ctx))?
                },
                Some(t) => quote! {
                    #f: raw.#f.map(types::#t::try_from).transpose().map_err(|_| reject(StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid, "Invalid parameter", #malformed, &ctx))?
                },
                None => quote! { #f: raw.#f },
            }
        });
        steps.push(quote! { let query = #q { #(#conversions,)* }; });
        call_args.push(quote! { query });
    }
    if let Some(body) = &op.body {
        let b = format_ident!("{}", body);
        let limit = op.max_body_bytes as usize;
        steps.push(quote! { let body: types::#b = json_body(&parts, unread.take().unwrap_or_default(), #body, #limit, &ctx).await?; });
        call_args.push(quote! { body });
    }
    let body_binding = if op.body.is_some() {
        quote! { body }
    } else {
        quote! { _body }
    };
    // A request refused before its body is read (a bad credential, a bad
    // parameter) still has the body drained, bounded, so the answer is not
    // lost to a connection reset.
    let (keep_body, drain_refused) = if op.body.is_some() {
        (
            quote! { let mut unread = Some(body); },
            quote! {
                if outcome.is_err() && let Some(rest) = unread.take() {
                    discard(rest).await;
                }
            },
        )
    } else {
        (quote! {}, quote! {})
    };
    let parts_binding = if op.path_params.is_empty() {
        quote! { parts }
    } else {
        quote! { mut parts }
    };
    quote! {
        async fn #handler<A: Api>(State(api): State<Arc<A>>, req: Request) -> Response {
            let (#parts_binding, #body_binding) = req.into_parts();
            let ctx = RequestContext::from_parts(&parts);
            #keep_body
            let outcome: Result<Response, Response> = async {
                #(#steps)*
                Ok(api.#method(#(#call_args),*).await.into_response())
            }.await;
            #drain_refused
            let mut response = outcome.unwrap_or_else(|rejection| rejection);
            set_request_id(response.headers_mut(), &ctx.request_id);
            response
        }
    }
}

/// `types` names every type progenitor generated, so query parameters get
/// the same Rust types in the stubs as in the client.
pub fn generate(api: &ApiModel, types: &BTreeSet<String>) -> TokenStream {
    let schemes = api.security_schemes.iter().map(|s| {
        let ident = format_ident!("{}", pascal_case(s));
        let authenticate = format_ident!("authenticate_{}", snake_case(s));
        let with_certificate = api
            .operations
            .iter()
            .any(|op| op.client_certificate && op.security.as_deref() == Some(s.as_str()))
            .then(|| {
                let authenticate = format_ident!("authenticate_{}_or_client_certificate", snake_case(s));
                let doc = format!(
                    "Verifies the credentials of an operation marked `x-oneprotect-client-certificate` under `{s}`: the client certificate the TLS layer verified, the bearer, or both (at least one is present). Runs before anything else of the request is read; an `Err` is answered as it is."
                );
                quote! {
                    #[doc = #doc]
                    fn #authenticate(
                        &self,
                        ctx: &RequestContext,
                        op: &'static crate::contract::OperationSpec,
                        path: &std::collections::HashMap<String, String>,
                        token: Option<BearerToken>,
                        certificate: Option<ClientCertificate>,
                    ) -> impl Future<Output = Result<Self::#ident, ProblemBody>> + Send;
                }
            });
        let type_doc = format!("The verified caller of the `{s}` security scheme, as the implementation's authenticator returns it.");
        let fn_doc = format!(
            "Verifies a `{s}` bearer credential for `op` before anything else of the request is read (path parameters are passed unjudged, as routed). An `Err` is answered as it is, mapped to the operation's documented status."
        );
        quote! {
            #[doc = #type_doc]
            type #ident: Send + 'static;
            #[doc = #fn_doc]
            fn #authenticate(
                &self,
                ctx: &RequestContext,
                op: &'static crate::contract::OperationSpec,
                path: &std::collections::HashMap<String, String>,
                token: BearerToken,
            ) -> impl Future<Output = Result<Self::#ident, ProblemBody>> + Send;
            #with_certificate
        }
    });
    let enums = api.operations.iter().map(response_enum);
    let queries = api.operations.iter().filter_map(|op| query_struct(op, types));
    let methods = api.operations.iter().map(trait_method);
    let handlers = api.operations.iter().enumerate().map(|(i, op)| handler(i, op, types));

    let mut by_path: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &api.operations {
        by_path.entry(op.path.as_str()).or_default().push(op);
    }
    let routes = by_path.iter().map(|(path, ops)| {
        let method_and_handler =
            |op: &Operation| (format_ident!("{}", op.method), format_ident!("handle_{}", snake_case(&op.id)));
        let (m, h) = method_and_handler(ops[0]);
        let rest = ops[1..].iter().map(|op| {
            let (m, h) = method_and_handler(op);
            quote! { .#m(#h::<A>) }
        });
        quote! { .route(#path, axum::routing::#m(#h::<A>) #(#rest)*) }
    });

    quote! {
        #(#queries)*

        #(#enums)*

        /// The platform API: one authenticator per security scheme and one
        /// method per operation of specs/openapi.yaml. A stub calls the
        /// authenticator first; only for a verified caller does it parse and
        /// schema-validate the parameters and the body, then call the method.
        pub trait Api: Send + Sync + 'static {
            #(#schemes)*

            #(#methods)*
        }

        fn body_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
            match serde_json::to_vec(body) {
                Ok(bytes) => {
                    let mut response = (status, bytes).into_response();
                    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response
                }
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }

        #(#handlers)*

        /// Every route of the contract, answering unknown paths (404),
        /// wrong methods (405) and bad inputs (400/401/413/415) with a
        /// `Problem`.
        pub fn router<A: Api>(api: Arc<A>) -> axum::Router {
            axum::Router::new()
                #(#routes)*
                .fallback(not_found)
                .method_not_allowed_fallback(method_not_allowed)
                .with_state(api)
        }
    }
}
