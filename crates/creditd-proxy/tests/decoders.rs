//! The usage decoders on recorded transcripts of each wire format
//! (`tests/transcripts/`): what each says was used, how it ended, what
//! output text it delivered, and which bytes a client receives. Every
//! stream is fed whole and in every chunking from 1 byte up, with the
//! same result.

use creditd_proxy::decode::{self, Endpoint, ProviderUsage, StreamDecoder, Terminal};
use creditd_proxy::sse::{SseEvent, SseParser};
use serde_json::Value;

fn transcript(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/transcripts/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (input, cache_read, cache_write, output, reasoning, tool_calls)
type Counts = (u64, u64, u64, u64, u64, u64);

fn usage(counts: Counts) -> ProviderUsage {
    let (input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, tool_calls) = counts;
    ProviderUsage { input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, tool_calls }
}

struct Decoded {
    usage: Option<ProviderUsage>,
    usage_final: bool,
    terminal: Option<Terminal>,
    text: String,
    error: Option<String>,
    /// The bytes a client receives.
    forwarded: Vec<u8>,
}

fn decode_stream(endpoint: Endpoint, strip: bool, bytes: &[u8], piece: usize) -> Decoded {
    let mut parser = SseParser::new();
    let mut decoder = StreamDecoder::new(endpoint, strip);
    let mut events: Vec<SseEvent> = Vec::new();
    let mut forwarded = Vec::new();
    for chunk in bytes.chunks(piece) {
        events.clear();
        parser.feed(chunk, &mut events);
        for event in &events {
            if decoder.event(event) {
                forwarded.extend_from_slice(&event.raw);
            }
        }
    }
    events.clear();
    parser.finish(&mut events);
    for event in &events {
        if decoder.event(event) {
            forwarded.extend_from_slice(&event.raw);
        }
    }
    Decoded {
        usage: decoder.usage(),
        usage_final: decoder.usage_final(),
        terminal: decoder.terminal(),
        text: decoder.text().to_string(),
        error: decoder.error().map(str::to_string),
        forwarded,
    }
}

/// (transcript, endpoint, strip the usage chunk, usage, final, terminal, text, error)
type StreamCase =
    (&'static str, Endpoint, bool, Option<Counts>, bool, Option<Terminal>, &'static str, Option<&'static str>);

#[test]
fn streams() {
    let table: &[StreamCase] = &[
        (
            "openai_chat_stream_usage.sse",
            Endpoint::ChatCompletions,
            false,
            // 2006 prompt tokens of which 1920 cached: 86 uncached.
            Some((86, 1920, 0, 7, 0, 0)),
            true,
            Some(Terminal::Completed),
            "Paris is the capital of France.",
            None,
        ),
        (
            "openai_chat_stream_tools.sse",
            Endpoint::ChatCompletions,
            false,
            Some((81, 0, 0, 15, 0, 0)),
            true,
            Some(Terminal::Completed),
            "get_weather{\"location\": \"Paris\"}",
            None,
        ),
        (
            "openai_chat_stream_error.sse",
            Endpoint::ChatCompletions,
            false,
            None,
            false,
            Some(Terminal::Error),
            "Once upon",
            Some("The server had an error while processing your request. Sorry about that!"),
        ),
        (
            "openai_responses_stream.sse",
            Endpoint::Responses,
            false,
            Some((37, 0, 0, 204, 192, 0)),
            true,
            Some(Terminal::Completed),
            "Hi there!",
            None,
        ),
        (
            "openai_responses_incomplete.sse",
            Endpoint::Responses,
            false,
            Some((1024, 4096, 0, 16, 0, 0)),
            true,
            Some(Terminal::Incomplete),
            "A very long story that",
            None,
        ),
        (
            "openai_responses_failed.sse",
            Endpoint::Responses,
            false,
            None,
            false,
            Some(Terminal::Failed),
            "Partial answer",
            Some("The model failed to generate a response."),
        ),
        (
            "anthropic_stream.sse",
            Endpoint::Messages,
            false,
            // message_delta's output count replaces message_start's, never adds to it.
            Some((472, 2048, 0, 15, 0, 0)),
            true,
            Some(Terminal::Completed),
            "Hello! How can I help?",
            None,
        ),
        (
            "anthropic_stream_tool.sse",
            Endpoint::Messages,
            false,
            // The final message_delta restates every count (cumulative) and a cache write.
            Some((472, 0, 1024, 89, 0, 2)),
            true,
            Some(Terminal::Completed),
            "The user wants the weather in San Francisco.get_weather{\"location\": \"San Francisco, CA\"}",
            None,
        ),
        (
            "anthropic_stream_error.sse",
            Endpoint::Messages,
            false,
            // Only message_start's counts: not final.
            Some((1200, 0, 300, 1, 0, 0)),
            false,
            Some(Terminal::Error),
            "Let me think about",
            Some("Overloaded"),
        ),
    ];
    for &(name, endpoint, strip, counts, usage_final, terminal, text, error) in table {
        let bytes = transcript(name);
        for piece in [bytes.len(), 1, 2, 3, 7, 64, 333] {
            let d = decode_stream(endpoint, strip, &bytes, piece);
            assert_eq!(d.usage, counts.map(usage), "{name} in pieces of {piece}");
            assert_eq!(d.usage_final, usage_final, "{name}");
            assert_eq!(d.terminal, terminal, "{name}");
            assert_eq!(d.text, text, "{name}");
            assert_eq!(d.error.as_deref(), error, "{name}");
            assert_eq!(d.forwarded, bytes, "{name}: passed on byte for byte");
        }
    }
}

#[test]
fn the_usage_chunk_the_client_did_not_ask_for_is_left_out() {
    let bytes = transcript("openai_chat_stream_usage.sse");
    let text = String::from_utf8(bytes.clone()).unwrap();
    let expected: String = text.split_inclusive("\n\n").filter(|event| !event.contains("\"choices\":[]")).collect();
    assert_ne!(expected.len(), text.len());
    for piece in [bytes.len(), 1, 5, 100] {
        let d = decode_stream(Endpoint::ChatCompletions, true, &bytes, piece);
        assert_eq!(String::from_utf8(d.forwarded).unwrap(), expected, "pieces of {piece}");
        assert_eq!(d.usage, Some(usage((86, 1920, 0, 7, 0, 0))), "still read");
        assert_eq!(d.terminal, Some(Terminal::Completed));
    }
}

#[test]
fn whole_bodies() {
    // (transcript, endpoint, usage, text, failed)
    let table: &[(&str, Endpoint, Counts, &str, bool)] = &[
        ("openai_chat_whole.json", Endpoint::ChatCompletions, (93, 1024, 0, 1800, 1536, 0), "The answer is 42.", false),
        (
            "openai_responses_whole.json",
            Endpoint::Responses,
            (200, 128, 0, 52, 0, 0),
            "The image depicts a scenic landscape.get_weather{\"location\":\"Paris, France\"}",
            false,
        ),
        (
            "anthropic_whole.json",
            Endpoint::Messages,
            (2095, 0, 2051, 503, 0, 0),
            "I'll check the weather.get_weather{\"location\":\"San Francisco, CA\"}",
            false,
        ),
    ];
    for &(name, endpoint, counts, text, failed) in table {
        let body: Value = serde_json::from_slice(&transcript(name)).expect(name);
        let d = decode::decode_body(endpoint, &body);
        assert_eq!(d.usage, Some(usage(counts)), "{name}");
        assert_eq!(d.text, text, "{name}");
        assert_eq!(d.failed, failed, "{name}");
        let mut without = body.clone();
        without.as_object_mut().unwrap().remove("usage");
        assert_eq!(decode::decode_body(endpoint, &without).usage, None, "{name} without usage");
    }
}

#[test]
fn usage_converts_to_the_engines_classes() {
    let u = usage((86, 1920, 5, 7, 9, 1)).to_core();
    assert_eq!((u.input_tokens, u.cache_read_tokens, u.cache_write_tokens, u.output_tokens), (86, 1920, 5, 7));
    assert_eq!(u.reasoning_tokens, 7, "reasoning never above output");
    assert_eq!(u.tool_calls, 1);
}
