//! OpenAI-shaped request parsing and response/chunk bodies for `/v1/completions` and
//! `/v1/chat/completions`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::tokens::MAX_TOKENS_LIMIT;

/// Which OpenAI endpoint a request targets; the shapes differ slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

/// What the server needs from a completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub prompt: String,
    pub max_tokens: u32,
    pub stream: bool,
}

/// Why a request body was refused (answered with 400 and this text as reason).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request body is not valid JSON for this endpoint: {0}")]
    Json(#[from] serde_json::Error),
    #[error("max_tokens must be at most {MAX_TOKENS_LIMIT}, got {0}")]
    TooManyTokens(u32),
    #[error("chat request needs a non-empty \"messages\" array")]
    NoMessages,
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    content: Option<Value>,
}

/// Text of a `prompt` or `content` value: a string, or an array of strings / `{"text": ...}` parts.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Parses a request body for `endpoint`. The chat prompt is the last message's content.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<CompletionRequest, RequestError> {
    let raw: RawRequest = serde_json::from_slice(body)?;
    let prompt = match endpoint {
        Endpoint::Completions => raw.prompt.as_ref().map(text_of).unwrap_or_default(),
        Endpoint::ChatCompletions => {
            let messages = raw.messages.ok_or(RequestError::NoMessages)?;
            let last = messages.last().ok_or(RequestError::NoMessages)?;
            last.content.as_ref().map(text_of).unwrap_or_default()
        }
    };
    let max_tokens = raw.max_tokens.unwrap_or(16);
    if max_tokens > MAX_TOKENS_LIMIT {
        return Err(RequestError::TooManyTokens(max_tokens));
    }
    Ok(CompletionRequest {
        prompt,
        max_tokens,
        stream: raw.stream.unwrap_or(false),
    })
}

/// Identity shared by a response and all its chunks.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// Every answer stops at `max_tokens` because generation loops over the prompt.
const FINISH_REASON: &str = "length";

/// The full (non-streaming) response body.
pub fn response(endpoint: Endpoint, meta: &Meta, tokens: &[String], prompt_tokens: u32) -> Value {
    let text: String = tokens.concat();
    let completion_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
    let (object, choice) = match endpoint {
        Endpoint::Completions => (
            "text_completion",
            json!({"text": text, "index": 0, "logprobs": null, "finish_reason": FINISH_REASON}),
        ),
        Endpoint::ChatCompletions => (
            "chat.completion",
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": FINISH_REASON,
            }),
        ),
    };
    let mut body = envelope(meta, object, choice);
    body["usage"] = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens.saturating_add(completion_tokens),
    });
    body
}

/// One streamed chunk carrying token `index` of `total`; the last one carries the finish reason.
pub fn chunk(endpoint: Endpoint, meta: &Meta, token: &str, index: usize, total: usize) -> Value {
    let finish = if index + 1 == total {
        Value::from(FINISH_REASON)
    } else {
        Value::Null
    };
    let (object, choice) = match endpoint {
        Endpoint::Completions => (
            "text_completion",
            json!({"text": token, "index": 0, "logprobs": null, "finish_reason": finish}),
        ),
        Endpoint::ChatCompletions => {
            let delta = if index == 0 {
                json!({"role": "assistant", "content": token})
            } else {
                json!({"content": token})
            };
            (
                "chat.completion.chunk",
                json!({"index": 0, "delta": delta, "finish_reason": finish}),
            )
        }
    };
    envelope(meta, object, choice)
}

/// The fields every response and chunk carry around its one choice.
fn envelope(meta: &Meta, object: &str, choice: Value) -> Value {
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
    })
}

/// An OpenAI-style error body; `message` says what went wrong.
pub fn error_body(kind: &str, message: &str, status: u16) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": status}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            id: "cmpl-1".into(),
            created: 7,
            model: "m".into(),
        }
    }

    #[test]
    fn parses_completion_request_with_defaults() {
        let r = parse_request(
            Endpoint::Completions,
            br#"{"model":"x","prompt":"hi there"}"#,
        )
        .expect("valid");
        assert_eq!(
            r,
            CompletionRequest {
                prompt: "hi there".into(),
                max_tokens: 16,
                stream: false
            }
        );
        let r = parse_request(
            Endpoint::Completions,
            br#"{"prompt":["a","b"],"max_tokens":3,"stream":true}"#,
        )
        .expect("valid");
        assert_eq!(r.prompt, "a b");
        assert_eq!(r.max_tokens, 3);
        assert!(r.stream);
    }

    #[test]
    fn chat_prompt_is_last_message() {
        let body = br#"{"messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hello"}]}]}"#;
        let r = parse_request(Endpoint::ChatCompletions, body).expect("valid");
        assert_eq!(r.prompt, "hello");
        assert!(matches!(
            parse_request(Endpoint::ChatCompletions, br#"{"messages":[]}"#),
            Err(RequestError::NoMessages)
        ));
    }

    #[test]
    fn refuses_malformed_and_oversized() {
        assert!(matches!(
            parse_request(Endpoint::Completions, b"{not json"),
            Err(RequestError::Json(_))
        ));
        assert!(matches!(
            parse_request(Endpoint::Completions, br#"{"max_tokens":-1}"#),
            Err(RequestError::Json(_))
        ));
        assert!(matches!(
            parse_request(Endpoint::Completions, br#"{"max_tokens":100000}"#),
            Err(RequestError::TooManyTokens(100000))
        ));
    }

    #[test]
    fn completion_response_shape() {
        let tokens = vec!["a".to_owned(), " b".to_owned()];
        let v = response(Endpoint::Completions, &meta(), &tokens, 2);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "a b");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 4);
        let v = response(Endpoint::ChatCompletions, &meta(), &tokens, 2);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "a b");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    }

    #[test]
    fn chunk_finish_reason_only_on_last() {
        let first = chunk(Endpoint::ChatCompletions, &meta(), "a", 0, 2);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert!(first["choices"][0]["finish_reason"].is_null());
        let last = chunk(Endpoint::Completions, &meta(), " b", 1, 2);
        assert_eq!(last["choices"][0]["text"], " b");
        assert_eq!(last["choices"][0]["finish_reason"], "length");
    }
}
