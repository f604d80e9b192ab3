//! OpenAI-shaped request parsing and response/chunk/error bodies for `/v1/completions` and
//! `/v1/chat/completions`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::tokenizer;

/// Which OpenAI endpoint a request targets; the shapes differ slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

/// Most stop strings per request (OpenAI's limit).
const MAX_STOP: usize = 4;
/// Longest stop string, in bytes (bounds the search window).
const MAX_STOP_BYTES: usize = 256;

/// What the server needs from a completion request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompletionRequest {
    /// The requested model (base or LoRA adapter); absent means the base model.
    pub model: Option<String>,
    /// The text the engine runs on (for chat: the messages through the chat template).
    pub prompt: String,
    /// What echo mode repeats: the prompt, or a chat's last message.
    pub echo: String,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage and no choices.
    pub include_usage: bool,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub ignore_eos: bool,
    pub min_tokens: u32,
}

/// Why a request body was refused (answered with 400 and this text as reason).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request body is not valid JSON for this endpoint: {0}")]
    Json(#[from] serde_json::Error),
    #[error("chat request needs a non-empty \"messages\" array")]
    NoMessages,
    #[error(
        "\"stop\" takes a string or at most {MAX_STOP} strings of at most {MAX_STOP_BYTES} bytes"
    )]
    Stop,
}

impl RequestError {
    /// The request field at fault (OpenAI's `param`).
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::Json(_) => None,
            Self::NoMessages => Some("messages"),
            Self::Stop => Some("stop"),
        }
    }
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    seed: Option<serde_json::Number>,
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    min_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    role: Option<String>,
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

fn stop_of(value: Option<&Value>) -> Result<Vec<String>, RequestError> {
    let stop = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(RequestError::Stop))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(RequestError::Stop),
    };
    if stop.len() > MAX_STOP || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(RequestError::Stop);
    }
    Ok(stop)
}

/// Parses a request body for `endpoint`.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<CompletionRequest, RequestError> {
    let raw: RawRequest = serde_json::from_slice(body)?;
    let (prompt, echo) = match endpoint {
        Endpoint::Completions => {
            let p = raw.prompt.as_ref().map(text_of).unwrap_or_default();
            (p.clone(), p)
        }
        Endpoint::ChatCompletions => {
            let messages = raw.messages.ok_or(RequestError::NoMessages)?;
            if messages.is_empty() {
                return Err(RequestError::NoMessages);
            }
            let texts: Vec<(String, String)> = messages
                .iter()
                .map(|m| {
                    (
                        m.role.clone().unwrap_or_else(|| "user".to_owned()),
                        m.content.as_ref().map(text_of).unwrap_or_default(),
                    )
                })
                .collect();
            let prompt =
                tokenizer::chat_prompt(texts.iter().map(|(r, c)| (r.as_str(), c.as_str())));
            let last = texts.last().map(|(_, c)| c.clone()).unwrap_or_default();
            (prompt, last)
        }
    };
    let seed = raw
        .seed
        .as_ref()
        .and_then(|n| n.as_u64().or_else(|| n.as_i64().map(|v| v as u64)));
    Ok(CompletionRequest {
        model: raw.model,
        prompt,
        echo,
        max_tokens: raw.max_tokens.or(raw.max_completion_tokens),
        stream: raw.stream.unwrap_or(false),
        include_usage: raw
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        stop: stop_of(raw.stop.as_ref())?,
        seed,
        ignore_eos: raw.ignore_eos.unwrap_or(false),
        min_tokens: raw.min_tokens.unwrap_or(0),
    })
}

/// Identity shared by a response and all its chunks.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// Token counts of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// The full (non-streaming) response body.
pub fn response(endpoint: Endpoint, meta: &Meta, text: &str, finish: &str, usage: Usage) -> Value {
    let (object, choice) = match endpoint {
        Endpoint::Completions => (
            "text_completion",
            json!({"text": text, "index": 0, "logprobs": null, "finish_reason": finish}),
        ),
        Endpoint::ChatCompletions => (
            "chat.completion",
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }),
        ),
    };
    let mut body = envelope(meta, object, vec![choice]);
    body["usage"] = usage.to_json();
    body
}

fn chunk_object(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Completions => "text_completion",
        Endpoint::ChatCompletions => "chat.completion.chunk",
    }
}

/// One streamed chunk carrying `text`; `first` adds the chat role, `finish` the finish reason.
/// With `include_usage`, `"usage": null` as OpenAI sends on every chunk but the usage one.
pub fn chunk(
    endpoint: Endpoint,
    meta: &Meta,
    text: &str,
    first: bool,
    finish: Option<&str>,
    include_usage: bool,
) -> Value {
    let finish = finish.map_or(Value::Null, Value::from);
    let choice = match endpoint {
        Endpoint::Completions => {
            json!({"text": text, "index": 0, "logprobs": null, "finish_reason": finish})
        }
        Endpoint::ChatCompletions => {
            let delta = if first {
                json!({"role": "assistant", "content": text})
            } else {
                json!({"content": text})
            };
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        }
    };
    let mut body = envelope(meta, chunk_object(endpoint), vec![choice]);
    if include_usage {
        body["usage"] = Value::Null;
    }
    body
}

/// The last chunk of a stream with `include_usage`: no choices, the usage.
pub fn usage_chunk(endpoint: Endpoint, meta: &Meta, usage: Usage) -> Value {
    let mut body = envelope(meta, chunk_object(endpoint), Vec::new());
    body["usage"] = usage.to_json();
    body
}

/// The fields every response and chunk carry around its choices.
fn envelope(meta: &Meta, object: &str, choices: Vec<Value>) -> Value {
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    })
}

/// An OpenAI-style error body; `message` says what went wrong, `param` which field.
pub fn error_body(kind: &str, message: &str, param: Option<&str>, status: u16) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": status}})
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
        assert_eq!(r.model.as_deref(), Some("x"));
        assert_eq!(r.prompt, "hi there");
        assert_eq!(r.echo, "hi there");
        assert_eq!(r.max_tokens, None);
        assert!(!r.stream && !r.include_usage);
        let r = parse_request(
            Endpoint::Completions,
            br#"{"prompt":["a","b"],"max_tokens":3,"stream":true,
                "stream_options":{"include_usage":true},"stop":"b","seed":-1,"ignore_eos":true,"min_tokens":2}"#,
        )
        .expect("valid");
        assert_eq!(r.prompt, "a b");
        assert_eq!(r.max_tokens, Some(3));
        assert!(r.stream && r.include_usage && r.ignore_eos);
        assert_eq!(r.stop, ["b"]);
        assert_eq!(r.seed, Some(u64::MAX));
        assert_eq!(r.min_tokens, 2);
    }

    #[test]
    fn chat_prompt_is_every_message_through_the_template() {
        let body = br#"{"messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hello"}]}],"max_completion_tokens":4}"#;
        let r = parse_request(Endpoint::ChatCompletions, body).expect("valid");
        assert_eq!(
            r.prompt,
            "<|system|> be brief\n<|user|> hello\n<|assistant|>"
        );
        assert_eq!(r.echo, "hello");
        assert_eq!(r.max_tokens, Some(4));
        assert!(matches!(
            parse_request(Endpoint::ChatCompletions, br#"{"messages":[]}"#),
            Err(RequestError::NoMessages)
        ));
    }

    #[test]
    fn refuses_malformed() {
        assert!(matches!(
            parse_request(Endpoint::Completions, b"{not json"),
            Err(RequestError::Json(_))
        ));
        assert!(matches!(
            parse_request(Endpoint::Completions, br#"{"max_tokens":-1}"#),
            Err(RequestError::Json(_))
        ));
        let e = parse_request(Endpoint::Completions, br#"{"stop":["a","b","c","d","e"]}"#)
            .expect_err("too many stops");
        assert_eq!(e.param(), Some("stop"));
    }

    #[test]
    fn completion_response_shape() {
        let usage = Usage {
            prompt_tokens: 2,
            completion_tokens: 2,
            cached_tokens: 1,
        };
        let v = response(Endpoint::Completions, &meta(), "a b", "length", usage);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "a b");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 4);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        let v = response(Endpoint::ChatCompletions, &meta(), "a b", "stop", usage);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "a b");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    }

    #[test]
    fn chunks_and_usage_chunk() {
        let first = chunk(Endpoint::ChatCompletions, &meta(), "a", true, None, false);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert!(first["choices"][0]["finish_reason"].is_null());
        assert!(first.get("usage").is_none());
        let last = chunk(
            Endpoint::Completions,
            &meta(),
            " b",
            false,
            Some("length"),
            true,
        );
        assert_eq!(last["choices"][0]["text"], " b");
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert!(last["usage"].is_null());
        let u = usage_chunk(Endpoint::ChatCompletions, &meta(), Usage::default());
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["completion_tokens"], 0);
        assert_eq!(u["object"], "chat.completion.chunk");
    }

    #[test]
    fn error_shape() {
        let e = error_body("invalid_request_error", "bad", Some("max_tokens"), 400);
        assert_eq!(
            e,
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "max_tokens", "code": 400}})
        );
    }
}
