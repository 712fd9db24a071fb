//! creditd-server: the HTTP API of `api.md` over a [`Store`].
//!
//! Handlers parse and validate requests into core and store types, ask the
//! store, and render the answer; they hold no business rule. DTOs (the only
//! serde types of the project) live in [`dto`].

pub mod auth;
pub mod dashboard;
pub mod delivery;
pub mod dto;
pub mod error;
pub mod export;
pub mod extract;
pub mod import;
pub mod metrics;
pub mod openapi;
pub mod payments;
pub mod provider_calls;
pub mod respond;
pub mod routes;
pub mod state;
pub mod validate;

mod idempotency;

use std::collections::HashMap;
use std::sync::Arc;

use creditd_core::Usd;
use creditd_store::{Clock, EngineConfig, ManualClock, Store};

pub use auth::{create_key, ensure_admin_key};
pub use error::ApiError;

/// What the API needs from the configuration.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// Pricing policy (`credits_per_usd`…) and the default hold TTL.
    pub engine: EngineConfig,
    /// Per payment provider: the smallest top-up accepted through the API.
    pub min_topup_usd: HashMap<String, Usd>,
    /// A configured admin secret (`--admin-key`, `CREDITD_ADMIN_KEY`), accepted as admin.
    pub admin_key: Option<String>,
    /// Payment providers whose webhooks are served (secrets, product mapping).
    pub payments: payments::PaymentsConfig,
    /// How long a request body may take to arrive (`None`: 30 seconds);
    /// slower is `408 request_timeout`.
    pub body_read_timeout: Option<std::time::Duration>,
    /// The account dashboard (`/dashboard`).
    pub dashboard: dashboard::DashboardConfig,
}

/// Routes served beside the API under its layers (`App::router_with`):
/// request tracing, request metrics, the panic net, the body read timeout
/// (`extract::BodyReadTimeout`, a request extension). The API's own answers
/// apply where the mounted routes give none: its `404` for a path no route
/// matches, its `405` for a route without a method fallback of its own, its
/// `500` for a panic no layer of theirs caught. The metering proxy mounts
/// its routes so, with fallbacks and a panic layer answering in the
/// provider's error shape.
pub struct Mounted {
    pub router: axum::Router,
    /// The templates of the mounted routes (axum's syntax): their
    /// `route` label in `/metrics`; a route not listed is counted as `other`.
    pub patterns: &'static [&'static str],
}

/// The API: a store, a clock and the configuration.
pub struct App {
    state: state::AppState,
}

impl App {
    /// `test_clock`: the clock `/v1/test/clock` drives (`--test-clock`); it
    /// should be the same clock as `clock` and the store's.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        test_clock: Option<Arc<ManualClock>>,
        config: ServerConfig,
    ) -> App {
        metrics::install();
        App { state: state::AppState::new(store, clock, test_clock, config) }
    }

    /// The whole API.
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone(), None)
    }

    /// The whole API, and `mounted` beside it under the same layers.
    pub fn router_with(&self, mounted: Mounted) -> axum::Router {
        routes::router(self.state.clone(), Some(mounted))
    }

    /// What the handlers share: for routes mounted beside the API (the
    /// metering proxy, [`App::router_with`]).
    pub fn state(&self) -> state::AppState {
        self.state.clone()
    }

    /// Every `(method, path)` the router serves, paths in axum's syntax.
    pub fn routes() -> Vec<(&'static str, &'static str)> {
        routes::table().into_iter().map(|r| (r.method, r.path)).collect()
    }
}
