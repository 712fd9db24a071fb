//! creditd-proxy: an OpenAI- and Anthropic-compatible metering proxy.
//!
//! A client points its SDK at creditd (`/openai/v1`, `/anthropic`) with a key
//! bound to one account; for each request the proxy holds credits before any
//! byte goes upstream, forwards the request with the operator's provider key,
//! passes the answer back byte for byte while a side decoder reads the usage,
//! and settles (or releases) the hold. See `docs/proxy.md`.
//!
//! - [`request`]: what is read from a client's body (model, stream, limits,
//!   the text to count);
//! - [`tokens`]: the estimates (`tiktoken-rs` for OpenAI models, a scaled
//!   count for Claude);
//! - [`sse`], [`decode`]: the event-stream reader and the usage decoders,
//!   pure and table-tested;
//! - [`forward`]: the handler and the streaming forwarder;
//! - [`errors`]: refusals in each provider's error JSON.

pub mod decode;
pub mod errors;
pub mod forward;
pub mod request;
pub mod sse;
pub mod standin;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{any, post};
use creditd_server::Mounted;
use creditd_server::state::AppState;
use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};

use crate::decode::{Endpoint, Provider};
use crate::errors::ProxyError;

/// A provider the proxy forwards to.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// E.g. `https://api.openai.com/v1` or `https://api.anthropic.com`
    /// (the endpoint's path is appended: `/chat/completions`, `/v1/messages`).
    pub base_url: String,
    pub api_key: String,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("base_url", &self.base_url).field("api_key", &"***").finish()
    }
}

/// The proxy's settings (`[proxy]` of the configuration).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub openai: Option<Upstream>,
    pub anthropic: Option<Upstream>,
    /// Client model name → price-book model id (the upstream still gets the
    /// client's name).
    pub aliases: HashMap<String, String>,
    /// Request bodies at most this large (`413` beyond).
    pub max_body_bytes: usize,
    /// Longest wait for the provider's response head.
    pub first_byte_timeout: Duration,
    /// Longest silence of a provider mid-answer before it counts as failed.
    pub idle_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            openai: None,
            anthropic: None,
            aliases: HashMap::new(),
            max_body_bytes: 16 << 20,
            first_byte_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl ProxyConfig {
    /// Whether any upstream is configured. The routes are served either way:
    /// a provider without an upstream answers `404 not_found`.
    pub fn enabled(&self) -> bool {
        self.openai.is_some() || self.anthropic.is_some()
    }
}

/// The proxy: the API's state (store, clock, billing), its settings and one
/// HTTP client (connections to the providers are pooled).
#[derive(Clone)]
pub struct Proxy(Arc<Inner>);

pub struct Inner {
    pub app: AppState,
    pub config: ProxyConfig,
    pub client: reqwest::Client,
}

impl std::ops::Deref for Proxy {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Proxy {
    pub fn new(app: AppState, config: ProxyConfig) -> Result<Proxy, String> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the proxy's HTTP client: {e}"))?;
        // Load the tokenizers now, not on the first request (not at all
        // while no upstream is configured: every request is refused then).
        if config.enabled() {
            std::thread::spawn(tokens::warm_up);
        }
        Ok(Proxy(Arc::new(Inner { app, config, client })))
    }

    pub(crate) fn upstream(&self, provider: Provider) -> Option<&Upstream> {
        match provider {
            Provider::OpenAi => self.config.openai.as_ref(),
            Provider::Anthropic => self.config.anthropic.as_ref(),
        }
    }

    /// The proxy's routes, to serve beside the API under its layers
    /// (request metrics labelled by [`PATTERNS`], tracing, the body read
    /// timeout): `app.router_with(proxy.mount())`. Each provider's routes
    /// answer a panic (`500 internal`) and a method other than `POST`
    /// (`405 method_not_allowed`, with `Allow`) in that provider's error
    /// JSON, before the API's layers would in creditd's.
    pub fn mount(&self) -> Mounted {
        Mounted { router: self.router(), patterns: PATTERNS }
    }

    fn router(&self) -> Router {
        let openai = Router::new()
            .route("/openai/v1/chat/completions", post(chat_completions).fallback(openai_method_not_allowed))
            .route("/openai/v1/responses", post(responses).fallback(openai_method_not_allowed))
            .route("/openai/{*rest}", any(openai_unknown));
        let anthropic = Router::new()
            .route("/anthropic/v1/messages", post(messages).fallback(anthropic_method_not_allowed))
            .route("/anthropic/{*rest}", any(anthropic_unknown));
        provider_layers(openai, Provider::OpenAi)
            .merge(provider_layers(anthropic, Provider::Anthropic))
            .with_state(self.clone())
    }
}

/// The templates of the proxy's routes: their `route` label in `/metrics`
/// (never the path a client sent: an unknown path under `/openai/` counts
/// as `/openai/{*rest}`).
pub const PATTERNS: &[&str] = &[
    "/openai/v1/chat/completions",
    "/openai/v1/responses",
    "/anthropic/v1/messages",
    "/openai/{*rest}",
    "/anthropic/{*rest}",
];

/// What a provider's routes add under the API's layers: a panic answered
/// `500 internal` in the provider's error JSON (the API's own net would
/// answer in creditd's).
pub fn provider_layers<S: Clone + Send + Sync + 'static>(routes: Router<S>, provider: Provider) -> Router<S> {
    routes.route_layer(CatchPanicLayer::custom(PanicAnswer(provider)))
}

/// The answer to a panic on a provider's route.
#[derive(Clone, Copy)]
struct PanicAnswer(Provider);

impl ResponseForPanic for PanicAnswer {
    type ResponseBody = axum::body::Body;

    fn response_for_panic(&mut self, panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
        creditd_server::routes::log_panic(&*panic);
        ProxyError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "creditd failed to answer this request")
            .response(self.0, None)
    }
}

/// Every `(method, path)` the proxy serves, paths in axum's syntax.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    vec![("POST", "/openai/v1/chat/completions"), ("POST", "/openai/v1/responses"), ("POST", "/anthropic/v1/messages")]
}

async fn chat_completions(State(proxy): State<Proxy>, request: Request) -> Response {
    forward::handle(proxy, Endpoint::ChatCompletions, request).await
}

async fn responses(State(proxy): State<Proxy>, request: Request) -> Response {
    forward::handle(proxy, Endpoint::Responses, request).await
}

async fn messages(State(proxy): State<Proxy>, request: Request) -> Response {
    forward::handle(proxy, Endpoint::Messages, request).await
}

fn unknown(provider: Provider, request: &Request) -> Response {
    ProxyError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("the proxy does not serve {} {}", request.method(), request.uri().path()),
    )
    .response(provider, None)
}

/// A method other than `POST` on a proxy route: `405 method_not_allowed` in
/// the provider's shape (axum adds `Allow: POST`).
fn method_not_allowed(provider: Provider, request: &Request) -> Response {
    ProxyError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {}; the Allow header lists what it takes", request.uri().path(), request.method()),
    )
    .response(provider, None)
}

async fn openai_method_not_allowed(request: Request) -> Response {
    method_not_allowed(Provider::OpenAi, &request)
}

async fn anthropic_method_not_allowed(request: Request) -> Response {
    method_not_allowed(Provider::Anthropic, &request)
}

async fn openai_unknown(request: Request) -> Response {
    unknown(Provider::OpenAi, &request)
}

async fn anthropic_unknown(request: Request) -> Response {
    unknown(Provider::Anthropic, &request)
}
