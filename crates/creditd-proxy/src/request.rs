//! What the proxy reads from a client's request body before it holds
//! credits: the model, whether it streams, the output limit, and the text
//! whose tokens are estimated. Also the one change it makes to a body:
//! asking OpenAI for the usage of a chat stream.

use serde_json::{Map, Value};

use crate::decode::Endpoint;

/// A request as the proxy needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRequest {
    pub endpoint: Endpoint,
    /// The model as the client named it (sent upstream unchanged).
    pub model: String,
    pub stream: bool,
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`.
    pub max_output_tokens: Option<u64>,
    /// OpenAI chat `n`: choices generated (each produces output).
    pub choices: u64,
    /// OpenAI chat streams: `stream_options.include_usage` was set by the client.
    pub client_wants_usage: bool,
    /// The text of the input (messages, system, instructions, tools).
    pub input_text: String,
    /// Messages (or input items): each costs a few tokens of framing.
    pub messages: u64,
    /// Images and documents in the input.
    pub images: u64,
}

/// A body the proxy cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// Reads a request body of `endpoint`.
pub fn parse(endpoint: Endpoint, body: &Value) -> Result<ProxyRequest, BadRequest> {
    let object = body.as_object().ok_or_else(|| BadRequest("the body must be a JSON object".into()))?;
    let model = match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        _ => return Err(BadRequest("`model` is required and must be a string".into())),
    };
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(BadRequest("`stream` must be a boolean".into())),
    };
    let limit_fields: &[&str] = match endpoint {
        Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        Endpoint::Responses => &["max_output_tokens"],
        Endpoint::Messages => &["max_tokens"],
    };
    let mut max_output_tokens = None;
    for field in limit_fields {
        match object.get(*field) {
            None | Some(Value::Null) => {}
            Some(value) => {
                let n = value.as_u64().ok_or_else(|| BadRequest(format!("`{field}` must be a positive integer")))?;
                max_output_tokens = Some(max_output_tokens.map_or(n, |m: u64| m.max(n)));
            }
        }
    }
    let choices = match (endpoint, object.get("n")) {
        (Endpoint::ChatCompletions, Some(Value::Number(n))) => {
            n.as_u64().filter(|n| (1..=128).contains(n)).ok_or_else(|| BadRequest("`n` must be 1 to 128".into()))?
        }
        _ => 1,
    };
    let client_wants_usage = endpoint == Endpoint::ChatCompletions
        && object.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool) == Some(true);

    let mut text = Text::default();
    match endpoint {
        Endpoint::ChatCompletions => {
            for message in object.get("messages").and_then(Value::as_array).into_iter().flatten() {
                text.messages += 1;
                text.value(message);
            }
            text.value_opt(object.get("tools"));
            text.value_opt(object.get("functions"));
            text.value_opt(object.get("response_format"));
        }
        Endpoint::Responses => {
            text.value_opt(object.get("instructions"));
            match object.get("input") {
                Some(Value::Array(items)) => {
                    for item in items {
                        text.messages += 1;
                        text.value(item);
                    }
                }
                Some(other) => {
                    text.messages += 1;
                    text.value(other);
                }
                None => {}
            }
            text.value_opt(object.get("tools"));
            text.value_opt(object.get("text"));
        }
        Endpoint::Messages => {
            text.value_opt(object.get("system"));
            for message in object.get("messages").and_then(Value::as_array).into_iter().flatten() {
                text.messages += 1;
                text.value(message);
            }
            text.value_opt(object.get("tools"));
        }
    }
    Ok(ProxyRequest {
        endpoint,
        model,
        stream,
        max_output_tokens,
        choices,
        client_wants_usage,
        input_text: text.text,
        messages: text.messages,
        images: text.images,
    })
}

/// Collects the text of a request's input: every string value, except the
/// contents of images and documents (counted apart) and a few keys that are
/// not sent to the model as text (`type`, `role`, ids).
#[derive(Default)]
struct Text {
    text: String,
    messages: u64,
    images: u64,
}

impl Text {
    fn value_opt(&mut self, value: Option<&Value>) {
        if let Some(v) = value {
            self.value(v);
        }
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::String(s) => {
                self.text.push_str(s);
                self.text.push('\n');
            }
            Value::Array(items) => items.iter().for_each(|v| self.value(v)),
            Value::Object(map) => self.object(map),
            Value::Number(n) => {
                self.text.push_str(&n.to_string());
                self.text.push(' ');
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn object(&mut self, map: &Map<String, Value>) {
        let kind = map.get("type").and_then(Value::as_str).unwrap_or("");
        if matches!(kind, "image_url" | "image" | "input_image" | "document" | "input_file" | "file" | "input_audio") {
            self.images += 1;
            return;
        }
        for (key, value) in map {
            if matches!(key.as_str(), "type" | "role" | "id" | "tool_call_id" | "tool_use_id" | "cache_control") {
                continue;
            }
            // Object keys of tool schemas are text the model reads.
            if !matches!(value, Value::String(_)) {
                self.text.push_str(key);
                self.text.push(' ');
            }
            self.value(value);
        }
    }
}

/// OpenAI chat streams: the body with `stream_options.include_usage = true`
/// (other stream options kept). `None` when the client already asked.
pub fn with_stream_usage(body: &Value) -> Option<Value> {
    let mut body = body.clone();
    let object = body.as_object_mut()?;
    let options = object.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
    if !options.is_object() {
        *options = Value::Object(Map::new());
    }
    let options = options.as_object_mut()?;
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return None;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    Some(body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_are_read() {
        // (endpoint, body, model, stream, max, choices, wants usage, messages, images, text contains)
        let table = [
            (
                Endpoint::ChatCompletions,
                json!({"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
                       "max_completion_tokens": 100, "n": 2, "stream": true,
                       "stream_options": {"include_usage": true}}),
                "gpt-4o",
                true,
                Some(100),
                2,
                true,
                2,
                1,
                "What is this?",
            ),
            (
                Endpoint::Responses,
                json!({"model": "gpt-4o-mini", "instructions": "Answer in French.", "input": "Hello"}),
                "gpt-4o-mini",
                false,
                None,
                1,
                false,
                1,
                0,
                "Answer in French.",
            ),
            (
                Endpoint::Messages,
                json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": "You are terse.",
                       "messages": [{"role": "user", "content": "Hi"}], "stream": false}),
                "claude-sonnet-4-5",
                false,
                Some(1024),
                1,
                false,
                1,
                0,
                "You are terse.",
            ),
        ];
        for (endpoint, body, model, stream, max, choices, wants, messages, images, contains) in table {
            let r = parse(endpoint, &body).expect("parses");
            assert_eq!(r.model, model);
            assert_eq!(r.stream, stream, "{model}");
            assert_eq!(r.max_output_tokens, max, "{model}");
            assert_eq!(r.choices, choices, "{model}");
            assert_eq!(r.client_wants_usage, wants, "{model}");
            assert_eq!(r.messages, messages, "{model}");
            assert_eq!(r.images, images, "{model}");
            assert!(r.input_text.contains(contains), "{model}: {:?}", r.input_text);
            assert!(!r.input_text.contains("base64"), "image data is not text");
        }
    }

    #[test]
    fn bad_bodies_are_refused() {
        for body in [json!([]), json!({"messages": []}), json!({"model": 3}), json!({"model": "m", "stream": "yes"})] {
            assert!(parse(Endpoint::ChatCompletions, &body).is_err(), "{body}");
        }
        assert!(parse(Endpoint::Messages, &json!({"model": "m", "max_tokens": -1})).is_err());
    }

    #[test]
    fn stream_usage_is_asked_for_once() {
        let body = json!({"model": "m", "stream": true, "stream_options": {"foo": 1}});
        let changed = with_stream_usage(&body).expect("changed");
        assert_eq!(changed["stream_options"], json!({"foo": 1, "include_usage": true}));
        assert_eq!(with_stream_usage(&changed), None);
    }
}
