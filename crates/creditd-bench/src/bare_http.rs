//! `bare-http`: the HTTP ceiling that `scripts/bench-http` measures creditd
//! against (issue #16). The same listener as `creditd serve`
//! (`creditd::net::serve` with the default `[server]` limits: connection
//! cap, header and idle timeouts, `TCP_NODELAY`), on the same kind of tokio
//! runtime, answering `POST /v1/usage`: it requires a bearer key, reads the
//! body (at most 64 KiB), parses it into the API's own `RecordUsageIn`
//! (unknown fields refused) and answers `201` with a small JSON. No store,
//! no engine, no metering: what is left is the cost of HTTP and JSON.

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use creditd::net;
use creditd_server::dto::RecordUsageIn;
use tokio::net::TcpListener;

/// The largest body `creditd serve` reads (`validate::MAX_BODY_BYTES`).
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(clap::Args)]
pub struct BareHttpArgs {
    /// Where to listen, as `creditd serve --listen`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn usage(headers: HeaderMap, body: Bytes) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.strip_prefix("Bearer ").is_some_and(|key| !key.is_empty()));
    if !authorized {
        return json(StatusCode::UNAUTHORIZED, r#"{"error":{"code":"unauthorized"}}"#.into());
    }
    if body.len() > MAX_BODY_BYTES {
        return json(StatusCode::PAYLOAD_TOO_LARGE, r#"{"error":{"code":"payload_too_large"}}"#.into());
    }
    match serde_json::from_slice::<RecordUsageIn>(&body) {
        Ok(u) => {
            let tokens = u.usage.as_ref().map_or(0, |t| t.input_tokens.unwrap_or(0) + t.output_tokens.unwrap_or(0));
            let answer = serde_json::json!({
                "account_id": u.account_id,
                "request_id": u.request_id,
                "model": u.model,
                "tokens": tokens,
                "credits": "0",
            });
            json(StatusCode::CREATED, answer.to_string())
        }
        Err(e) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": {"code": "invalid_request", "message": e.to_string()}}).to_string(),
        ),
    }
}

pub async fn run(args: BareHttpArgs) -> Result<()> {
    let nofile = net::raise_nofile_limit();
    let defaults = net::Limits::default();
    let limits = net::Limits { max_connections: net::connection_cap(defaults.max_connections, nofile), ..defaults };
    let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let router = Router::new()
        .route("/v1/usage", post(usage))
        .route("/healthz", get(|| async { json(StatusCode::OK, r#"{"status":"ok"}"#.into()) }));
    println!("listening on http://{}", listener.local_addr()?);
    let shutdown = async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match terminate.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    net::serve(listener, router, limits, shutdown).await.context("serve")?;
    Ok(())
}
