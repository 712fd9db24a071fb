//! The account dashboard (`GET /dashboard`): server-rendered pages for an
//! account's owner, signed in with an account token.
//!
//! Every page is built from the same store reads and DTOs as the API
//! (`BalanceOut` for the overview, the usage list and summaries, the
//! ledger), so a number on a page is the API's decimal string, grouped by
//! thousands for reading. Markup is written by hand with [`html::esc`] on
//! every value. Assets (`assets/`: CSS, the chart script, an icon) are
//! embedded in the binary; the Content-Security-Policy allows scripts and
//! styles from creditd only, and no inline script: the chart reads its data
//! from a JSON block. Everything but the chart works without JavaScript.

pub mod html;
mod ledger;
mod manage;
mod overview;
pub mod providers;
pub mod session;
mod usage;

use std::collections::HashMap;

use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use creditd_core::units::Factor;
use creditd_store::StoreError;

use crate::error::ApiError;
use crate::state::AppState;
use html::esc;
use session::Session;

pub use manage::ProductDisplay;
pub use providers::ProviderApi;

/// What the dashboard needs from the configuration.
#[derive(Clone, Debug, Default)]
pub struct DashboardConfig {
    /// `server.public_url`: where users reach creditd (`https://…` makes
    /// the session cookie `Secure`).
    pub public_url: Option<String>,
    /// `[display.currencies]`: units of each currency per 1 USD.
    pub currencies: Vec<(String, Factor)>,
    /// `payments.creem.api_key` and `api_base`: card top-ups, packs and plans.
    pub creem: Option<ProviderApi>,
    /// `payments.nowpayments.api_key` and `api_base`: crypto top-ups.
    pub nowpayments: Option<ProviderApi>,
    /// How each Creem product is shown, by product id.
    pub products: HashMap<String, ProductDisplay>,
}

impl DashboardConfig {
    pub fn secure_cookies(&self) -> bool {
        self.public_url.as_deref().is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"))
    }
}

pub(crate) fn config(state: &AppState) -> &DashboardConfig {
    &state.config.dashboard
}

/// The dashboard's paths (metric labels).
pub const PATHS: &[&str] = &[
    "/dashboard",
    "/dashboard/usage",
    "/dashboard/usage/export",
    "/dashboard/ledger",
    "/dashboard/logout",
    "/dashboard/manage",
    "/dashboard/manage/switch",
    "/dashboard/manage/checkout",
    "/dashboard/manage/crypto",
    "/dashboard/manage/cancel",
    "/dashboard/assets/{name}",
];

/// The dashboard's routes (merged into the API's router).
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/dashboard/manage", get(manage_page))
        .route("/dashboard/manage/switch", get(switch_page))
        .route("/dashboard/manage/checkout", post(manage_checkout))
        .route("/dashboard/manage/crypto", post(manage_crypto))
        .route("/dashboard/manage/cancel", post(manage_cancel))
        .route("/dashboard", get(overview_or_sign_in))
        .route("/dashboard/usage", get(usage_page))
        .route("/dashboard/usage/export", get(usage_export))
        .route("/dashboard/ledger", get(ledger_page))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/assets/{name}", get(asset))
        .layer(middleware::from_fn_with_state(state, security_headers))
}

/// The Content-Security-Policy: scripts, styles and images from creditd
/// only, no inline script. A form may lead to creditd or, through the
/// redirect a payment button answers, to a provider's https page (or a
/// plain-http stand-in configured as a provider's API base).
fn csp(state: &AppState) -> HeaderValue {
    let c = config(state);
    let mut form_action = String::from("'self' https:");
    for origin in [&c.creem, &c.nowpayments].into_iter().flatten().filter_map(ProviderApi::http_origin) {
        form_action.push(' ');
        form_action.push_str(&origin);
    }
    let text = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action {form_action}; base-uri 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

/// Every dashboard answer: the CSP and friends; pages are never cached.
async fn security_headers(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, csp(&state));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// An HTML answer.
pub(crate) fn html_response(status: StatusCode, page: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], page).into_response()
}

/// A failure shown as a page (the API's status and message).
#[derive(Debug)]
pub(crate) struct PageError(ApiError);

impl PageError {
    pub fn internal(message: &str) -> Self {
        PageError(ApiError::internal(message))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        PageError(ApiError::invalid(message))
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        PageError(ApiError::from(e))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status.is_server_error() {
            tracing::error!(code = e.code, message = %e.message, "dashboard page failed");
        }
        let title = e.status.canonical_reason().unwrap_or("Error");
        let body = format!(
            "<section class=\"card narrow\"><h1>{}</h1><p>{}</p><p><a href=\"/dashboard\">Back to the overview</a></p></section>",
            esc(title),
            esc(&e.message)
        );
        html_response(e.status, html::page(title, None, &body))
    }
}

pub(crate) type PageResult = Result<Response, PageError>;

/// The query string as a map; a malformed one is a `400` page.
fn query_map(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, PageError> {
    query.map(|Query(q)| q).map_err(|e| PageError::invalid(format!("invalid query string: {}", e.body_text())))
}

async fn overview_or_sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let query = match query_map(query) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if let Some(token) = query.get("token") {
        return session::sign_in(&state, &headers, token).await;
    }
    let session = match Session::from_headers(&state, &headers).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    overview::page(&state, &session, &query).await.unwrap_or_else(IntoResponse::into_response)
}

async fn usage_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let session = match Session::from_headers(&state, &headers).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let result = match query_map(query) {
        Ok(q) => usage::page(&state, &session, &q).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn usage_export(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let session = match Session::from_headers(&state, &headers).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let result = match query_map(query) {
        Ok(q) => usage::export(&state, &session, &q).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn ledger_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let session = match Session::from_headers(&state, &headers).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let result = match query_map(query) {
        Ok(q) => ledger::page(&state, &session, &q).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A form's fields (CSRF token and the action's own).
type Fields = Form<HashMap<String, String>>;

/// `403` page for a form without this session's CSRF token.
fn csrf_refused() -> Response {
    PageError(ApiError::forbidden("this form has expired: reload the page and try again")).into_response()
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Fields, axum::extract::rejection::FormRejection>,
) -> Response {
    let session = match Session::from_headers(&state, &headers).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let fields = form.map(|Form(f)| f).unwrap_or_default();
    if !session.csrf_ok(fields.get("csrf").map(String::as_str)) {
        return csrf_refused();
    }
    session::sign_out(&state, &session).await
}

async fn manage_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let session = match Session::from_headers(&state, &headers).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let result = match query_map(query) {
        Ok(q) => manage::page(&state, &session, &q).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn switch_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let session = match Session::from_headers(&state, &headers).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let result = match query_map(query) {
        Ok(q) => manage::switch_page(&state, &session, &q).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The session and the fields of a form that carries its CSRF token.
async fn form_session(
    state: &AppState,
    headers: &HeaderMap,
    form: Result<Fields, FormRejection>,
) -> Result<(Session, HashMap<String, String>), Response> {
    let session = Session::from_headers(state, headers).await?;
    let fields = form.map(|Form(f)| f).unwrap_or_default();
    if !session.csrf_ok(fields.get("csrf").map(String::as_str)) {
        return Err(csrf_refused());
    }
    Ok((session, fields))
}

async fn manage_checkout(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Fields, FormRejection>,
) -> Response {
    match form_session(&state, &headers, form).await {
        Ok((session, fields)) => manage::checkout(&state, &session, &headers, &fields).await,
        Err(page) => page,
    }
}

async fn manage_crypto(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Fields, FormRejection>,
) -> Response {
    match form_session(&state, &headers, form).await {
        Ok((session, fields)) => manage::crypto(&state, &session, &headers, &fields).await,
        Err(page) => page,
    }
}

async fn manage_cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Fields, FormRejection>,
) -> Response {
    match form_session(&state, &headers, form).await {
        Ok((session, _)) => manage::cancel(&state, &session).await,
        Err(page) => page,
    }
}

/// The embedded assets.
async fn asset(Path(name): Path<String>) -> Response {
    let (body, content_type): (&'static [u8], &'static str) = match name.as_str() {
        "dashboard.css" => (include_bytes!("assets/dashboard.css"), "text/css; charset=utf-8"),
        "dashboard.js" => (include_bytes!("assets/dashboard.js"), "text/javascript; charset=utf-8"),
        "icon.svg" => (include_bytes!("assets/icon.svg"), "image/svg+xml"),
        _ => return PageError(ApiError::not_found(format!("no asset {name:?}"))).into_response(),
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
        ],
        body,
    )
        .into_response()
}
