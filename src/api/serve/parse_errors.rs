//! The JSON error body for the answers hyper writes itself, to requests it could not parse.
//!
//! When an HTTP/1 request head is malformed (a bad request line, header or `Content-Length`)
//! or too large, hyper answers `400`, `414` or `431` on its own, with an empty body, and closes
//! the connection; it offers no hook to change that answer. So the connection's writes pass
//! through [`Responses`], which follows the HTTP/1 response stream message by message: it
//! reads each response head, and skips its body by its framing (`Content-Length`, chunked, or
//! none for `HEAD`, 1xx, 204 and 304).
//!
//! A head is hyper's own exactly when no request is waiting for an answer: every request hyper
//! parses reaches our service, which notes it (with whether it is a `HEAD`) before hyper can
//! write its answer, and answers go out in request order. Such a head is replaced by the same
//! status line and headers with the JSON error body, its `Content-Length` and
//! `Connection: close` (hyper closes the connection after it anyway). The router's own heads
//! and every body pass unchanged; a stream this cannot follow is passed through untouched from
//! there on, never altered.

use super::error_json;
use crate::api::error::ApiError;

/// Longest response head followed; a longer one (never ours) ends the following.
const MAX_HEAD: usize = 64 << 10;

/// Where the response stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// At (or inside) a response head.
    Head,
    /// Inside a body of known length, with this many bytes left.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not followed (any more): everything passes as it is.
    Through,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far, and whether an extension has begun.
    Size { size: u64, ext: bool },
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// In the line end after a chunk's data.
    DataEnd,
    /// In the trailer section after the last chunk: whether at the start of a line.
    Trailers { line_start: bool },
}

/// What the service knows of a request whose answer is still to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Awaited {
    /// A `HEAD` request: its answer has headers only.
    pub(super) head_request: bool,
}

/// What [`Responses::take_head`] did with the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Taken {
    /// Bytes of the input that belong to the head (held here; the caller reports them
    /// written).
    pub(super) consumed: usize,
    /// Once the head is complete: the bytes to send in its place.
    pub(super) send: Option<Vec<u8>>,
}

/// The HTTP/1 response stream of one connection, followed message by message.
#[derive(Debug)]
pub(super) struct Responses {
    framing: Framing,
    head: Vec<u8>,
}

impl Responses {
    pub(super) fn new() -> Responses {
        Responses {
            framing: Framing::Head,
            head: Vec::new(),
        }
    }

    /// A stream that is not followed at all (an HTTP/2 connection).
    pub(super) fn through(&mut self) {
        self.framing = Framing::Through;
    }

    pub(super) fn is_through(&self) -> bool {
        self.framing == Framing::Through
    }

    /// Whether the next bytes written belong to a response head.
    pub(super) fn at_head(&self) -> bool {
        self.framing == Framing::Head
    }

    /// Takes the bytes of a response head from `input` (which starts in one). `awaited` is
    /// asked, once the head is complete and is not an interim (1xx) answer, for the request it
    /// answers: `None` means hyper wrote this head of its own accord.
    pub(super) fn take_head(&mut self, input: &[u8], awaited: impl FnOnce() -> Option<Awaited>) -> Taken {
        debug_assert!(self.at_head());
        let end = head_end(&self.head, input);
        let consumed = end.unwrap_or(input.len());
        self.head.extend_from_slice(&input[..consumed]);
        if end.is_none() {
            if self.head.len() > MAX_HEAD {
                return Taken {
                    consumed,
                    send: Some(self.give_up()),
                };
            }
            return Taken { consumed, send: None };
        }
        let head = std::mem::take(&mut self.head);
        let send = self.next_message(head, awaited);
        Taken {
            consumed,
            send: Some(send),
        }
    }

    /// Gives up following: the head bytes held, to send as they are.
    pub(super) fn give_up(&mut self) -> Vec<u8> {
        self.framing = Framing::Through;
        std::mem::take(&mut self.head)
    }

    /// Whether part of a head is held here.
    pub(super) fn holds_partial_head(&self) -> bool {
        !self.head.is_empty()
    }

    /// A look ahead over the current body, which leaves the stream where it is.
    pub(super) fn peek_body(&self) -> BodyPeek {
        BodyPeek(self.framing)
    }

    /// Moves on over `written`, bytes of the current body that went out.
    pub(super) fn body_written(&mut self, written: &[u8]) {
        let n = step(&mut self.framing, written);
        debug_assert_eq!(n, written.len(), "only body bytes are reported written");
    }

    /// Decides what to send for a complete `head`, and how its body is framed.
    fn next_message(&mut self, head: Vec<u8>, awaited: impl FnOnce() -> Option<Awaited>) -> Vec<u8> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        let (code, framing) = match parsed.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let code = parsed.code.unwrap_or(0);
                (code, body_framing(code, parsed.headers))
            }
            // Never the case for hyper's heads; pass the rest as it is rather than guess.
            _ => {
                self.framing = Framing::Through;
                return head;
            }
        };
        if (100..200).contains(&code) {
            // An interim answer (100 Continue): the final one follows.
            self.framing = Framing::Head;
            return head;
        }
        match awaited() {
            Some(request) => {
                self.framing = if request.head_request || code == 204 || code == 304 {
                    Framing::Head
                } else {
                    framing
                };
                head
            }
            None => {
                // hyper closes the connection after its own answer.
                self.framing = Framing::Through;
                match parse_error(code) {
                    Some(error) => with_json_body(&head, &error_json(error.0, &error.1)),
                    None => head,
                }
            }
        }
    }
}

/// A look ahead over the current body, piece by piece.
pub(super) struct BodyPeek(Framing);

impl BodyPeek {
    /// How many bytes at the start of `piece` belong to the current body (all of them when
    /// the stream is not followed).
    pub(super) fn span(&mut self, piece: &[u8]) -> usize {
        step(&mut self.0, piece)
    }
}

/// The JSON error (code, message) for a status hyper answers a request it could not parse with.
fn parse_error(status: u16) -> Option<(&'static str, String)> {
    match status {
        400 => Some((
            "invalid_request",
            "the request is not valid HTTP/1.1: its request line, a header or its Content-Length is malformed"
                .to_string(),
        )),
        414 => Some(("invalid_request", "the request URI is too long".to_string())),
        431 => {
            let e = ApiError::HeadersTooLarge;
            Some((e.code(), e.to_string()))
        }
        _ => None,
    }
}

/// How the body after a head with `code` and `headers` is framed (for a request that is not
/// a `HEAD`).
fn body_framing(code: u16, headers: &[httparse::Header<'_>]) -> Framing {
    if code == 204 || code == 304 {
        return Framing::Head;
    }
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if value("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        return Framing::Chunked(Chunk::Size { size: 0, ext: false });
    }
    match value("content-length").map(|v| v.trim().parse::<u64>()) {
        Some(Ok(0)) => Framing::Head,
        Some(Ok(n)) => Framing::Length(n),
        // No length (a body until the connection closes), or one we cannot read.
        _ => Framing::Through,
    }
}

/// `head` with the `body` (JSON) in place of an empty one: the same status line and headers
/// but for the body's type, length and `Connection: close`.
fn with_json_body(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + body.len() + 96);
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    if let Some(status_line) = lines.next() {
        out.extend_from_slice(status_line);
        out.extend_from_slice(b"\r\n");
    }
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        let replaced = ["content-length", "content-type", "connection", "transfer-encoding"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()));
        if !replaced {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Where the head that `held` began ends in `input`: the index just past its blank line.
fn head_end(held: &[u8], input: &[u8]) -> Option<usize> {
    const END: &[u8; 4] = b"\r\n\r\n";
    // The blank line may begin in what is already held.
    let tail = &held[held.len().saturating_sub(3)..];
    for split in (1..=tail.len()).rev() {
        let (a, b) = END.split_at(split);
        if tail.ends_with(a) && input.starts_with(b) {
            return Some(b.len());
        }
    }
    input.windows(4).position(|w| w == END).map(|i| i + 4)
}

/// Moves `framing` over the body bytes at the start of `input`; returns how many belong to
/// the body (it stops where the body ends, at the next head).
fn step(framing: &mut Framing, input: &[u8]) -> usize {
    let mut i = 0;
    while i < input.len() {
        match framing {
            Framing::Head => return i,
            Framing::Through => return input.len(),
            Framing::Length(left) => {
                let n = (*left).min((input.len() - i) as u64);
                i += n as usize;
                *left -= n;
                if *left == 0 {
                    *framing = Framing::Head;
                }
            }
            Framing::Chunked(Chunk::Data(left)) => {
                let n = (*left).min((input.len() - i) as u64);
                i += n as usize;
                *left -= n;
                if *left == 0 {
                    *framing = Framing::Chunked(Chunk::DataEnd);
                }
            }
            Framing::Chunked(chunk) => {
                let b = input[i];
                i += 1;
                match chunk {
                    Chunk::Size { size, ext } => match b {
                        b'\n' if *size == 0 => *chunk = Chunk::Trailers { line_start: true },
                        b'\n' => *chunk = Chunk::Data(*size),
                        b'\r' => {}
                        _ if !*ext && b.is_ascii_hexdigit() => {
                            let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                            match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                                Some(s) => *size = s,
                                None => *framing = Framing::Through,
                            }
                        }
                        _ => *ext = true,
                    },
                    Chunk::DataEnd => {
                        if b == b'\n' {
                            *chunk = Chunk::Size { size: 0, ext: false };
                        }
                    }
                    Chunk::Trailers { line_start } => match b {
                        b'\n' if *line_start => *framing = Framing::Head,
                        b'\n' => *line_start = true,
                        b'\r' => {}
                        _ => *line_start = false,
                    },
                    Chunk::Data(_) => unreachable!("handled above"),
                }
            }
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASKED: Option<Awaited> = Some(Awaited { head_request: false });

    /// Feeds `stream` in pieces of `piece` bytes, as a connection's writes would come; returns
    /// what is sent, and how many times a request was asked for.
    fn feed(stream: &[u8], piece: usize, mut awaited: Vec<Option<Awaited>>) -> (Vec<u8>, usize) {
        awaited.reverse();
        let mut asked = 0;
        let mut r = Responses::new();
        let mut out = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let input = &rest[..piece.min(rest.len())];
            let used = if r.at_head() {
                let t = r.take_head(input, || {
                    asked += 1;
                    awaited.pop().flatten()
                });
                if let Some(send) = t.send {
                    out.extend_from_slice(&send);
                }
                t.consumed
            } else {
                let n = r.peek_body().span(input);
                r.body_written(&input[..n]);
                out.extend_from_slice(&input[..n]);
                n
            };
            rest = &rest[used..];
        }
        (out, asked)
    }

    const OWN_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
        date: Thu, 04 Dec 2026 20:00:00 GMT\r\n\r\n";

    #[test]
    fn hyper_s_own_answer_gets_the_json_error_body() {
        for piece in [1, 7, 1000] {
            let (out, asked) = feed(OWN_431, piece, vec![None]);
            assert_eq!(asked, 1);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                "{head}"
            );
            assert!(head.contains("date: Thu, 04 Dec 2026 20:00:00 GMT"), "{head}");
            assert!(head.contains("content-type: application/json"), "{head}");
            assert!(head.contains("connection: close"), "{head}");
            assert!(!head.contains("content-length: 0"), "{head}");
            assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"]["code"], "headers_too_large");
        }
        let (out, _) = feed(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", 5, vec![None]);
        let text = String::from_utf8(out).unwrap();
        let body: serde_json::Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{text}");
    }

    #[test]
    fn answers_to_requests_pass_unchanged_even_when_they_look_like_hyper_s_own() {
        // A value that holds hyper's own answer, as the body of an answer to a GET.
        let mut stream = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", OWN_431.len()).into_bytes();
        stream.extend_from_slice(OWN_431);
        // Then an empty-bodied 404 to a second request, and a chunked answer to a third.
        stream.extend_from_slice(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        stream.extend_from_slice(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nHTTP/\r\n");
        stream.extend_from_slice(b"1A\r\n1.1 400 Bad Request\r\n\r\nabcd\r\n0\r\nx-trailer: 1\r\n\r\n");
        for piece in [1, 3, 16, 10_000] {
            let (out, asked) = feed(&stream, piece, vec![ASKED, ASKED, ASKED]);
            assert_eq!(out, stream, "piece {piece}");
            assert_eq!(asked, 3, "one request per final answer, piece {piece}");
        }
    }

    #[test]
    fn an_own_answer_after_answered_requests_is_recognised() {
        let mut stream = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        // A HEAD request's answer names a length but has no body.
        stream.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n");
        stream.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\netag: \"3\"\r\n\r\n");
        stream.extend_from_slice(OWN_431);
        let head = Some(Awaited { head_request: true });
        let (out, asked) = feed(&stream, 4, vec![ASKED, head, ASKED, None]);
        assert_eq!(asked, 4);
        let at = stream.len() - OWN_431.len();
        assert_eq!(out[..at], stream[..at]);
        assert!(String::from_utf8_lossy(&out[at..]).contains("headers_too_large"));
    }

    #[test]
    fn a_stream_that_cannot_be_followed_passes_untouched() {
        // No length: the body runs to the end of the connection.
        let stream = b"HTTP/1.0 200 OK\r\n\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let (out, asked) = feed(stream, 9, vec![ASKED, None]);
        assert_eq!(out, stream);
        assert_eq!(asked, 1);
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        long.resize(MAX_HEAD + 100, b'x');
        let (out, _) = feed(&long, 1000, vec![ASKED]);
        assert_eq!(out, long);
    }

    #[test]
    fn the_end_of_a_head_is_found_across_pieces() {
        assert_eq!(head_end(b"abc\r", b"\n\r\nrest"), Some(3));
        assert_eq!(head_end(b"abc\r\n", b"\r\nrest"), Some(2));
        assert_eq!(head_end(b"abc\r\n\r", b"\nrest"), Some(1));
        assert_eq!(head_end(b"", b"x\r\n\r\ny"), Some(5));
        assert_eq!(head_end(b"abc\r\n", b"x\r\n"), None);
    }
}
