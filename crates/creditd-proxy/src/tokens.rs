//! Token counts the proxy makes itself: the input of a hold, and the output
//! delivered when the provider never said (a disconnect, a stream without
//! usage).
//!
//! OpenAI models are counted with OpenAI's own tokenizers (`tiktoken-rs`,
//! whose BPE tables are compiled into the binary: nothing is downloaded):
//! `cl100k_base` for GPT-4 and GPT-3.5, `o200k_base` for every other model
//! (GPT-4o, GPT-4.1, o-series and newer). Anthropic publishes no tokenizer:
//! Claude models are counted with `o200k_base` and the count raised by a
//! fifth ([`ANTHROPIC_FACTOR_PERCENT`]), which leans to holding slightly
//! more than the provider will report.

use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use crate::decode::Provider;
use crate::request::ProxyRequest;

/// Tokens of framing per message (role, separators), as OpenAI counts them.
pub const TOKENS_PER_MESSAGE: u64 = 4;
/// Tokens of framing per request (the reply's priming).
pub const TOKENS_PER_REQUEST: u64 = 3;
/// Tokens counted for each image or document in the input.
pub const TOKENS_PER_IMAGE: u64 = 1_600;
/// Claude counts: `o200k_base` count × this / 100, rounded up.
pub const ANTHROPIC_FACTOR_PERCENT: u64 = 120;
/// Text beyond this many bytes is counted as one token per 3 bytes rather
/// than tokenized (bounds the time a hold may take).
pub const TOKENIZE_BYTES_MAX: usize = 4 << 20;

/// The tables a count uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bpe {
    O200k,
    Cl100k,
}

impl Bpe {
    fn tables(self) -> &'static CoreBPE {
        match self {
            Bpe::O200k => tiktoken_rs::o200k_base_singleton(),
            Bpe::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        }
    }
}

/// How a model's text is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An OpenAI model, counted by its tokenizer.
    Exact(Bpe),
    /// A model without a public tokenizer: a count × a factor in percent.
    Scaled(Bpe, u64),
}

impl Counter {
    /// The counter of `model` served by `provider`.
    pub fn for_model(provider: Provider, model: &str) -> Counter {
        match provider {
            Provider::OpenAi => match get_tokenizer(model) {
                Some(Tokenizer::Cl100kBase) => Counter::Exact(Bpe::Cl100k),
                _ => Counter::Exact(Bpe::O200k),
            },
            Provider::Anthropic => Counter::Scaled(Bpe::O200k, ANTHROPIC_FACTOR_PERCENT),
        }
    }

    /// Whether the count is the provider's own tokenizer's.
    pub fn exact(self) -> bool {
        matches!(self, Counter::Exact(_))
    }

    /// Tokens of `text`.
    pub fn count(self, text: &str) -> u64 {
        let (bpe, percent) = match self {
            Counter::Exact(bpe) => (bpe, 100),
            Counter::Scaled(bpe, percent) => (bpe, percent),
        };
        let (head, tail_bytes) = if text.len() > TOKENIZE_BYTES_MAX {
            let mut cut = TOKENIZE_BYTES_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            (&text[..cut], (text.len() - cut) as u64)
        } else {
            (text, 0)
        };
        let tokens = bpe.tables().encode_ordinary(head).len() as u64 + tail_bytes.div_ceil(3);
        (tokens * percent).div_ceil(100)
    }
}

/// Loads the tokenizers' tables (a fraction of a second), so that the
/// first request does not wait for them.
pub fn warm_up() {
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
}

/// The input tokens a hold assumes for `request`.
pub fn estimate_input(counter: Counter, request: &ProxyRequest) -> u64 {
    counter.count(&request.input_text)
        + request.messages * TOKENS_PER_MESSAGE
        + TOKENS_PER_REQUEST
        + request.images * TOKENS_PER_IMAGE
}

/// The output tokens a hold assumes: the request's limit, never above the
/// model's `max_output_tokens`, times the choices asked for.
pub fn estimate_output(request: &ProxyRequest, model_max_output_tokens: u64) -> u64 {
    let per_choice = request.max_output_tokens.map_or(model_max_output_tokens, |m| m.min(model_max_output_tokens));
    per_choice.saturating_mul(request.choices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_text_is_counted_by_its_tokenizer() {
        let gpt4o = Counter::for_model(Provider::OpenAi, "gpt-4o");
        assert!(gpt4o.exact());
        // o200k_base: "Hello, world!" is 4 tokens.
        assert_eq!(gpt4o.count("Hello, world!"), 4);
        let gpt4 = Counter::for_model(Provider::OpenAi, "gpt-4-0613");
        assert_ne!(gpt4, gpt4o);
        assert_eq!(gpt4.count("Hello, world!"), 4);
        // Special tokens in user text are text, not a panic.
        assert!(gpt4o.count("<|endoftext|>") > 1);
    }

    #[test]
    fn claude_text_is_counted_high() {
        let claude = Counter::for_model(Provider::Anthropic, "claude-sonnet-4-5");
        assert!(!claude.exact());
        assert_eq!(claude.count("Hello, world!"), 5); // ceil(4 × 1.2)
        assert_eq!(claude.count(""), 0);
    }
}
