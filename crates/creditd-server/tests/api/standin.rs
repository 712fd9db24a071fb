//! Stand-ins for the payment providers' APIs on a local socket: Creem
//! (`POST /v1/checkouts`, `POST /v1/subscriptions/{id}/cancel`) and
//! NOWPayments (`POST /v1/invoice`). They answer like the providers, serve
//! the checkout and invoice pages the browser is sent to, and record every
//! request they receive.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// One request a stand-in received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub api_key: Option<String>,
    /// The body as sent.
    pub raw: String,
    pub body: Value,
}

#[derive(Clone)]
struct Shared {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    next: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

pub struct StandIn {
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    failing: Arc<AtomicBool>,
}

impl StandIn {
    pub async fn start() -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Shared {
            base: base.clone(),
            seen: Arc::default(),
            next: Arc::new(AtomicU64::new(1)),
            failing: Arc::default(),
        };
        let router = Router::new()
            .route("/v1/checkouts", post(checkout))
            .route("/v1/invoice", post(invoice))
            .route("/v1/subscriptions/{id}/cancel", post(cancel))
            .route("/checkout/{id}", get(page))
            .route("/invoice/{id}", get(page))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        StandIn { base, seen: shared.seen, failing: shared.failing }
    }

    /// What it received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The cancel calls it received: (Creem subscription id, body).
    pub fn cancels(&self) -> Vec<(String, Seen)> {
        self.seen()
            .into_iter()
            .filter_map(|s| {
                let id = s.path.strip_prefix("/v1/subscriptions/")?.strip_suffix("/cancel")?.to_string();
                Some((id, s))
            })
            .collect()
    }

    /// From now on, answer `500` (an outage) or answer again.
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

fn record(s: &Shared, path: String, headers: &HeaderMap, body: &Bytes) -> Option<Response> {
    let raw = String::from_utf8_lossy(body).to_string();
    let seen = Seen {
        path,
        api_key: headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string),
        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
    };
    s.seen.lock().unwrap().push(seen);
    s.failing.load(Ordering::SeqCst).then(|| (StatusCode::INTERNAL_SERVER_ERROR, "outage").into_response())
}

async fn checkout(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = record(&s, "/v1/checkouts".into(), &headers, &body) {
        return r;
    }
    let n = s.next.fetch_add(1, Ordering::SeqCst);
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    axum::Json(json!({
        "id": format!("ch_{n}"), "mode": "test", "object": "checkout", "status": "pending",
        "product": sent["product_id"], "request_id": sent["request_id"], "metadata": sent["metadata"],
        "checkout_url": format!("{}/checkout/ch_{n}", s.base), "success_url": sent["success_url"],
    }))
    .into_response()
}

async fn invoice(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = record(&s, "/v1/invoice".into(), &headers, &body) {
        return r;
    }
    let n = 5_077_125_050 + s.next.fetch_add(1, Ordering::SeqCst);
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    axum::Json(json!({
        "id": n.to_string(), "token_id": "tok", "order_id": sent["order_id"], "price_amount": sent["price_amount"],
        "price_currency": "usd", "invoice_url": format!("{}/invoice/{n}", s.base), "created_at": "2026-03-01T00:00:00.000Z",
    }))
    .into_response()
}

async fn cancel(State(s): State<Shared>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = record(&s, format!("/v1/subscriptions/{id}/cancel"), &headers, &body) {
        return r;
    }
    axum::Json(json!({"id": id, "object": "subscription", "status": "canceled"})).into_response()
}

async fn page(Path(id): Path<String>) -> Html<String> {
    Html(format!("<!doctype html><title>Stand-in checkout</title><h1 id=\"standin\">Stand-in payment page {id}</h1>"))
}
