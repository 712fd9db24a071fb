//! An incremental reader of `text/event-stream` (the WHATWG rules the
//! providers follow): lines end with CRLF, LF or CR; an empty line ends an
//! event; `data:` lines join with `\n`; a line starting with `:` is a
//! comment. Each event keeps its raw bytes, so that a forwarder can pass the
//! stream on unchanged, or leave out one whole event.

/// One event, with the bytes it was read from (its blank line included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (empty when there were none).
    pub data: String,
    pub raw: Vec<u8>,
}

/// Reads events from chunks as they arrive; chunks may split anywhere.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the event being read.
    buf: Vec<u8>,
    /// Where the next line of `buf` starts.
    line_start: usize,
    event: Option<String>,
    data: Option<String>,
}

/// Events longer than this are cut: a stream never grows the buffer without bound.
pub const EVENT_BYTES_MAX: usize = 16 << 20;

impl SseParser {
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Feeds a chunk; complete events are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(chunk);
        loop {
            let rest = &self.buf[self.line_start..];
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else { break };
            let terminator = if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A CR at the end of what arrived: wait for the next byte.
                    None => break,
                }
            } else {
                1
            };
            let line = String::from_utf8_lossy(&rest[..end]).into_owned();
            self.line_start += end + terminator;
            if line.is_empty() {
                self.dispatch(out);
            } else {
                self.field(&line);
            }
        }
        if self.buf.len() > EVENT_BYTES_MAX {
            // A runaway event: let its bytes go as an event of their own.
            self.dispatch(out);
        }
    }

    /// The end of the stream: what is left (an event without its blank line).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if self.buf.len() > self.line_start {
            let line = String::from_utf8_lossy(&self.buf[self.line_start..]).trim_end_matches('\r').to_string();
            self.line_start = self.buf.len();
            if !line.is_empty() {
                self.field(&line);
            }
        }
        if !self.buf.is_empty() {
            self.dispatch(out);
        }
    }

    fn field(&mut self, line: &str) {
        if line.starts_with(':') {
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let cut = self.line_start.min(self.buf.len());
        let raw: Vec<u8> = self.buf.drain(..cut).collect();
        self.line_start = 0;
        let event = SseEvent { event: self.event.take(), data: self.data.take().unwrap_or_default(), raw };
        if !event.raw.is_empty() {
            out.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(text: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in text.chunks(piece.max(1)) {
            parser.feed(chunk, &mut out);
        }
        parser.finish(&mut out);
        out
    }

    #[test]
    fn events_are_read_whatever_the_chunking() {
        let text =
            b"event: message_start\ndata: {\"a\":1}\n\n: ping comment\r\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\r\r";
        for piece in [1, 2, 3, 5, 7, 64, 1024] {
            let events = parse_in_pieces(text, piece);
            assert_eq!(events.len(), 3, "piece {piece}");
            assert_eq!(events[0].event.as_deref(), Some("message_start"));
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[1].data, "x\ny");
            assert_eq!(events[2].data, "[DONE]");
            let joined: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
            assert_eq!(joined, text.to_vec(), "piece {piece}: the raw bytes are the stream");
        }
    }

    #[test]
    fn an_unterminated_last_event_is_kept() {
        let events = parse_in_pieces(b"data: {\"x\":1}\n\ndata: tail", 4);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data, "tail");
        assert_eq!(events[1].raw, b"data: tail");
    }
}
