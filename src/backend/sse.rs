//! An incremental parser for server-sent events, fed the byte chunks of an HTTP body.
//!
//! Chunks may split anywhere: inside a line, between `\r` and `\n`, or inside a multi-byte UTF-8
//! character. The parser buffers bytes until a line ends, so every line it decodes is whole.
//! Comment lines (those starting with `:`, such as mlx-lm's `: keepalive 12/80` and llama.cpp's
//! pings) are counted and otherwise ignored; they never produce an event.

/// One dispatched event: the `data` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, when the server set one.
    pub event: Option<String>,
    pub data: String,
}

/// A line that was not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event-stream line is not UTF-8 (after {offset} bytes)")]
pub struct InvalidUtf8 {
    pub offset: usize,
}

/// Turns a byte stream into events, one chunk at a time.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// A `\r` ended the last line; a `\n` right after it belongs to the same line ending.
    after_cr: bool,
    data: Option<String>,
    event: Option<String>,
    consumed: usize,
    comments: usize,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many comment lines (keep-alives, pings) have been seen.
    pub fn comments(&self) -> usize {
        self.comments
    }

    /// Feeds the next chunk of the body, returning the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, InvalidUtf8> {
        let mut events = Vec::new();
        for &byte in chunk {
            self.consumed += 1;
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    let text = String::from_utf8(line).map_err(|_| InvalidUtf8 {
                        offset: self.consumed,
                    })?;
                    if let Some(event) = self.take_line(&text) {
                        events.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    /// Ends the stream: a final event not followed by a blank line is still dispatched.
    pub fn finish(&mut self) -> Result<Option<Event>, InvalidUtf8> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let text = String::from_utf8(line).map_err(|_| InvalidUtf8 {
                offset: self.consumed,
            })?;
            if let Some(event) = self.take_line(&text) {
                return Ok(Some(event));
            }
        }
        Ok(self.dispatch())
    }

    fn take_line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            // Older llama.cpp builds sent mid-stream errors in a non-standard `error:` field
            // (ggml-org/llama.cpp#16104); it becomes an `error` event rather than vanishing.
            "error" => {
                self.event = Some("error".to_string());
                self.data = Some(value.to_string());
            }
            // `id` and `retry` only matter to a reconnecting browser; tandem never reconnects,
            // because reconnecting would send the prompt again and start a second generation.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        let data = self.data.take();
        let event = self.event.take();
        data.map(|data| Event { event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.push(chunk).unwrap());
        }
        events.extend(parser.finish().unwrap());
        events
    }

    fn data(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn parses_data_lines_and_skips_comments() {
        let body = b": keepalive 1/10\n\ndata: {\"a\":1}\n\n: ping\ndata: [DONE]\n\n";
        let events = parse_all(&[body]);
        assert_eq!(data(&events), vec!["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn counts_comment_lines() {
        let mut parser = SseParser::new();
        parser
            .push(b": keepalive 1/3\n: keepalive 2/3\ndata: x\n\n")
            .unwrap();
        assert_eq!(parser.comments(), 2);
    }

    #[test]
    fn joins_multiline_data_and_keeps_event_names() {
        let events = parse_all(&[b"event: error\ndata: line one\ndata: line two\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.as_deref(), Some("error"));
        assert_eq!(events[0].data, "line one\nline two");
    }

    #[test]
    fn a_legacy_error_field_becomes_an_error_event() {
        let events = parse_all(&[b"error: {\"message\":\"boom\"}\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.as_deref(), Some("error"));
        assert_eq!(events[0].data, "{\"message\":\"boom\"}");
    }

    #[test]
    fn accepts_crlf_and_bare_cr_line_endings() {
        let events = parse_all(&[b"data: one\r\n\r\ndata: two\r\rdata: three\n\n"]);
        assert_eq!(data(&events), vec!["one", "two", "three"]);
    }

    #[test]
    fn dispatches_a_last_event_without_a_blank_line() {
        let events = parse_all(&[b"data: tail"]);
        assert_eq!(data(&events), vec!["tail"]);
    }

    #[test]
    fn rejects_a_line_that_is_not_utf8() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"data: \xff\xfe\n\n").is_err());
    }

    proptest! {
        /// However the body is cut into chunks, the events are the same, including multi-byte
        /// characters cut in half and `\r\n` pairs split across chunks.
        #[test]
        fn any_split_of_the_body_yields_the_same_events(
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let body = "data: {\"delta\":\"héllo wörld ✓ 数据\"}\r\n\r\n: keepalive\r\n\
                        data: second 🚀\n\ndata: [DONE]\r\n\r\n"
                .as_bytes();
            let whole = parse_all(&[body]);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for p in points {
                chunks.push(&body[start..p]);
                start = p;
            }
            chunks.push(&body[start..]);
            prop_assert_eq!(parse_all(&chunks), whole.clone());
            prop_assert_eq!(whole.len(), 3);
        }
    }
}
