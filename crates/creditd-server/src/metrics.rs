//! Prometheus metrics: request counts and latencies by matched route and
//! status, metering outcomes by call and result. The store adds
//! `creditd_writer_batch_size`. No label ever carries an account id: routes
//! are labelled by their pattern (`/v1/accounts/{id}/balance`), unknown routes
//! and methods `other`: no label takes request data.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "creditd_http_requests_total";
pub const HTTP_DURATION: &str = "creditd_http_request_duration_seconds";
pub const METERING: &str = "creditd_metering_total";
pub const WRITER_BATCH_SIZE: &str = "creditd_writer_batch_size";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs the Prometheus recorder, once per process (tests build many
/// routers). If another recorder was installed first, metrics are rendered
/// from a recorder of our own that nothing records into: `/metrics` still answers.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            let b = PrometheusBuilder::new();
            let b = b.set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_string()), &LATENCY_BUCKETS);
            let b =
                b.and_then(|b| b.set_buckets_for_metric(Matcher::Full(WRITER_BATCH_SIZE.to_string()), &BATCH_BUCKETS));
            b.unwrap_or_else(|_| PrometheusBuilder::new())
        };
        match builder().install_recorder() {
            Ok(handle) => handle,
            Err(error) => {
                tracing::warn!(%error, "a metrics recorder was already installed; /metrics will be empty");
                builder().build_recorder().handle()
            }
        }
    })
}

/// The text `/metrics` answers.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// Appends the gauge of provider calls by status (`provider_calls::CALLS`),
/// counted in the store when `/metrics` is read.
pub fn provider_calls(text: &mut String, counts: &[(creditd_store::DeliveryStatus, u64)]) {
    use std::fmt::Write;
    let name = crate::provider_calls::CALLS;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = writeln!(text, "# HELP {name} Calls owed to payment providers' APIs, by status (counted in the store)");
    let _ = writeln!(text, "# TYPE {name} gauge");
    for (status, n) in counts {
        let _ = writeln!(text, "{name}{{status=\"{}\"}} {n}", status.as_str());
    }
}

/// Counts one metering call's result (`ok` or an error code).
pub fn metering(call: &'static str, result: &'static str) {
    metrics::counter!(METERING, "call" => call, "result" => result).increment(1);
}

/// The label of what is not one of a closed set (methods, routes).
pub const OTHER: &str = "other";

/// A method as a label: the standard ones by name, anything else `other`.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => OTHER,
    }
}

/// The closed set of `route` labels: the templates of the routes a router
/// serves (`/v1/accounts/{id}/balance`, `/openai/{*rest}`).
#[derive(Clone)]
pub struct RouteLabels(Arc<HashSet<&'static str>>);

impl RouteLabels {
    pub fn new(patterns: impl IntoIterator<Item = &'static str>) -> Self {
        RouteLabels(Arc::new(patterns.into_iter().collect()))
    }

    /// The label of a matched route's template (`other` if it is not one of the set).
    pub fn label(&self, matched: Option<&MatchedPath>) -> &'static str {
        matched.and_then(|p| self.0.get(p.as_str()).copied()).unwrap_or(OTHER)
    }
}

/// Middleware: counts and times every request by route pattern and status.
/// The time is to the response's head (a stream's body is not waited for).
pub async fn track(State(labels): State<RouteLabels>, request: Request, next: Next) -> Response {
    // Labels come from a closed set, never from what the caller sent: the
    // route's pattern (or `other` when none matched) and a standard method
    // (or `other`), so no request can add a series.
    let route = labels.label(request.extensions().get::<MatchedPath>());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method.to_string()), ("route", route.to_string()), ("status", status)];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}
