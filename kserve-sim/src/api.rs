//! HTTP layer: routes, query/body decoding, content negotiation, the fault-injection and
//! request-log middleware, and the mapping of registry results to responses.
//!
//! Paths served (everything else is a 404 `Status`, an unsupported verb a 405 `Status`):
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/serving.kserve.io`,
//!   `/apis/serving.kserve.io/v1beta1`; health: `/healthz`, `/livez`, `/readyz`;
//! - `/apis/serving.kserve.io/v1beta1/inferenceservices` (all namespaces: list, watch);
//! - `/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices` (list, watch, create,
//!   deletecollection);
//! - `.../inferenceservices/{name}` (get, update, patch, delete) and `.../{name}/status`
//!   (get, update, patch).
//!
//! Query parameters honoured: `watch`, `resourceVersion`, `resourceVersionMatch`,
//! `timeoutSeconds`, `allowWatchBookmarks`, `sendInitialEvents`, `labelSelector`,
//! `fieldSelector`, `limit`, `continue`, `fieldManager`, `force`, `fieldValidation`, `dryRun`,
//! `includeObject`. Bodies may be JSON or YAML.

use crate::discovery;
use crate::error::ApiError;
use crate::faults::{FaultState, Injected};
use crate::fieldset::Scope;
use crate::render::{self, IncludeObject};
use crate::requestlog::{RequestLog, RequestRecord, Verb};
use crate::resource::{DeleteOpts, Deleted, PatchBody, Registry, WriteOpts};
use crate::schema::FieldValidation;
use crate::selector::Selectors;
use crate::watch::{self, WatchRequest};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Prefix of the served group/version.
const GV_PREFIX: &str = "/apis/serving.kserve.io/v1beta1";

/// Server settings the handlers read.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Server-side watch timeout (default and cap).
    pub watch_timeout: Duration,
    /// Bookmark period.
    pub bookmark_interval: Duration,
    /// `host:port` the server is reachable at.
    pub server_address: String,
}

/// State shared by all handlers.
pub struct AppState {
    /// Objects and verbs.
    pub registry: Arc<Registry>,
    /// Fault injection.
    pub faults: Arc<FaultState>,
    /// Request log.
    pub log: Arc<RequestLog>,
    /// Settings.
    pub settings: Settings,
}

type Query = HashMap<String, String>;

fn query(req: &HttpRequest) -> Result<Query, ApiError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner().into_iter().collect())
        .map_err(|e| ApiError::bad_request(format!("malformed query: {e}")))
}

fn flag(q: &Query, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("true" | "1"))
}

fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> HttpResponse {
    let mut r = HttpResponse::build(code);
    r.content_type("application/json");
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        r.append_header((header::WARNING, format!("299 - \"{escaped}\"")));
    }
    r.body(body.to_string())
}

/// The response for an [`ApiError`].
pub fn error_response(e: &ApiError) -> HttpResponse {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = HttpResponse::build(code);
    r.content_type("application/json");
    if let Some(s) = e.retry_after_seconds {
        r.insert_header((header::RETRY_AFTER, s.to_string()));
    }
    r.body(e.to_status().to_string())
}

fn respond(result: Result<HttpResponse, ApiError>) -> HttpResponse {
    result.unwrap_or_else(|e| error_response(&e))
}

fn content_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Decodes a request body by its content type (`ct`, lowercase, without parameters): JSON, or
/// for `application/yaml` and `application/apply-patch+yaml` JSON or YAML. A 400 for an empty
/// or undecodable body.
pub fn decode(bytes: &[u8], ct: &str) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let yaml = |b: &[u8]| {
        serde_yaml::from_slice::<Value>(b)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    };
    match ct {
        "application/yaml" | "application/apply-patch+yaml" => {
            serde_json::from_slice(bytes).or_else(|_| yaml(bytes))
        }
        _ => serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        }),
    }
}

fn write_opts(req: &HttpRequest, q: &Query) -> Result<WriteOpts, ApiError> {
    let (manager, explicit) = match q.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => (m.clone(), true),
        None => {
            let ua = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("unknown");
            let prefix = ua.split('/').next().unwrap_or("unknown").trim();
            (
                if prefix.is_empty() { "unknown" } else { prefix }.to_string(),
                false,
            )
        }
    };
    if manager.len() > 128 {
        return Err(ApiError::invalid_options(
            "PatchOptions",
            "fieldManager",
            "Too long: may not be more than 128 bytes",
        ));
    }
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    let force = match q.get("force").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "force: invalid value {other:?}"
            )));
        }
    };
    Ok(WriteOpts {
        dry_run,
        manager,
        explicit_manager: explicit,
        field_validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        force,
    })
}

fn render_for(req: &HttpRequest, q: &Query) -> Result<render::Render, ApiError> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    render::negotiate(
        accept,
        IncludeObject::parse(q.get("includeObject").map(String::as_str)),
    )
}

async fn list_or_watch(
    req: HttpRequest,
    state: web::Data<AppState>,
    namespace: Option<String>,
) -> HttpResponse {
    respond((|| {
        let q = query(&req)?;
        let selectors = Selectors::parse(
            q.get("labelSelector").map(String::as_str),
            q.get("fieldSelector").map(String::as_str),
        )?;
        let render = render_for(&req, &q)?;
        if flag(&q, "watch") {
            let send_initial = flag(&q, "sendInitialEvents");
            let allow_bookmarks = flag(&q, "allowWatchBookmarks");
            if send_initial
                && q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
            {
                return Err(ApiError::invalid_options(
                    "ListOptions",
                    "resourceVersionMatch",
                    "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            let requested = q
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .filter(|t| *t > 0)
                .map(Duration::from_secs);
            let cap = state.settings.watch_timeout;
            let faults = state.faults.get();
            let wr = WatchRequest {
                namespace,
                selectors,
                resource_version: q.get("resourceVersion").cloned(),
                send_initial_events: send_initial,
                allow_bookmarks,
                timeout: requested.map_or(cap, |t| t.min(cap)),
                bookmark_interval: state.settings.bookmark_interval,
                cut_after_events: faults.cut_watches_after_events,
                cut_after: faults.cut_watches_after,
                render,
            };
            let stream = watch::open(&state.registry.store, wr)?;
            return Ok(HttpResponse::Ok()
                .content_type("application/json")
                .streaming(stream));
        }
        let limit = match q.get("limit") {
            Some(l) => Some(
                l.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            ),
            None => None,
        };
        let page = state.registry.list(
            namespace.as_deref(),
            &selectors,
            limit,
            q.get("continue").map(String::as_str),
        )?;
        if q.get("resourceVersionMatch").map(String::as_str) == Some("Exact")
            && let Some(rv) = q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok())
            && rv != page.resource_version
        {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                page.resource_version
            )));
        }
        let mut list_meta = json!({"resourceVersion": page.resource_version.to_string()});
        if let Some(c) = &page.continue_token {
            list_meta["continue"] = json!(c);
        }
        if let Some(n) = page.remaining {
            list_meta["remainingItemCount"] = json!(n);
        }
        let body = render::list_body(&page.items, list_meta, render);
        Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(body))
    })())
}

async fn list_all(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    list_or_watch(req, state, None).await
}

async fn list_ns(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    list_or_watch(req, state, Some(path.into_inner())).await
}

async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond((|| {
        let q = query(&req)?;
        let ct = content_type(&req);
        if !matches!(ct.as_str(), "" | "application/json" | "application/yaml") {
            return Err(ApiError::unsupported_media_type(&ct));
        }
        let obj = decode(&body, &ct)?;
        let opts = write_opts(&req, &q)?;
        let w = state.registry.create(&path, obj, &opts)?;
        Ok(json_response(StatusCode::CREATED, &w.object, &w.warnings))
    })())
}

fn scope_of(sub: Option<&str>) -> Result<Scope, ApiError> {
    match sub {
        None => Ok(Scope::Main),
        Some("status") => Ok(Scope::Status),
        Some(_) => Err(ApiError::path_not_found()),
    }
}

async fn get_object(
    req: HttpRequest,
    state: web::Data<AppState>,
    ns: String,
    name: String,
    sub: Option<String>,
) -> HttpResponse {
    respond((|| {
        scope_of(sub.as_deref())?;
        let q = query(&req)?;
        let render = render_for(&req, &q)?;
        let obj = state.registry.get(&ns, &name)?;
        Ok(json_response(
            StatusCode::OK,
            &render::object(&obj, render),
            &[],
        ))
    })())
}

async fn update_object(
    req: HttpRequest,
    state: web::Data<AppState>,
    ns: String,
    name: String,
    sub: Option<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond((|| {
        let scope = scope_of(sub.as_deref())?;
        let q = query(&req)?;
        let ct = content_type(&req);
        if !matches!(ct.as_str(), "" | "application/json" | "application/yaml") {
            return Err(ApiError::unsupported_media_type(&ct));
        }
        let obj = decode(&body, &ct)?;
        let opts = write_opts(&req, &q)?;
        let w = state.registry.update(&ns, &name, obj, scope, &opts)?;
        Ok(json_response(StatusCode::OK, &w.object, &w.warnings))
    })())
}

async fn patch_object(
    req: HttpRequest,
    state: web::Data<AppState>,
    ns: String,
    name: String,
    sub: Option<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond((|| {
        let scope = scope_of(sub.as_deref())?;
        let q = query(&req)?;
        let ct = content_type(&req);
        let decoded = decode(&body, &ct);
        let patch = match ct.as_str() {
            "application/merge-patch+json" => PatchBody::Merge(decoded?),
            "application/json-patch+json" => PatchBody::Json(decoded?),
            "application/apply-patch+yaml" => PatchBody::Apply(decoded?),
            other => return Err(ApiError::unsupported_media_type(other)),
        };
        let opts = write_opts(&req, &q)?;
        if opts.force && !matches!(patch, PatchBody::Apply(_)) {
            return Err(ApiError::invalid_options(
                "PatchOptions",
                "force",
                "Unsupported value: true: may not be specified for non-apply patch",
            ));
        }
        let w = state.registry.patch(&ns, &name, patch, scope, &opts)?;
        let code = if w.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(json_response(code, &w.object, &w.warnings))
    })())
}

fn delete_opts(q: &Query, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    let mut opts = DeleteOpts {
        dry_run: q.get("dryRun").map(String::as_str) == Some("All"),
        ..DeleteOpts::default()
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        opts.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if v["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d == "All"))
        {
            opts.dry_run = true;
        }
    }
    Ok(opts)
}

async fn delete_object(
    req: HttpRequest,
    state: web::Data<AppState>,
    ns: String,
    name: String,
    body: web::Bytes,
) -> HttpResponse {
    respond((|| {
        let q = query(&req)?;
        let opts = delete_opts(&q, &body)?;
        match state.registry.delete(&ns, &name, &opts)? {
            Deleted::Pending(obj) => Ok(json_response(StatusCode::OK, &obj, &[])),
            Deleted::Gone(obj) => Ok(json_response(
                StatusCode::OK,
                &Registry::deleted_status(&obj),
                &[],
            )),
        }
    })())
}

async fn delete_collection(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond((|| {
        let q = query(&req)?;
        let selectors = Selectors::parse(
            q.get("labelSelector").map(String::as_str),
            q.get("fieldSelector").map(String::as_str),
        )?;
        let opts = delete_opts(&q, &body)?;
        let page = state.registry.list(Some(&path), &selectors, None, None)?;
        let mut items = Vec::new();
        for obj in page.items {
            let name = crate::meta::name(&obj).to_string();
            match state.registry.delete(&path, &name, &opts) {
                Ok(Deleted::Pending(o) | Deleted::Gone(o)) => items.push(o),
                // Deleted concurrently: nothing to report.
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let body = render::list(
            &items,
            json!({"resourceVersion": state.registry.store.lock().current_rv().to_string()}),
            render::Render::Full,
        );
        Ok(json_response(StatusCode::OK, &body, &[]))
    })())
}

async fn object_route(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (ns, name) = path.into_inner();
    dispatch(req, state, ns, name, None, body).await
}

async fn subresource_route(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (ns, name, sub) = path.into_inner();
    dispatch(req, state, ns, name, Some(sub), body).await
}

async fn dispatch(
    req: HttpRequest,
    state: web::Data<AppState>,
    ns: String,
    name: String,
    sub: Option<String>,
    body: web::Bytes,
) -> HttpResponse {
    use actix_web::http::Method;
    match (req.method().clone(), sub.is_some()) {
        (Method::GET, _) => get_object(req, state, ns, name, sub).await,
        (Method::PUT, _) => update_object(req, state, ns, name, sub, body).await,
        (Method::PATCH, _) => patch_object(req, state, ns, name, sub, body).await,
        (Method::DELETE, false) => delete_object(req, state, ns, name, body).await,
        _ => error_response(&ApiError::method_not_allowed()),
    }
}

async fn method_not_allowed() -> HttpResponse {
    error_response(&ApiError::method_not_allowed())
}

async fn not_found() -> HttpResponse {
    error_response(&ApiError::path_not_found())
}

fn ok_json(v: Value) -> HttpResponse {
    json_response(StatusCode::OK, &v, &[])
}

/// Namespaces to report: the usual ones plus every namespace holding an object.
fn namespaces(state: &AppState) -> Vec<String> {
    let mut names: Vec<String> = ["default", "kube-system"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(state.registry.store.lock().namespaces());
    names.sort();
    names.dedup();
    names
}

/// Registers all routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/version",
        web::get().to(|| async { ok_json(discovery::version()) }),
    )
    .route(
        "/version/",
        web::get().to(|| async { ok_json(discovery::version()) }),
    )
    .route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().body("ok") }),
    )
    .route(
        "/livez",
        web::get().to(|| async { HttpResponse::Ok().body("ok") }),
    )
    .route(
        "/readyz",
        web::get().to(|| async { HttpResponse::Ok().body("ok") }),
    )
    .route(
        "/api",
        web::get().to(|state: web::Data<AppState>| async move {
            ok_json(discovery::core_versions(&state.settings.server_address))
        }),
    )
    .route(
        "/api/v1",
        web::get().to(|| async { ok_json(discovery::core_resources()) }),
    )
    .route(
        "/apis",
        web::get().to(|| async { ok_json(discovery::groups()) }),
    )
    .route(
        "/apis/serving.kserve.io",
        web::get().to(|| async { ok_json(discovery::group_doc()) }),
    )
    .route(
        GV_PREFIX,
        web::get().to(|| async { ok_json(discovery::resources()) }),
    )
    .service(
        web::resource(format!("{GV_PREFIX}/inferenceservices"))
            .route(web::get().to(list_all))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource(format!("{GV_PREFIX}/namespaces/{{ns}}/inferenceservices"))
            .route(web::get().to(list_ns))
            .route(web::post().to(create))
            .route(web::delete().to(delete_collection))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource(format!(
            "{GV_PREFIX}/namespaces/{{ns}}/inferenceservices/{{name}}"
        ))
        .to(object_route),
    )
    .service(
        web::resource(format!(
            "{GV_PREFIX}/namespaces/{{ns}}/inferenceservices/{{name}}/{{sub}}"
        ))
        .to(subresource_route),
    )
    .route(
        "/openapi/v3",
        web::get().to(|| async { ok_json(discovery::openapi_v3_root()) }),
    )
    .route(
        "/openapi/v3/apis/serving.kserve.io/v1beta1",
        web::get().to(|state: web::Data<AppState>| async move {
            ok_json(discovery::openapi_v3_group(
                state.registry.schema.document(),
            ))
        }),
    )
    .route(
        "/api/v1/namespaces",
        web::get().to(|state: web::Data<AppState>| async move {
            ok_json(discovery::namespace_list(&namespaces(&state)))
        }),
    )
    .route(
        "/api/v1/namespaces/{name}",
        web::get()
            .to(|path: web::Path<String>| async move { ok_json(discovery::namespace(&path)) }),
    )
    .default_service(web::to(not_found));
}

/// What a request is, from its method, path, query and content type.
fn classify(req: &ServiceRequest) -> RequestRecord {
    let path = req.path().to_string();
    let query = req.query_string().to_string();
    let method = req.method().as_str().to_string();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut record = RequestRecord {
        verb: Verb::Other,
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        status: 0,
        namespace: None,
        name: None,
        subresource: None,
        injected: false,
    };
    let Some(rest) = path.strip_prefix(GV_PREFIX) else {
        if matches!(
            path.as_str(),
            "/version"
                | "/version/"
                | "/api"
                | "/api/v1"
                | "/apis"
                | "/apis/serving.kserve.io"
                | "/healthz"
                | "/livez"
                | "/readyz"
        ) || path.starts_with("/openapi")
        {
            record.verb = Verb::Discovery;
        }
        return record;
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (ns, after) = match segs.as_slice() {
        ["namespaces", ns, rest @ ..] => (Some(*ns), rest),
        other => (None, other),
    };
    let (name, sub) = match after {
        [] => {
            record.verb = Verb::Discovery;
            return record;
        }
        ["inferenceservices"] => (None, None),
        ["inferenceservices", name] => (Some(*name), None),
        ["inferenceservices", name, sub] => (Some(*name), Some(*sub)),
        _ => return record,
    };
    record.namespace = ns.map(str::to_string);
    record.name = name.map(str::to_string);
    record.subresource = sub.map(str::to_string);
    let watch = web::Query::<Vec<(String, String)>>::from_query(&query)
        .map(|q| {
            q.iter()
                .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
        })
        .unwrap_or(false);
    let is_apply = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/apply-patch"));
    record.verb = match (method.as_str(), name.is_some()) {
        ("GET", true) => Verb::Get,
        ("GET", false) if watch => Verb::Watch,
        ("GET", false) => Verb::List,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) if is_apply => Verb::Apply,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => Verb::Other,
    };
    record
}

/// Middleware: classifies the request, injects latency and faults on resource requests, and
/// records the request with its response status.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let mut record = classify(&req);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let is_resource = record.verb.is_resource();
    if let (Some(state), Some(verb)) = (&state, record.verb.rbac())
        && state.faults.forbids(verb)
    {
        let e = ApiError::forbidden(verb, record.name.as_deref(), record.namespace.as_deref());
        record.status = e.code;
        record.injected = true;
        state.log.push(record);
        let (http_req, _) = req.into_parts();
        return Ok(ServiceResponse::new(http_req, error_response(&e)));
    }
    if let (Some(state), true) = (&state, is_resource) {
        let (latency, injected) = state.faults.decide();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(fault) = injected {
            let e = match fault {
                Injected::InternalError => ApiError::internal("injected fault (kserve-sim)"),
                Injected::Throttled(s) => ApiError::too_many_requests(s),
            };
            record.status = e.code;
            record.injected = true;
            state.log.push(record);
            let (http_req, _) = req.into_parts();
            return Ok(ServiceResponse::new(http_req, error_response(&e)));
        }
    }
    let res = next.call(req).await?;
    record.status = res.status().as_u16();
    if let Some(state) = state {
        state.log.push(record);
    }
    Ok(res.map_into_boxed_body())
}
