//! Server-sent events (`text/event-stream`), as the HTML standard defines
//! them: lines end with CRLF, LF or CR; `field: value` lines build an event
//! (`event`, `data` — several are joined with newlines —, `id`, `retry`);
//! a blank line dispatches it; lines starting with `:` are comments (the
//! server's keep-alives). Bytes arrive in chunks that may split a line, a
//! CRLF pair or a UTF-8 character anywhere, so the parser keeps the
//! unfinished line between chunks and decodes only whole lines.

use std::collections::VecDeque;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event id seen on the stream (ids persist across events).
    pub id: Option<String>,
    /// The event type (`message` when the event names none).
    pub event: String,
    /// The data lines, joined with `\n`.
    pub data: String,
}

/// An incremental parser: feed it chunks, take the events they complete.
#[derive(Debug, Default)]
pub struct Parser {
    /// The line being received (no terminator yet).
    line: Vec<u8>,
    /// The previous chunk ended with CR: a LF starting this one belongs to
    /// the same line terminator.
    after_cr: bool,
    /// Whether anything was received (a leading BOM is dropped).
    started: bool,
    last_id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Consume `chunk`; return the events it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if !self.started && !rest.is_empty() {
            self.line.extend_from_slice(rest);
            if self.line.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.line) {
                // Could still be a BOM split across chunks.
                return out;
            }
            self.started = true;
            let buffered = std::mem::take(&mut self.line);
            let body = buffered.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buffered);
            self.take_lines(body, &mut out);
            return out;
        }
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        self.take_lines(rest, &mut out);
        out
    }

    fn take_lines(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&bytes[..end]);
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
            let cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(bytes);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            // `retry` sets the browser's reconnection delay; the caller
            // keeps its own backoff. Unknown fields are ignored.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        out.push(SseEvent {
            id: self.last_id.clone(),
            event: event.filter(|e| !e.is_empty()).unwrap_or_else(|| "message".into()),
            data: std::mem::take(&mut self.data),
        });
    }
}

/// The events of a byte stream (a response body).
pub struct EventStream<S> {
    body: Pin<Box<S>>,
    parser: Parser,
    ready: VecDeque<SseEvent>,
}

impl<S> std::fmt::Debug for EventStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("parser", &self.parser)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl<S, B, E> EventStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    /// Parse `body` as it arrives.
    pub fn new(body: S) -> EventStream<S> {
        EventStream {
            body: Box::pin(body),
            parser: Parser::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next event; `None` when the body ended (an event not terminated
    /// by a blank line is incomplete and dropped, as the standard says).
    pub async fn next(&mut self) -> Option<Result<SseEvent, E>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            match self.body.next().await? {
                Ok(chunk) => self.ready.extend(self.parser.feed(chunk.as_ref())),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: Option<&str>, event: &str, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(str::to_string),
            event: event.to_string(),
            data: data.to_string(),
        }
    }

    /// Feed `text` split at every possible pair of positions; each split
    /// must give the same events as the whole.
    fn check(text: &str, expected: &[SseEvent]) {
        let bytes = text.as_bytes();
        assert_eq!(Parser::new().feed(bytes), expected, "whole");
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut p = Parser::new();
                let mut got = p.feed(&bytes[..i]);
                got.extend(p.feed(&bytes[i..j]));
                got.extend(p.feed(&bytes[j..]));
                assert_eq!(got, expected, "split at {i} and {j} of {text:?}");
            }
        }
        let mut p = Parser::new();
        let got: Vec<SseEvent> = bytes.iter().flat_map(|b| p.feed(std::slice::from_ref(b))).collect();
        assert_eq!(got, expected, "byte by byte");
    }

    #[test]
    fn events_with_ids_and_types() {
        check(
            "id: 1\nevent: transition\ndata: {\"seq\":1}\n\nid: 2\nevent: transition\ndata: {\"seq\":2}\n\n",
            &[
                ev(Some("1"), "transition", "{\"seq\":1}"),
                ev(Some("2"), "transition", "{\"seq\":2}"),
            ],
        );
    }

    #[test]
    fn several_data_lines_are_joined_with_newlines() {
        check(
            "data: first\ndata:second\ndata\ndata:  two spaces\n\n",
            &[ev(None, "message", "first\nsecond\n\n two spaces")],
        );
    }

    #[test]
    fn comments_are_ignored_and_keep_alives_dispatch_nothing() {
        check(
            ": keep-alive\n\n:\n\ndata: x\n: in the middle\ndata: y\n\n",
            &[ev(None, "message", "x\ny")],
        );
    }

    #[test]
    fn crlf_and_cr_line_endings() {
        check(
            "id: 7\r\nevent: log\r\ndata: a\r\n\r\ndata: b\rdata: c\r\r",
            &[ev(Some("7"), "log", "a"), ev(Some("7"), "message", "b\nc")],
        );
    }

    #[test]
    fn ids_persist_and_an_event_without_data_is_not_dispatched() {
        check(
            "id: 3\nevent: transition\n\ndata: later\n\nid\ndata: cleared\n\n",
            &[ev(Some("3"), "message", "later"), ev(Some(""), "message", "cleared")],
        );
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        check("data: complete\n\ndata: cut off\n", &[ev(None, "message", "complete")]);
    }

    #[test]
    fn a_leading_bom_is_dropped_and_utf8_survives_splits() {
        check("\u{feff}data: héllo — ✓\n\n", &[ev(None, "message", "héllo — ✓")]);
    }

    #[test]
    fn unknown_fields_and_retry_are_ignored() {
        check("retry: 1000\nfoo: bar\ndata: x\n\n", &[ev(None, "message", "x")]);
    }

    #[tokio::test]
    async fn a_stream_of_chunks_and_an_error() {
        let chunks: Vec<Result<&[u8], &str>> = vec![
            Ok(b"id: 1\nda"),
            Ok(b"ta: one\n"),
            Ok(b"\nid: 2\ndata: two\n\n"),
            Err("connection reset"),
        ];
        let mut s = EventStream::new(futures_util::stream::iter(chunks));
        assert_eq!(s.next().await, Some(Ok(ev(Some("1"), "message", "one"))));
        assert_eq!(s.next().await, Some(Ok(ev(Some("2"), "message", "two"))));
        assert_eq!(s.next().await, Some(Err("connection reset")));
        assert_eq!(s.next().await, None);
    }
}
