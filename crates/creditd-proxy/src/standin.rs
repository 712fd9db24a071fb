//! A stand-in provider for tests and the benchmark: answers OpenAI chat
//! completions and Responses, and Anthropic messages, in the providers' wire
//! formats, streaming and not, on a local socket. Never used by `serve`.
//!
//! A request picks a scenario by containing `scenario:<name>` anywhere in
//! its body (e.g. in the user message):
//!
//! | scenario | what the stand-in does |
//! |---|---|
//! | (none) | a whole answer with usage |
//! | `omit_usage` | the answer without any usage |
//! | `slow` | streams one event every 100 ms |
//! | `stall` | streams three text events, then nothing, forever |
//! | `fail_mid` | streams three text events, then breaks the connection |
//! | `error_event` | streams three text events, then the provider's error event |
//! | `upstream_429` | `429` with the provider's error body and `retry-after: 7` |
//! | `upstream_500` | `500` with the provider's error body |
//!
//! Every request is recorded with the bytes sent back (`tag:<name>` in the
//! body names it), so a test can compare them with what its client got.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The answer's text, one delta per word.
pub const REPLY_WORDS: [&str; 9] = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."];
/// Text events sent before a stall, a failure or an error event.
pub const EVENTS_BEFORE_TROUBLE: usize = 3;

/// OpenAI usage of every answer: 42 prompt tokens (10 of them cached), 9 out.
pub const OPENAI_PROMPT_TOKENS: u64 = 42;
pub const OPENAI_CACHED_TOKENS: u64 = 10;
/// Anthropic usage: 32 uncached in, 6 written to cache, 4 read from it, 9 out.
pub const ANTHROPIC_INPUT_TOKENS: u64 = 32;
pub const ANTHROPIC_CACHE_WRITE_TOKENS: u64 = 6;
pub const ANTHROPIC_CACHE_READ_TOKENS: u64 = 4;
pub const OUTPUT_TOKENS: u64 = 9;

/// One request the stand-in answered.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub tag: Option<String>,
    /// The bytes sent back (so far, for a stream).
    pub sent: Arc<Mutex<Vec<u8>>>,
}

impl Seen {
    pub fn sent(&self) -> Vec<u8> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone, Default)]
pub struct StandIn {
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A running stand-in.
pub struct Running {
    pub addr: SocketAddr,
    pub standin: StandIn,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::ops::Deref for Running {
    type Target = StandIn;

    fn deref(&self) -> &StandIn {
        &self.standin
    }
}

impl Running {
    /// `http://127.0.0.1:port/v1`: the OpenAI base URL.
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:port`: the Anthropic base URL.
    pub fn anthropic_base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl StandIn {
    /// Starts a stand-in on `127.0.0.1`, a free port.
    pub async fn start() -> std::io::Result<Running> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener)
    }

    pub fn start_on(listener: tokio::net::TcpListener) -> std::io::Result<Running> {
        let addr = listener.local_addr()?;
        let standin = StandIn::default();
        let router = standin.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Running { addr, standin, task })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/responses", post(responses))
            .route("/v1/messages", post(messages))
            .with_state(self.clone())
    }

    /// Every request answered, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The request tagged `tag:<tag>`.
    pub fn tagged(&self, tag: &str) -> Option<Seen> {
        self.seen().into_iter().rev().find(|s| s.tag.as_deref() == Some(tag))
    }

    /// Forgets what was seen (a benchmark's requests would pile up).
    pub fn forget(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn record(&self, path: &str, headers: HeaderMap, body: Value, keep: bool) -> Seen {
        let text = body.to_string();
        let seen = Seen { path: path.into(), headers, tag: marker(&text, "tag:"), body, sent: Default::default() };
        if keep {
            self.seen.lock().unwrap_or_else(|e| e.into_inner()).push(seen.clone());
        }
        seen
    }
}

/// The word after `prefix` in `text` (letters, digits, `_`, `-`).
fn marker(text: &str, prefix: &str) -> Option<String> {
    let at = text.find(prefix)? + prefix.len();
    let word: String = text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    (!word.is_empty()).then_some(word)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Normal,
    OmitUsage,
    Slow,
    Stall,
    FailMid,
    ErrorEvent,
    Upstream429,
    Upstream500,
}

fn scenario(body: &Value) -> Scenario {
    match marker(&body.to_string(), "scenario:").as_deref() {
        Some("omit_usage") => Scenario::OmitUsage,
        Some("slow") => Scenario::Slow,
        Some("stall") => Scenario::Stall,
        Some("fail_mid") => Scenario::FailMid,
        Some("error_event") => Scenario::ErrorEvent,
        Some("upstream_429") => Scenario::Upstream429,
        Some("upstream_500") => Scenario::Upstream500,
        _ => Scenario::Normal,
    }
}

fn parse(bytes: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|_| Box::new((StatusCode::BAD_REQUEST, "not json").into_response()))
}

fn json_response(seen: &Seen, status: StatusCode, body: Value, extra: &[(&'static str, &'static str)]) -> Response {
    let bytes = body.to_string().into_bytes();
    seen.sent.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&bytes);
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().expect("static"));
    for (name, value) in extra {
        response.headers_mut().insert(*name, value.parse().expect("static"));
    }
    response
}

/// A stream of `events` (each one chunk), with what `scenario` does to it:
/// trouble comes after the `head` events that open the answer and
/// [`EVENTS_BEFORE_TROUBLE`] more.
fn stream_response(seen: &Seen, events: Vec<String>, head: usize, trouble: String, scenario: Scenario) -> Response {
    let sent = seen.sent.clone();
    let state = (events.into_iter(), 0usize, trouble, sent, scenario, false);
    let stream =
        futures_util::stream::unfold(state, move |(mut events, index, trouble, sent, scenario, done)| async move {
            if done {
                return None;
            }
            let troubled = matches!(scenario, Scenario::Stall | Scenario::FailMid | Scenario::ErrorEvent);
            if troubled && index == head + EVENTS_BEFORE_TROUBLE {
                // Let what was sent reach the client first, as a provider's earlier writes would.
                tokio::time::sleep(Duration::from_millis(50)).await;
                match scenario {
                    Scenario::Stall => {
                        std::future::pending::<()>().await;
                        return None;
                    }
                    Scenario::FailMid => {
                        let error: Result<Bytes, std::io::Error> =
                            Err(std::io::Error::other("stand-in breaks the stream"));
                        return Some((error, (events, index + 1, trouble, sent, scenario, true)));
                    }
                    _ => {
                        let event = trouble.clone();
                        sent.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(event.as_bytes());
                        return Some((Ok(Bytes::from(event)), (events, index + 1, trouble, sent, scenario, true)));
                    }
                }
            }
            if scenario == Scenario::Slow && index > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let event = events.next()?;
            sent.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(event.as_bytes());
            Some((Ok(Bytes::from(event)), (events, index + 1, trouble, sent, scenario, false)))
        });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, "text/event-stream; charset=utf-8".parse().expect("static"));
    headers.insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
    response
}

fn keep(headers: &HeaderMap) -> bool {
    // The benchmark asks the stand-in not to keep its requests.
    headers.get("x-standin-forget").is_none()
}

fn openai_error(kind: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_standin"})
}

fn upstream_failure(seen: &Seen, scenario: Scenario, anthropic: bool) -> Option<Response> {
    let (status, kind, message, extra): (_, _, _, &[(&'static str, &'static str)]) = match scenario {
        Scenario::Upstream429 => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "Rate limit reached for requests",
            &[("retry-after", "7"), ("x-should-retry", "false")],
        ),
        Scenario::Upstream500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "The server had an error while processing your request.",
            &[("x-should-retry", "false")],
        ),
        _ => return None,
    };
    let body = if anthropic { anthropic_error(kind, message) } else { openai_error(kind, message) };
    Some(json_response(seen, status, body, extra))
}

fn sse_data(data: &Value) -> String {
    format!("data: {data}\n\n")
}

fn sse_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

const CREATED: u64 = 1_767_225_600;

fn chat_usage() -> Value {
    json!({
        "prompt_tokens": OPENAI_PROMPT_TOKENS,
        "completion_tokens": OUTPUT_TOKENS,
        "total_tokens": OPENAI_PROMPT_TOKENS + OUTPUT_TOKENS,
        "prompt_tokens_details": {"cached_tokens": OPENAI_CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

async fn chat(State(standin): State<StandIn>, headers: HeaderMap, bytes: Bytes) -> Response {
    let body = match parse(&bytes) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let seen = standin.record("/v1/chat/completions", headers.clone(), body.clone(), keep(&headers));
    let scenario = scenario(&body);
    if let Some(response) = upstream_failure(&seen, scenario, false) {
        return response;
    }
    let model = body["model"].as_str().unwrap_or("gpt-4o").to_string();
    let id = "chatcmpl-standin0001";
    let text: String = REPLY_WORDS.concat();
    if body["stream"] != json!(true) {
        let mut answer = json!({
            "id": id, "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null,
                "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
            "usage": chat_usage(),
            "service_tier": "default", "system_fingerprint": "fp_standin"
        });
        if scenario == Scenario::OmitUsage {
            answer.as_object_mut().expect("object").remove("usage");
        }
        return json_response(&seen, StatusCode::OK, answer, &[("x-request-id", "req_standin_chat")]);
    }
    let include_usage = body["stream_options"]["include_usage"] == json!(true) && scenario != Scenario::OmitUsage;
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_standin",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse_data(&c)
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null)];
    for word in REPLY_WORDS {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(sse_data(&json!({"id": id, "object": "chat.completion.chunk", "created": CREATED,
            "model": model, "service_tier": "default", "system_fingerprint": "fp_standin",
            "choices": [], "usage": chat_usage()})));
    }
    events.push("data: [DONE]\n\n".to_string());
    let trouble = sse_data(&json!({"error": {"message": "The server had an error while processing your request.",
        "type": "server_error", "param": null, "code": null}}));
    stream_response(&seen, events, 1, trouble, scenario)
}

fn responses_usage() -> Value {
    json!({
        "input_tokens": OPENAI_PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": OPENAI_CACHED_TOKENS},
        "output_tokens": OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": OPENAI_PROMPT_TOKENS + OUTPUT_TOKENS
    })
}

fn response_object(model: &str, status: &str, output: Value, usage: Value) -> Value {
    json!({
        "id": "resp_standin0001", "object": "response", "created_at": CREATED, "status": status,
        "background": false, "error": null, "incomplete_details": null, "instructions": null,
        "max_output_tokens": null, "max_tool_calls": null, "model": model, "output": output,
        "parallel_tool_calls": true, "previous_response_id": null, "reasoning": {"effort": null, "summary": null},
        "service_tier": "default", "store": true, "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto", "tools": [],
        "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": null, "metadata": {}
    })
}

async fn responses(State(standin): State<StandIn>, headers: HeaderMap, bytes: Bytes) -> Response {
    let body = match parse(&bytes) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let seen = standin.record("/v1/responses", headers.clone(), body.clone(), keep(&headers));
    let scenario = scenario(&body);
    if let Some(response) = upstream_failure(&seen, scenario, false) {
        return response;
    }
    let model = body["model"].as_str().unwrap_or("gpt-4o").to_string();
    let text: String = REPLY_WORDS.concat();
    let usage = if scenario == Scenario::OmitUsage { Value::Null } else { responses_usage() };
    let message = |text: &str, status: &str| {
        json!({"id": "msg_standin0001", "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]})
    };
    if body["stream"] != json!(true) {
        let answer = response_object(&model, "completed", json!([message(&text, "completed")]), usage);
        return json_response(&seen, StatusCode::OK, answer, &[("x-request-id", "req_standin_responses")]);
    }
    let mut seq = 0u64;
    let mut event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        sse_event(name, &data)
    };
    let in_progress = response_object(&model, "in_progress", json!([]), Value::Null);
    let mut events = vec![
        event("response.created", json!({"response": in_progress})),
        event("response.in_progress", json!({"response": in_progress})),
        event(
            "response.output_item.added",
            json!({"output_index": 0, "item":
            {"id": "msg_standin0001", "type": "message", "status": "in_progress", "content": [], "role": "assistant"}}),
        ),
        event(
            "response.content_part.added",
            json!({"item_id": "msg_standin0001", "output_index": 0,
            "content_index": 0, "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}}),
        ),
    ];
    let mut rest = Vec::new();
    for word in REPLY_WORDS {
        rest.push(event(
            "response.output_text.delta",
            json!({"item_id": "msg_standin0001", "output_index": 0,
            "content_index": 0, "delta": word, "logprobs": []}),
        ));
    }
    rest.push(event(
        "response.output_text.done",
        json!({"item_id": "msg_standin0001", "output_index": 0,
        "content_index": 0, "text": text, "logprobs": []}),
    ));
    rest.push(event(
        "response.content_part.done",
        json!({"item_id": "msg_standin0001", "output_index": 0,
        "content_index": 0, "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": text}}),
    ));
    rest.push(event("response.output_item.done", json!({"output_index": 0, "item": message(&text, "completed")})));
    let done = response_object(&model, "completed", json!([message(&text, "completed")]), usage);
    rest.push(event("response.completed", json!({"response": done})));
    let failed = {
        let mut r = response_object(&model, "failed", json!([]), Value::Null);
        r["error"] = json!({"code": "server_error", "message": "The model failed to generate a response."});
        event("response.failed", json!({"response": r}))
    };
    events.extend(rest);
    stream_response(&seen, events, 4, failed, scenario)
}

fn anthropic_usage(output: u64) -> Value {
    json!({
        "input_tokens": ANTHROPIC_INPUT_TOKENS,
        "cache_creation_input_tokens": ANTHROPIC_CACHE_WRITE_TOKENS,
        "cache_read_input_tokens": ANTHROPIC_CACHE_READ_TOKENS,
        "cache_creation": {"ephemeral_5m_input_tokens": ANTHROPIC_CACHE_WRITE_TOKENS, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard"
    })
}

async fn messages(State(standin): State<StandIn>, headers: HeaderMap, bytes: Bytes) -> Response {
    let body = match parse(&bytes) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let seen = standin.record("/v1/messages", headers.clone(), body.clone(), keep(&headers));
    let scenario = scenario(&body);
    if let Some(response) = upstream_failure(&seen, scenario, true) {
        return response;
    }
    let model = body["model"].as_str().unwrap_or("claude-sonnet-4-5").to_string();
    let text: String = REPLY_WORDS.concat();
    let omit = scenario == Scenario::OmitUsage;
    if body["stream"] != json!(true) {
        let mut answer = json!({
            "id": "msg_standin0001", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": anthropic_usage(OUTPUT_TOKENS)
        });
        if omit {
            answer.as_object_mut().expect("object").remove("usage");
        }
        return json_response(&seen, StatusCode::OK, answer, &[("request-id", "req_standin_messages")]);
    }
    let mut start = json!({"type": "message_start", "message": {"id": "msg_standin0001", "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": anthropic_usage(1)}});
    if omit {
        start["message"].as_object_mut().expect("object").remove("usage");
    }
    let mut events = vec![
        sse_event("message_start", &start),
        sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for word in REPLY_WORDS {
        events.push(sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": word}}),
        ));
    }
    events.push(sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": OUTPUT_TOKENS}});
    if omit {
        delta.as_object_mut().expect("object").remove("usage");
    }
    events.push(sse_event("message_delta", &delta));
    events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    let trouble = sse_event("error", &anthropic_error("overloaded_error", "Overloaded"));
    stream_response(&seen, events, 2, trouble, scenario)
}
