//! `stream`: send one request and report each server-sent event the moment its bytes arrive,
//! with the time since the request started.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::cli::RequestSpec;
use crate::transport::{self, HttpClient, SendError, chain};

/// Splits a byte stream into SSE events (blocks ended by a blank line).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Adds received bytes; returns the events they complete, without the blank line.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        // CRLF line ends become LF, so one separator search covers both.
        self.buf.extend(bytes.iter().filter(|&&b| b != b'\r'));
        let mut events = Vec::new();
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
            events.push(String::from_utf8_lossy(&block[..pos]).into_owned());
        }
        events
    }

    /// What is left once the body ended (an unterminated event, or a non-SSE error body).
    pub fn finish(&mut self) -> Option<String> {
        let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buf))
            .trim()
            .to_owned();
        (!rest.is_empty()).then_some(rest)
    }
}

/// True for the `data: [DONE]` event that ends an OpenAI stream.
pub fn is_done(event: &str) -> bool {
    event.lines().any(|l| l.trim() == "data: [DONE]")
}

/// What `run` reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// The response head.
    Head {
        at: Duration,
        status: StatusCode,
        version: Option<String>,
    },
    /// One complete event (or, at the end, leftover body text).
    Event { at: Duration, text: String },
}

/// How the stream ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEnd {
    pub status: StatusCode,
    pub events: usize,
    pub done: bool,
    pub elapsed: Duration,
}

/// A request body asking for a short stream, fitting the URL's endpoint.
pub fn default_body(path: &str) -> &'static str {
    if path.ends_with("/chat/completions") {
        r#"{"model":"infermesh-demo","messages":[{"role":"user","content":"stream these words one token at a time"}],"max_tokens":16,"stream":true}"#
    } else {
        r#"{"model":"infermesh-demo","prompt":"stream these words one token at a time","max_tokens":16,"stream":true}"#
    }
}

/// Sends `spec` and calls `report` for the head and each event as it arrives, within
/// `spec.timeout`.
pub async fn run(
    client: &HttpClient,
    spec: &RequestSpec,
    mut report: impl FnMut(&StreamItem),
) -> Result<StreamEnd, SendError> {
    let start = Instant::now();
    let uri = spec.uri.to_string();
    let work = async {
        let resp = transport::send(client, spec).await?;
        let status = resp.status();
        report(&StreamItem::Head {
            at: start.elapsed(),
            status,
            version: transport::model_version(resp.headers()).map(str::to_owned),
        });
        let mut body = resp.into_body();
        let mut parser = SseParser::default();
        let (mut events, mut done) = (0, false);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| SendError::Body {
                uri: uri.clone(),
                detail: chain(&e),
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            for text in parser.push(&data) {
                done |= is_done(&text);
                events += 1;
                report(&StreamItem::Event {
                    at: start.elapsed(),
                    text,
                });
            }
        }
        if let Some(text) = parser.finish() {
            events += 1;
            report(&StreamItem::Event {
                at: start.elapsed(),
                text,
            });
        }
        Ok(StreamEnd {
            status,
            events,
            done,
            elapsed: start.elapsed(),
        })
    };
    tokio::time::timeout(spec.timeout, work)
        .await
        .map_err(|_| SendError::Timeout {
            uri: uri.clone(),
            timeout: spec.timeout,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunk_boundaries() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(p.push(b":1}\n\ndata: tw"), vec!["data: {\"a\":1}"]);
        assert_eq!(p.push(b"o\n"), Vec::<String>::new());
        assert_eq!(
            p.push(b"\ndata: [DONE]\n\n"),
            vec!["data: two", "data: [DONE]"]
        );
        assert!(p.finish().is_none());
    }

    #[test]
    fn handles_crlf_and_leftovers() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: x\r\n\r\n{\"error\":1}"), vec!["data: x"]);
        assert_eq!(p.finish().as_deref(), Some("{\"error\":1}"));
    }

    #[test]
    fn recognises_done() {
        assert!(is_done("data: [DONE]"));
        assert!(!is_done("data: {\"text\":\"[DONE]\"}"));
    }

    #[test]
    fn default_body_matches_endpoint() {
        assert!(default_body("/v1/chat/completions").contains("messages"));
        assert!(default_body("/v1/completions").contains("prompt"));
        for path in ["/v1/chat/completions", "/v1/completions"] {
            let v: serde_json::Value = serde_json::from_str(default_body(path)).expect("json");
            assert_eq!(v["stream"], true);
        }
    }
}
