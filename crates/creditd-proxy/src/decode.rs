//! Usage decoders: what a provider's answer says was used, read from a whole
//! JSON body or event by event from a stream. Pure functions over the wire
//! formats; the forwarder feeds them and never changes the bytes it passes
//! on (but for the usage chunk it asked OpenAI for, see [`StreamDecoder`]).
//!
//! Token classes are converted to the engine's disjoint ones here: OpenAI
//! counts cached tokens inside its prompt count (`input = prompt − cached`);
//! Anthropic's `input_tokens` already excludes cache creation and cache reads,
//! which are their own classes.

use creditd_core::pricing::Usage;
use serde_json::Value;

use crate::sse::SseEvent;

/// The three endpoints the proxy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// Anthropic `POST /v1/messages`.
    Messages,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    pub fn provider(self) -> Provider {
        match self {
            Endpoint::ChatCompletions | Endpoint::Responses => Provider::OpenAi,
            Endpoint::Messages => Provider::Anthropic,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    OpenAi,
    Anthropic,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

/// Usage as the engine counts it: disjoint classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderUsage {
    /// Uncached input.
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Output, reasoning included.
    pub output_tokens: u64,
    /// Informational: part of `output_tokens`.
    pub reasoning_tokens: u64,
    /// Server-side tool calls the provider bills per call (web search).
    pub tool_calls: u64,
}

impl ProviderUsage {
    pub fn to_core(self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            output_tokens: self.output_tokens,
            reasoning_tokens: self.reasoning_tokens.min(self.output_tokens),
            tool_calls: self.tool_calls,
            ..Usage::default()
        }
    }
}

/// How an answer ended, as its provider said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terminal {
    /// Finished (`[DONE]`, `message_stop`, `response.completed`, a whole body).
    Completed,
    /// Cut short by the provider but delivered (`response.incomplete`).
    Incomplete,
    /// The provider says it failed (`response.failed`).
    Failed,
    /// An error event in the stream.
    Error,
}

fn count(value: Option<&Value>) -> Option<u64> {
    value.and_then(Value::as_u64)
}

fn path<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |v, k| v.get(*k))
}

/// OpenAI chat completions `usage` (`prompt_tokens` counts cached ones too).
pub fn openai_chat_usage(usage: &Value) -> Option<ProviderUsage> {
    let prompt = count(usage.get("prompt_tokens"))?;
    let cached = count(path(usage, &["prompt_tokens_details", "cached_tokens"])).unwrap_or(0).min(prompt);
    Some(ProviderUsage {
        input_tokens: prompt - cached,
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        output_tokens: count(usage.get("completion_tokens")).unwrap_or(0),
        reasoning_tokens: count(path(usage, &["completion_tokens_details", "reasoning_tokens"])).unwrap_or(0),
        tool_calls: 0,
    })
}

/// OpenAI Responses `usage` (`input_tokens` counts cached ones too).
pub fn openai_responses_usage(usage: &Value) -> Option<ProviderUsage> {
    let input = count(usage.get("input_tokens"))?;
    let cached = count(path(usage, &["input_tokens_details", "cached_tokens"])).unwrap_or(0).min(input);
    Some(ProviderUsage {
        input_tokens: input - cached,
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        output_tokens: count(usage.get("output_tokens")).unwrap_or(0),
        reasoning_tokens: count(path(usage, &["output_tokens_details", "reasoning_tokens"])).unwrap_or(0),
        tool_calls: 0,
    })
}

/// Anthropic `usage`, merged into `into`: every field present replaces the
/// one before (`message_delta` counts are cumulative: replace, never add).
/// Returns whether it held any count.
pub fn anthropic_merge_usage(into: &mut ProviderUsage, usage: &Value) -> bool {
    let mut any = false;
    let mut set = |field: &mut u64, value: Option<u64>| {
        if let Some(v) = value {
            *field = v;
            any = true;
        }
    };
    set(&mut into.input_tokens, count(usage.get("input_tokens")));
    set(&mut into.cache_write_tokens, count(usage.get("cache_creation_input_tokens")));
    set(&mut into.cache_read_tokens, count(usage.get("cache_read_input_tokens")));
    set(&mut into.output_tokens, count(usage.get("output_tokens")));
    set(&mut into.tool_calls, count(path(usage, &["server_tool_use", "web_search_requests"])));
    any
}

/// What a whole (non-streaming) answer says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyUsage {
    /// `None`: the answer carried no usage.
    pub usage: Option<ProviderUsage>,
    /// The output text (content, tool arguments, reasoning shown), to count
    /// when the usage is missing.
    pub text: String,
    /// The Responses API's `status` of `failed`.
    pub failed: bool,
}

/// Reads a successful JSON answer of `endpoint`.
pub fn decode_body(endpoint: Endpoint, body: &Value) -> BodyUsage {
    let mut out = BodyUsage::default();
    match endpoint {
        Endpoint::ChatCompletions => {
            out.usage = body.get("usage").and_then(openai_chat_usage);
            for choice in body.get("choices").and_then(Value::as_array).into_iter().flatten() {
                if let Some(message) = choice.get("message") {
                    chat_message_text(message, &mut out.text);
                }
            }
        }
        Endpoint::Responses => {
            out.usage = body.get("usage").and_then(openai_responses_usage);
            out.failed = body.get("status").and_then(Value::as_str) == Some("failed");
            for item in body.get("output").and_then(Value::as_array).into_iter().flatten() {
                responses_item_text(item, &mut out.text);
            }
        }
        Endpoint::Messages => {
            let mut usage = ProviderUsage::default();
            if body.get("usage").is_some_and(|u| anthropic_merge_usage(&mut usage, u)) {
                out.usage = Some(usage);
            }
            for block in body.get("content").and_then(Value::as_array).into_iter().flatten() {
                anthropic_block_text(block, &mut out.text);
            }
        }
    }
    out
}

fn push_str(out: &mut String, value: Option<&Value>) {
    if let Some(text) = value.and_then(Value::as_str) {
        out.push_str(text);
    }
}

fn chat_message_text(message: &Value, out: &mut String) {
    match message.get("content") {
        Some(Value::String(text)) => out.push_str(text),
        Some(Value::Array(parts)) => parts.iter().for_each(|p| push_str(out, p.get("text"))),
        _ => {}
    }
    push_str(out, message.get("refusal"));
    push_str(out, message.get("reasoning_content"));
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        push_str(out, path(call, &["function", "name"]));
        push_str(out, path(call, &["function", "arguments"]));
    }
}

fn responses_item_text(item: &Value, out: &mut String) {
    match item.get("type").and_then(Value::as_str) {
        Some("message") => {
            for part in item.get("content").and_then(Value::as_array).into_iter().flatten() {
                push_str(out, part.get("text"));
                push_str(out, part.get("refusal"));
            }
        }
        Some("function_call") => {
            push_str(out, item.get("name"));
            push_str(out, item.get("arguments"));
        }
        Some("reasoning") => {
            for part in item.get("summary").and_then(Value::as_array).into_iter().flatten() {
                push_str(out, part.get("text"));
            }
        }
        _ => {}
    }
}

fn anthropic_block_text(block: &Value, out: &mut String) {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => push_str(out, block.get("text")),
        Some("thinking") => push_str(out, block.get("thinking")),
        Some("tool_use") | Some("server_tool_use") => {
            push_str(out, block.get("name"));
            if let Some(input) = block.get("input") {
                out.push_str(&input.to_string());
            }
        }
        _ => {}
    }
}

/// Output text kept for counting at most; beyond it only its length counts.
pub const TEXT_BYTES_MAX: usize = 8 << 20;

/// Reads a stream event by event: the usage (replaced as newer counts
/// arrive), the output text delivered, and how the stream ended.
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    endpoint: Endpoint,
    /// OpenAI chat: the client did not ask for `stream_options.include_usage`;
    /// the proxy asked for it, so the usage chunk is left out of what the
    /// client receives.
    strip_usage_chunk: bool,
    usage: Option<ProviderUsage>,
    /// The usage came from the provider's last word on it (the usage chunk,
    /// `message_delta`, a terminal event), not only a start count.
    usage_final: bool,
    text: String,
    /// Bytes of output text beyond [`TEXT_BYTES_MAX`].
    text_overflow: u64,
    terminal: Option<Terminal>,
    error: Option<String>,
}

impl StreamDecoder {
    pub fn new(endpoint: Endpoint, strip_usage_chunk: bool) -> Self {
        StreamDecoder {
            endpoint,
            strip_usage_chunk,
            usage: None,
            usage_final: false,
            text: String::new(),
            text_overflow: 0,
            terminal: None,
            error: None,
        }
    }

    /// The usage read so far (`None`: none yet).
    pub fn usage(&self) -> Option<ProviderUsage> {
        self.usage
    }

    /// Whether the usage is the provider's final count.
    pub fn usage_final(&self) -> bool {
        self.usage_final
    }

    /// The output text delivered so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Output bytes beyond the kept text.
    pub fn text_overflow(&self) -> u64 {
        self.text_overflow
    }

    pub fn terminal(&self) -> Option<Terminal> {
        self.terminal
    }

    /// The message of an error event, if one came.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn push_text(&mut self, text: &str) {
        if self.text.len() + text.len() <= TEXT_BYTES_MAX {
            self.text.push_str(text);
        } else {
            self.text_overflow += text.len() as u64;
        }
    }

    /// Reads one event; `false`: leave it out of what the client receives.
    pub fn event(&mut self, event: &SseEvent) -> bool {
        match self.endpoint {
            Endpoint::ChatCompletions => self.chat_event(event),
            Endpoint::Responses => {
                self.responses_event(event);
                true
            }
            Endpoint::Messages => {
                self.messages_event(event);
                true
            }
        }
    }

    fn chat_event(&mut self, event: &SseEvent) -> bool {
        let data = event.data.trim();
        if data == "[DONE]" {
            if self.terminal.is_none() {
                self.terminal = Some(Terminal::Completed);
            }
            return true;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else { return true };
        if let Some(error) = chunk.get("error") {
            self.error = Some(error_message(error));
            self.terminal = Some(Terminal::Error);
            return true;
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        let mut texts = Vec::new();
        for choice in choices.into_iter().flatten() {
            if let Some(delta) = choice.get("delta") {
                let mut text = String::new();
                chat_message_text(delta, &mut text);
                texts.push(text);
            }
        }
        for text in texts {
            self.push_text(&text);
        }
        if let Some(usage) = chunk.get("usage").and_then(openai_chat_usage) {
            self.usage = Some(usage);
            self.usage_final = true;
            // The usage chunk has no choices; a chunk with choices is always passed on.
            if self.strip_usage_chunk && choices.is_some_and(|c| c.is_empty()) {
                return false;
            }
        }
        true
    }

    fn responses_event(&mut self, event: &SseEvent) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else { return };
        let kind = data.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or("");
        match kind {
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_text.delta" => {
                if let Some(delta) = data.get("delta").and_then(Value::as_str) {
                    self.push_text(delta);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(usage) = path(&data, &["response", "usage"]).and_then(openai_responses_usage) {
                    self.usage = Some(usage);
                    self.usage_final = true;
                }
                self.terminal = Some(match kind {
                    "response.completed" => Terminal::Completed,
                    "response.incomplete" => Terminal::Incomplete,
                    _ => Terminal::Failed,
                });
                if kind == "response.failed" {
                    self.error = path(&data, &["response", "error"]).map(error_message);
                }
            }
            "error" => {
                self.error = Some(error_message(data.get("error").unwrap_or(&data)));
                self.terminal = Some(Terminal::Error);
            }
            _ => {}
        }
    }

    fn messages_event(&mut self, event: &SseEvent) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else { return };
        let kind = data.get("type").and_then(Value::as_str).or(event.event.as_deref()).unwrap_or("");
        match kind {
            "message_start" => {
                if let Some(usage) = path(&data, &["message", "usage"]) {
                    let mut merged = self.usage.unwrap_or_default();
                    if anthropic_merge_usage(&mut merged, usage) {
                        self.usage = Some(merged);
                    }
                }
            }
            "content_block_start" => {
                if let Some(block) = data.get("content_block") {
                    let mut text = String::new();
                    // Only a start's own text: tool input arrives as deltas.
                    match block.get("type").and_then(Value::as_str) {
                        Some("text") => push_str(&mut text, block.get("text")),
                        Some("thinking") => push_str(&mut text, block.get("thinking")),
                        Some("tool_use") | Some("server_tool_use") => push_str(&mut text, block.get("name")),
                        _ => {}
                    }
                    self.push_text(&text);
                }
            }
            "content_block_delta" => {
                if let Some(delta) = data.get("delta") {
                    for field in ["text", "partial_json", "thinking"] {
                        if let Some(text) = delta.get(field).and_then(Value::as_str) {
                            self.push_text(text);
                        }
                    }
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage") {
                    let mut merged = self.usage.unwrap_or_default();
                    if anthropic_merge_usage(&mut merged, usage) {
                        self.usage = Some(merged);
                        self.usage_final = true;
                    }
                }
            }
            "message_stop" => self.terminal = Some(Terminal::Completed),
            "error" => {
                self.error = Some(error_message(data.get("error").unwrap_or(&data)));
                self.terminal = Some(Terminal::Error);
            }
            _ => {}
        }
    }
}

fn error_message(error: &Value) -> String {
    match error.get("message").and_then(Value::as_str) {
        Some(message) => message.to_string(),
        None => error.to_string(),
    }
}
