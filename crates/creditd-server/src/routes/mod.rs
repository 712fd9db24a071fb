//! The routes of `api.md`, one module per area. [`table`] is the single list
//! of what the router serves; the OpenAPI test checks it against `openapi.json`.

mod accounts;
mod endpoints;
mod grants;
mod keys;
mod ledger;
mod metering;
mod models;
mod ops;
mod plans;
mod provider_calls;
mod proxy_keys;
mod subscriptions;
pub(crate) mod usage;
mod wallet;
mod webhooks;

use axum::Router;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use creditd_store::AccountRow;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::validate;

/// One route: method, path (axum syntax) and handler.
pub struct RouteDef {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: MethodRouter<AppState>,
}

fn route(method: &'static str, path: &'static str, handler: MethodRouter<AppState>) -> RouteDef {
    RouteDef { method, path, handler }
}

/// Every route of the API.
pub fn table() -> Vec<RouteDef> {
    vec![
        route("GET", "/healthz", get(ops::healthz)),
        route("GET", "/metrics", get(ops::metrics)),
        route("GET", "/openapi.json", get(ops::openapi)),
        route("GET", "/v1/test/clock", get(ops::get_clock)),
        route("POST", "/v1/test/clock", post(ops::set_clock)),
        route("GET", "/v1/models", get(models::list)),
        route("POST", "/v1/model-imports", post(models::import)),
        route("PUT", "/v1/models/{*model}", put(models::put)),
        route("PATCH", "/v1/models/{*model}", patch(models::patch)),
        route("GET", "/v1/models/{*model}", get(models::get)),
        route("GET", "/v1/plans", get(plans::list)),
        route("PUT", "/v1/plans/{plan}", put(plans::put)),
        route("PATCH", "/v1/plans/{plan}", patch(plans::patch)),
        route("GET", "/v1/plans/{plan}", get(plans::get)),
        route("POST", "/v1/keys", post(keys::create)),
        route("GET", "/v1/keys", get(keys::list)),
        route("DELETE", "/v1/keys/{id}", delete(keys::delete)),
        route("POST", "/v1/accounts", post(accounts::create)),
        route("GET", "/v1/accounts", get(accounts::list)),
        route("GET", "/v1/accounts/{id}", get(accounts::get)),
        route("POST", "/v1/accounts/{id}/suspend", post(accounts::suspend)),
        route("POST", "/v1/accounts/{id}/resume", post(accounts::resume)),
        route("POST", "/v1/accounts/{id}/tokens", post(accounts::token)),
        route("GET", "/v1/accounts/{id}/tokens", get(accounts::tokens)),
        route("DELETE", "/v1/accounts/{id}/tokens/{token}", delete(accounts::revoke_token)),
        route("DELETE", "/v1/accounts/{id}/sessions", delete(accounts::revoke_sessions)),
        route("GET", "/v1/accounts/{id}/balance", get(accounts::balance)),
        route("POST", "/v1/accounts/{id}/grants", post(grants::create)),
        route("GET", "/v1/accounts/{id}/grants", get(grants::list)),
        route("POST", "/v1/accounts/{id}/grants/{grant}/void", post(grants::void)),
        route("POST", "/v1/accounts/{id}/wallet/topups", post(wallet::topup)),
        route("POST", "/v1/accounts/{id}/wallet/adjustments", post(wallet::adjust)),
        route("POST", "/v1/accounts/{id}/purchases", post(wallet::purchase)),
        route("GET", "/v1/accounts/{id}/ledger", get(ledger::list)),
        route("POST", "/v1/accounts/{id}/subscription", post(subscriptions::start)),
        route("GET", "/v1/accounts/{id}/subscription", get(subscriptions::get)),
        route("POST", "/v1/accounts/{id}/subscription/renew", post(subscriptions::renew)),
        route("POST", "/v1/accounts/{id}/subscription/cancel", post(subscriptions::cancel)),
        route("POST", "/v1/accounts/{id}/usage/{request_id}/refund", post(subscriptions::refund)),
        route("GET", "/v1/accounts/{id}/usage", get(usage::list)),
        route("GET", "/v1/accounts/{id}/usage/summary", get(usage::summary)),
        route("GET", "/v1/accounts/{id}/usage/export", get(usage::export)),
        route("GET", "/v1/usage/export", get(usage::export_all)),
        route("POST", "/v1/estimate", post(metering::estimate)),
        route("POST", "/v1/authorize", post(metering::authorize)),
        route("POST", "/v1/settle", post(metering::settle)),
        route("POST", "/v1/release", post(metering::release)),
        route("POST", "/v1/usage", post(metering::usage)),
        route("GET", "/v1/webhook-events", get(webhooks::list)),
        route("POST", "/webhooks/creem", post(webhooks::creem)),
        route("POST", "/v1/webhook-endpoints", post(endpoints::create)),
        route("GET", "/v1/webhook-endpoints", get(endpoints::list)),
        route("GET", "/v1/webhook-endpoints/{id}", get(endpoints::get)),
        route("PATCH", "/v1/webhook-endpoints/{id}", patch(endpoints::update)),
        route("GET", "/v1/webhook-deliveries", get(endpoints::deliveries)),
        route("GET", "/v1/webhook-deliveries/{id}", get(endpoints::delivery)),
        route("POST", "/v1/webhook-deliveries/{id}/retry", post(endpoints::retry)),
        route("POST", "/webhooks/nowpayments", post(webhooks::nowpayments)),
        route("GET", "/v1/provider-calls", get(provider_calls::list)),
        route("GET", "/v1/provider-calls/{id}", get(provider_calls::get)),
        route("POST", "/v1/provider-calls/{id}/retry", post(provider_calls::retry)),
        route("POST", "/v1/accounts/{id}/proxy-keys", post(proxy_keys::create)),
        route("GET", "/v1/accounts/{id}/proxy-keys", get(proxy_keys::list)),
        route("DELETE", "/v1/accounts/{id}/proxy-keys/{key}", delete(proxy_keys::revoke)),
    ]
}

/// The templates of every route the API serves (its table and the
/// dashboard's): the `route` labels of its request metrics.
pub fn patterns() -> impl Iterator<Item = &'static str> {
    table().into_iter().map(|r| r.path).chain(crate::dashboard::PATHS.iter().copied())
}

/// The whole API over `state`, with `mounted` routes (the metering proxy's)
/// beside it, under the same layers.
pub fn router(state: AppState, mounted: Option<crate::Mounted>) -> Router {
    let mut api = Router::new();
    for r in table() {
        api = api.route(r.path, r.handler);
    }
    let mut labels: Vec<&'static str> = patterns().collect();
    let mut router: Router = api.merge(crate::dashboard::router(state.clone())).with_state(state.clone());
    if let Some(mounted) = mounted {
        labels.extend(mounted.patterns.iter().copied());
        router = router.merge(mounted.router);
    }
    // A layer wraps the routes present when it is added: every route is
    // merged above. The last added is the outermost: tracing sees every
    // request, metrics count what the panic net answered.
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(crate::extract::BodyReadTimeout(
            state.config.body_read_timeout.unwrap_or(crate::extract::DEFAULT_BODY_READ_TIMEOUT),
        )))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(crate::metrics::RouteLabels::new(labels), crate::metrics::track))
        .layer(TraceLayer::new_for_http())
}

/// Logs a panic caught by a router's net: its message goes to the log,
/// never to the client.
pub fn log_panic(panic: &(dyn std::any::Any + Send)) {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "a request handler panicked");
}

/// The last net: a handler that panics answers `500 internal` with the
/// error body instead of dropping the connection. No input or clock should
/// get here (a bug); the panic is logged, its message never sent.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    log_panic(&*panic);
    axum::response::IntoResponse::into_response(ApiError::internal("the server failed to answer this request"))
}

/// Unknown routes: `404 not_found`.
async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// A known path with a method it does not take: `405 method_not_allowed`.
/// axum adds the `Allow` header (the path's methods) to this answer.
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{} does not take {method}; the Allow header lists what it takes", uri.path()))
}

/// The account of a path, validated and loaded (`404` if there is none).
async fn load_account(state: &AppState, id: &str) -> ApiResult<AccountRow> {
    validate::account_id("account id", id)?;
    state.store.account(id).await?.ok_or_else(|| ApiError::not_found(format!("account {id:?} not found")))
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    /// Issue 18.5: a panicking handler dropped the connection with no answer.
    #[tokio::test]
    async fn panics_lose_the_answer() {
        async fn boom() -> &'static str {
            panic!("secret detail of a bug")
        }
        let router: Router = Router::new().route("/boom", get(boom)).layer(CatchPanicLayer::custom(panicked));
        let response = router.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value =
            serde_json::from_slice(&to_bytes(response.into_body(), 1 << 16).await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "internal");
        assert!(body["error"]["details"].is_object());
        assert!(!body.to_string().contains("secret detail"), "{body}");
    }
}
