//! One proxied request: authenticate, read, hold, forward, pass the answer
//! back, settle.
//!
//! **Invariant:** once a hold is placed, the rest of the request runs on a
//! task of its own ([`Exchange::run`]), which resolves the hold (settle or
//! release) on every path, whatever the client does: a client that
//! disconnects drops only the response body's receiving end, which the task
//! notices and settles `cancelled`.
//!
//! **Invariant:** the bytes a client receives are the provider's bytes, in
//! order, unchanged, but for one thing: an OpenAI chat stream whose client
//! did not ask for `stream_options.include_usage` is asked for it upstream,
//! and the one usage chunk that adds is left out.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use creditd_core::account::{Hold, RequestDetails, UsageRecord};
use creditd_core::engine::Outcome;
use creditd_core::pricing::{EstimateInput, RequestStatus};
use creditd_core::units::Credits;
use creditd_server::ApiError;
use creditd_server::extract::{BodyReadTimeout, DEFAULT_BODY_READ_TIMEOUT};
use creditd_server::validate;
use creditd_store::{AuthorizeRequest, Command, Reply, StoreError};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::Proxy;
use crate::decode::{self, Endpoint, Provider, ProviderUsage, StreamDecoder, Terminal};
use crate::errors::{ProxyError, set_request_id};
use crate::request::{self, ProxyRequest};
use crate::sse::{SseEvent, SseParser};
use crate::tokens::{self, Counter};

/// The credits a non-streaming answer cost.
pub const CREDITS_HEADER: &str = "x-creditd-credits";
/// The account's available credits after it.
pub const AVAILABLE_HEADER: &str = "x-creditd-available";
/// What was held for a streaming answer (the cost is known only at its end).
pub const HELD_HEADER: &str = "x-creditd-held";
/// Sets the usage record's `project`.
pub const PROJECT_HEADER: &str = "x-creditd-project";
/// Sets the usage record's `conversation`.
pub const CONVERSATION_HEADER: &str = "x-creditd-conversation";
/// Upstream error bodies read at most (the rest is cut).
const ERROR_BODY_MAX: usize = 1 << 20;
/// Non-streaming answers read at most.
const ANSWER_BODY_MAX: usize = 64 << 20;
/// Settle attempts when the store fails (a settle is idempotent by request id).
const SETTLE_ATTEMPTS: u32 = 4;
/// Inputs longer than this are counted on a blocking thread.
const TOKENIZE_INLINE_BYTES_MAX: usize = 64 << 10;
/// Request types the proxy meters as.
const REQUEST_TYPE: &str = "chat";

/// Request headers never passed upstream: hop-by-hop, the client's
/// credentials, the proxy's own, and what belongs to the operator's key.
fn drop_request_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "authorization"
            | "x-api-key"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "accept-encoding"
            | "cookie"
            | "openai-organization"
            | "openai-project"
    ) || name.starts_with("x-creditd-")
}

/// Response headers not passed back (hop-by-hop; lengths are the proxy's).
fn drop_response_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "set-cookie"
    )
}

/// `POST /openai/v1/chat/completions`, `/openai/v1/responses`, `/anthropic/v1/messages`.
pub async fn handle(proxy: Proxy, endpoint: Endpoint, request: Request) -> Response {
    let provider = endpoint.provider();
    match prepare(&proxy, endpoint, request).await {
        Ok(exchange) => {
            let (head_tx, head_rx) = oneshot::channel();
            let request_id = exchange.request_id.clone();
            tokio::spawn(exchange.run(head_tx));
            head_rx.await.unwrap_or_else(|_| {
                ProxyError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the proxy failed")
                    .response(provider, Some(&request_id))
            })
        }
        Err((error, request_id)) => error.response(provider, request_id.as_deref()),
    }
}

/// The client's secret: `Authorization: Bearer`, or Anthropic's `x-api-key`.
fn secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let text = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim())
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ProxyError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => {
            let text = v.to_str().map_err(|_| ProxyError::invalid(format!("{name}: not valid text")))?;
            validate::text(name, Some(text.to_string()), validate::MAX_TEXT_CHARS).map_err(ProxyError::from)
        }
    }
}

type Prepared = Result<Exchange, (ProxyError, Option<String>)>;

/// Everything before the upstream call: ends with the hold placed.
async fn prepare(proxy: &Proxy, endpoint: Endpoint, request: Request) -> Prepared {
    let received = Instant::now();
    let started_at = proxy.app.clock.now();
    let provider = endpoint.provider();
    let fail = |e: ProxyError| (e, None);
    let (parts, body) = request.into_parts();
    let secret = secret(&parts.headers).ok_or_else(|| {
        fail(ProxyError::unauthorized("an API key is required (Authorization: Bearer, or x-api-key)"))
    })?;
    let account_id = creditd_server::auth::proxy_account(&proxy.app, secret).await.map_err(|e| fail(e.into()))?;
    // After the key: a caller without one learns nothing of the configuration.
    let upstream = proxy.upstream(provider).ok_or_else(|| {
        fail(ProxyError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "this creditd has no {0} upstream: the operator sets [proxy.upstreams.{0}] api_key",
                provider.name()
            ),
        ))
    })?;
    let project = header_text(&parts.headers, PROJECT_HEADER).map_err(fail)?;
    let conversation = header_text(&parts.headers, CONVERSATION_HEADER).map_err(fail)?;

    // The whole body within the API's body read timeout (a request
    // extension of the router), however it trickles in.
    let timeout = parts.extensions.get::<BodyReadTimeout>().map_or(DEFAULT_BODY_READ_TIMEOUT, |t| t.0);
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, proxy.config.max_body_bytes)).await {
        Err(_) => return Err(fail(ApiError::request_timeout(timeout).into())),
        Ok(read) => read.map_err(|_| {
            fail(ProxyError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {} bytes, or was not received whole", proxy.config.max_body_bytes),
            ))
        })?,
    };
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| fail(ProxyError::invalid(format!("the body is not valid JSON: {e}"))))?;
    let parsed = request::parse(endpoint, &json).map_err(|e| fail(ProxyError::invalid(e.0)))?;

    let price_id = proxy.config.aliases.get(&parsed.model).cloned().unwrap_or_else(|| parsed.model.clone());
    let unknown = || {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            "unknown_model",
            format!("model {:?} is not in the price book", parsed.model),
        )
    };
    validate::model_id("model", &price_id).map_err(|_| fail(unknown()))?;
    let model = proxy.app.store.model(&price_id).await.map_err(|e| fail(e.into()))?.ok_or_else(|| fail(unknown()))?;

    let counter = Counter::for_model(provider, &parsed.model);
    // Counting a long input takes a while: not on a thread that serves other requests.
    let (parsed, input_estimate) = if parsed.input_text.len() > TOKENIZE_INLINE_BYTES_MAX {
        tokio::task::spawn_blocking(move || {
            let estimate = tokens::estimate_input(counter, &parsed);
            (parsed, estimate)
        })
        .await
        .map_err(|_| fail(ProxyError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the count failed")))?
    } else {
        let estimate = tokens::estimate_input(counter, &parsed);
        (parsed, estimate)
    };
    let output_estimate = tokens::estimate_output(&parsed, model.price.max_output_tokens);
    let request_id = format!("px_{}", uuid::Uuid::now_v7().simple());
    let authorize = AuthorizeRequest {
        request_id: request_id.clone(),
        fingerprint: format!("creditd-proxy:{request_id}"),
        model: price_id.clone(),
        request_type: REQUEST_TYPE.to_string(),
        estimate: EstimateInput {
            input_tokens: input_estimate,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            max_output_tokens: Some(output_estimate),
            images: 0,
            tool_calls: 0,
        },
        hold_ttl_seconds: None,
        project: project.clone(),
        conversation: conversation.clone(),
    };
    let command = Command::Authorize { account_id: account_id.clone(), request: authorize };
    let hold = match proxy.app.store.execute(command, None).await {
        Ok(Reply::Authorized(a)) => a.hold,
        Ok(_) => return Err((ProxyError::upstream("unexpected reply from the store"), Some(request_id))),
        Err(e) => return Err((e.into(), Some(request_id))),
    };

    // The upstream request.
    let strip_usage_chunk = endpoint == Endpoint::ChatCompletions && parsed.stream && !parsed.client_wants_usage;
    let upstream_body = match strip_usage_chunk.then(|| request::with_stream_usage(&json)).flatten() {
        Some(changed) => Bytes::from(changed.to_string()),
        None => bytes,
    };
    let path = match endpoint {
        Endpoint::ChatCompletions => "/chat/completions",
        Endpoint::Responses => "/responses",
        Endpoint::Messages => "/v1/messages",
    };
    let url = format!("{}{path}", upstream.base_url.trim_end_matches('/'));
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !drop_request_header(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match provider {
        Provider::OpenAi => {
            let bearer = HeaderValue::from_str(&format!("Bearer {}", upstream.api_key))
                .map_err(|_| (ProxyError::upstream("the upstream key is not a valid header"), None))?;
            headers.insert(header::AUTHORIZATION, bearer);
        }
        Provider::Anthropic => {
            let key = HeaderValue::from_str(&upstream.api_key)
                .map_err(|_| (ProxyError::upstream("the upstream key is not a valid header"), None))?;
            headers.insert(HeaderName::from_static("x-api-key"), key);
            if !headers.contains_key("anthropic-version") {
                headers.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static("2023-06-01"));
            }
        }
    }
    let upstream_request = proxy.client.post(url).headers(headers).body(upstream_body);

    Ok(Exchange {
        proxy: proxy.clone(),
        endpoint,
        account_id,
        request_id,
        hold,
        parsed,
        counter,
        input_estimate,
        strip_usage_chunk,
        project,
        conversation,
        received,
        started_at,
        upstream_request: Some(upstream_request),
    })
}

/// A request with its hold placed: what [`Exchange::run`] needs to finish it.
struct Exchange {
    proxy: Proxy,
    endpoint: Endpoint,
    account_id: String,
    request_id: String,
    hold: Hold,
    parsed: ProxyRequest,
    counter: Counter,
    input_estimate: u64,
    strip_usage_chunk: bool,
    project: Option<String>,
    conversation: Option<String>,
    received: Instant,
    started_at: Timestamp,
    upstream_request: Option<reqwest::RequestBuilder>,
}

/// How a request ended, for its usage record's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The provider finished and said what it used.
    Completed,
    /// The provider finished without saying what it used.
    NoUsage,
    /// The provider failed after its answer had started.
    UpstreamError,
    /// The client went away before the end.
    ClientDisconnected,
    /// The provider refused or failed before answering (`charge_errors`).
    UpstreamRefused,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::NoUsage => "no_usage",
            Ending::UpstreamError => "upstream_error",
            Ending::ClientDisconnected => "client_disconnected",
            Ending::UpstreamRefused => "upstream_refused",
        }
    }
}

/// Why a stream stopped.
enum StreamEnd {
    /// The provider closed the stream.
    Closed,
    /// The transport failed or went silent.
    Failed(String),
    /// The client stopped reading.
    ClientGone,
}

impl Exchange {
    fn provider(&self) -> Provider {
        self.endpoint.provider()
    }

    fn error_response(&self, error: ProxyError) -> Response {
        error.response(self.provider(), Some(&self.request_id))
    }

    async fn run(mut self, head: oneshot::Sender<Response>) {
        let Some(request) = self.upstream_request.take() else { return };
        let sent = tokio::time::timeout(self.proxy.config.first_byte_timeout, request.send()).await;
        let upstream = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::warn!(request_id = %self.request_id, error = %e, "upstream unreachable");
                self.upstream_refused(None).await;
                let _ = head.send(self.error_response(ProxyError::upstream(format!(
                    "the {} upstream could not be reached",
                    self.provider().name()
                ))));
                return;
            }
            Err(_) => {
                self.upstream_refused(None).await;
                let _ = head.send(self.error_response(ProxyError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the upstream did not answer in time",
                )));
                return;
            }
        };
        let status = upstream.status();
        let mut headers = HeaderMap::new();
        for (name, value) in upstream.headers() {
            if !drop_response_header(name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        set_request_id(&mut headers, Some(&self.request_id));
        if !status.is_success() {
            let body = self.read_body(upstream, ERROR_BODY_MAX).await.unwrap_or_default();
            self.upstream_refused(Some(status)).await;
            let _ = head.send(respond(status, headers, Body::from(body)));
            return;
        }
        let streaming = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
        if streaming {
            self.stream(upstream, status, headers, head).await;
        } else {
            self.whole(upstream, status, headers, head).await;
        }
    }

    /// Reads a body, at most `max` bytes, each chunk within the idle timeout.
    async fn read_body(&self, mut upstream: reqwest::Response, max: usize) -> Result<Bytes, String> {
        let mut body = BytesMut::new();
        loop {
            match tokio::time::timeout(self.proxy.config.idle_timeout, upstream.chunk()).await {
                Err(_) => return Err("the upstream went silent".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(None)) => return Ok(body.freeze()),
                Ok(Ok(Some(chunk))) => {
                    if body.len() + chunk.len() > max {
                        return Err(format!("the upstream answer is larger than {max} bytes"));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// A non-streaming answer: read whole, settled, then sent with its cost.
    async fn whole(
        &self,
        upstream: reqwest::Response,
        status: StatusCode,
        mut headers: HeaderMap,
        head: oneshot::Sender<Response>,
    ) {
        let body = match self.read_body(upstream, ANSWER_BODY_MAX).await {
            Ok(body) => body,
            Err(why) => {
                // Nothing reached the client.
                tracing::warn!(request_id = %self.request_id, error = %why, "upstream answer failed");
                self.upstream_refused(None).await;
                let _ = head.send(self.error_response(ProxyError::upstream(why)));
                return;
            }
        };
        let decoded = serde_json::from_slice::<Value>(&body).ok().map(|v| decode::decode_body(self.endpoint, &v));
        let decoded = decoded.unwrap_or_default();
        let (usage, ending, estimated) = match decoded.usage {
            Some(usage) => (usage, Ending::Completed, false),
            None => {
                let output = self.counter.count(&decoded.text);
                (
                    ProviderUsage { input_tokens: self.input_estimate, output_tokens: output, ..Default::default() },
                    Ending::NoUsage,
                    true,
                )
            }
        };
        let request_status = if decoded.failed { RequestStatus::Error } else { RequestStatus::Success };
        if let Some(record) = self.settle(request_status, usage, ending, estimated).await {
            if let Ok(v) = HeaderValue::from_str(&record.credits.to_string()) {
                headers.insert(CREDITS_HEADER, v);
            }
            if let Some(available) = self.available_after(&record)
                && let Ok(v) = HeaderValue::from_str(&available.to_string())
            {
                headers.insert(AVAILABLE_HEADER, v);
            }
        }
        let _ = head.send(respond(status, headers, Body::from(body)));
    }

    /// The account's available credits after this settle, from the hold's
    /// answer: what was available after the hold, plus the hold released,
    /// less the charge (other requests of the account meanwhile not counted).
    fn available_after(&self, record: &UsageRecord) -> Option<Credits> {
        self.hold.available_after.checked_add(self.hold.estimate)?.checked_sub(record.credits)
    }

    /// A streaming answer: passed on as it arrives, read on the side.
    async fn stream(
        &self,
        mut upstream: reqwest::Response,
        status: StatusCode,
        mut headers: HeaderMap,
        head: oneshot::Sender<Response>,
    ) {
        if let Ok(v) = HeaderValue::from_str(&self.hold.estimate.to_string()) {
            headers.insert(HELD_HEADER, v);
        }
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let mut parser = SseParser::new();
        let mut decoder = StreamDecoder::new(self.endpoint, self.strip_usage_chunk);
        let mut events: Vec<SseEvent> = Vec::new();
        let end = if head.send(respond(status, headers, body)).is_err() {
            StreamEnd::ClientGone
        } else {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = tx.closed() => break StreamEnd::ClientGone,
                    next = tokio::time::timeout(self.proxy.config.idle_timeout, upstream.chunk()) => next,
                };
                let chunk = match next {
                    Err(_) => break StreamEnd::Failed("the upstream went silent".into()),
                    Ok(Err(e)) => break StreamEnd::Failed(e.to_string()),
                    Ok(Ok(None)) => break StreamEnd::Closed,
                    Ok(Ok(Some(chunk))) => chunk,
                };
                events.clear();
                parser.feed(&chunk, &mut events);
                let out = if self.strip_usage_chunk {
                    let mut out = BytesMut::with_capacity(chunk.len());
                    for event in &events {
                        if decoder.event(event) {
                            out.extend_from_slice(&event.raw);
                        }
                    }
                    out.freeze()
                } else {
                    for event in &events {
                        decoder.event(event);
                    }
                    chunk
                };
                if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                    break StreamEnd::ClientGone;
                }
            }
        };
        // What is left of the stream (an event without its blank line).
        events.clear();
        parser.finish(&mut events);
        let mut rest = BytesMut::new();
        for event in &events {
            if decoder.event(event) && self.strip_usage_chunk {
                rest.extend_from_slice(&event.raw);
            }
        }
        if !rest.is_empty() {
            let _ = tx.send(Ok(rest.freeze())).await;
        }
        // Drop the provider's connection before settling: a disconnected
        // client's answer stops being generated (and paid for) now.
        drop(upstream);
        if let StreamEnd::Failed(why) = &end {
            tracing::warn!(request_id = %self.request_id, error = %why, "upstream failed mid-stream");
            // Cut the client's stream short: it must not look complete.
            let _ = tx.send(Err(std::io::Error::other(why.clone()))).await;
        }
        // End the client's body before settling: the settle is not the client's wait.
        drop(tx);
        let finished = matches!(decoder.terminal(), Some(Terminal::Completed | Terminal::Incomplete));
        match end {
            StreamEnd::Closed if finished => match decoder.usage().filter(|_| decoder.usage_final()) {
                Some(usage) => {
                    self.settle(RequestStatus::Success, usage, Ending::Completed, false).await;
                }
                None => {
                    let (usage, _) = self.delivered(&decoder);
                    self.settle(RequestStatus::Success, usage, Ending::NoUsage, true).await;
                }
            },
            StreamEnd::ClientGone if finished && decoder.usage_final() => {
                // Everything was read from the provider; only the last bytes may be missing.
                let usage = decoder.usage().unwrap_or_default();
                self.settle(RequestStatus::Success, usage, Ending::Completed, false).await;
            }
            StreamEnd::ClientGone => {
                let (usage, estimated) = self.delivered(&decoder);
                self.settle(RequestStatus::Cancelled, usage, Ending::ClientDisconnected, estimated).await;
            }
            StreamEnd::Closed | StreamEnd::Failed(_) => {
                let (usage, estimated) = self.delivered(&decoder);
                self.settle(RequestStatus::Cancelled, usage, Ending::UpstreamError, estimated).await;
            }
        }
    }

    /// The usage of what was delivered: the provider's counts where it gave
    /// final ones; otherwise its partial counts (Anthropic's input from
    /// `message_start`) or the input estimate, and the larger of its output
    /// count and the tokenizer's count of the output text delivered.
    fn delivered(&self, decoder: &StreamDecoder) -> (ProviderUsage, bool) {
        if decoder.usage_final()
            && let Some(usage) = decoder.usage()
        {
            return (usage, false);
        }
        let counted = self.counter.count(decoder.text()) + decoder.text_overflow().div_ceil(3);
        let mut usage =
            decoder.usage().unwrap_or(ProviderUsage { input_tokens: self.input_estimate, ..Default::default() });
        usage.output_tokens = usage.output_tokens.max(counted);
        (usage, true)
    }

    /// The provider refused or failed before any byte of an answer reached
    /// the client: release the hold, or, under `billing.charge_errors`,
    /// settle `error` with the input estimate.
    async fn upstream_refused(&self, status: Option<StatusCode>) {
        if self.proxy.app.config.engine.policy.charge_errors {
            let usage = ProviderUsage { input_tokens: self.input_estimate, ..Default::default() };
            self.settle_with(RequestStatus::Error, usage, Ending::UpstreamRefused, true, self.parsed.stream, status)
                .await;
            return;
        }
        let command = Command::Release { account_id: self.account_id.clone(), request_id: self.request_id.clone() };
        for attempt in 1..=SETTLE_ATTEMPTS {
            match self.proxy.app.store.execute(command.clone(), None).await {
                Ok(_) => return,
                Err(StoreError::Refused(refusal)) => {
                    tracing::error!(request_id = %self.request_id, error = %refusal, "release refused");
                    return;
                }
                Err(e) => {
                    tracing::warn!(request_id = %self.request_id, attempt, error = %e, "release failed");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
    }

    async fn settle(
        &self,
        status: RequestStatus,
        usage: ProviderUsage,
        ending: Ending,
        estimated: bool,
    ) -> Option<UsageRecord> {
        self.settle_with(status, usage, ending, estimated, self.parsed.stream, None).await
    }

    /// Settles the hold; tries again when the store fails (a settle of the
    /// same request id and body is answered once).
    async fn settle_with(
        &self,
        status: RequestStatus,
        usage: ProviderUsage,
        ending: Ending,
        estimated: bool,
        stream: bool,
        upstream_status: Option<StatusCode>,
    ) -> Option<UsageRecord> {
        let finished_at = self.proxy.app.clock.now();
        let latency_ms = u64::try_from(self.received.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut meta = json!({
            "provider": self.provider().name(),
            "endpoint": self.endpoint.name(),
            "model": self.parsed.model,
            "stream": stream,
            "ending": ending.as_str(),
            "estimated": estimated,
        });
        if let Some(code) = upstream_status {
            meta["upstream_status"] = json!(code.as_u16());
        }
        let outcome = Outcome {
            request_id: self.request_id.clone(),
            fingerprint: format!("creditd-proxy:settle:{}", self.request_id),
            status,
            usage: usage.to_core(),
            details: RequestDetails {
                project: self.project.clone(),
                conversation: self.conversation.clone(),
                started_at: Some(self.started_at),
                finished_at: Some(finished_at),
                latency_ms: Some(latency_ms),
                metadata: Some(json!({ "proxy": meta }).to_string()),
                ..RequestDetails::default()
            },
        };
        let command = Command::Settle { account_id: self.account_id.clone(), outcome };
        for attempt in 1..=SETTLE_ATTEMPTS {
            match self.proxy.app.store.execute(command.clone(), None).await {
                Ok(Reply::Recorded(r)) => return Some(r.record),
                Ok(_) => return None,
                Err(StoreError::Refused(refusal)) => {
                    tracing::error!(request_id = %self.request_id, error = %refusal, "settle refused");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(request_id = %self.request_id, attempt, error = %e, "settle failed");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
        tracing::error!(request_id = %self.request_id, "settle failed; the hold expires on its own");
        None
    }
}

fn respond(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = body.into_response();
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
