//! One OpenAI-shaped response object ([`Event`]): a streamed chunk (`chat.completion.chunk`,
//! `text_completion`) or a whole completion. Read for what the token metrics need only: does
//! it carry output (content, reasoning or tool-call deltas, or completion text), its
//! `finish_reason`, its `usage`, its `model`. Text is looked at, never copied: a content field
//! is kept as its raw JSON, and a non-empty string is all that is asked of it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Event<'a> {
    #[serde(borrow, default)]
    pub(crate) model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    pub(crate) usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice<'a> {
    /// Streamed chat completions.
    #[serde(borrow, default)]
    delta: Option<Content<'a>>,
    /// Whole chat completions.
    #[serde(borrow, default)]
    message: Option<Content<'a>>,
    /// Completions (`/v1/completions`), streamed or whole.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    /// Reasoning models stream their thinking apart (vLLM, SGLang, llama.cpp).
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

/// Token counts as the model server reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Usage {
    #[serde(default)]
    pub(crate) prompt_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl Usage {
    /// Prompt tokens the engine found in its prefix cache.
    pub(crate) fn cached_tokens(&self) -> Option<u64> {
        self.prompt_tokens_details.and_then(|d| d.cached_tokens)
    }
}

/// Why the model stopped, as OpenAI-style servers say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Other,
}

impl Finish {
    fn of(reason: &str) -> Self {
        match reason {
            "stop" | "eos" => Finish::Stop,
            "length" => Finish::Length,
            "tool_calls" | "function_call" => Finish::ToolCalls,
            "content_filter" => Finish::ContentFilter,
            _ => Finish::Other,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
            Finish::Other => "other",
        }
    }
}

/// A raw JSON value that holds output: a non-empty string or a non-empty array.
fn holds_output(v: Option<&RawValue>) -> bool {
    v.is_some_and(|v| !matches!(v.get(), "\"\"" | "[]" | "null"))
}

impl Event<'_> {
    /// The object in `payload`, if it is one (anything else, `[DONE]` included, is not).
    pub(crate) fn parse(payload: &[u8]) -> Option<Event<'_>> {
        serde_json::from_slice(payload).ok()
    }

    /// Whether the event carries output: the mark of a token for the timing.
    pub(crate) fn has_output(&self) -> bool {
        self.choices.iter().any(|c| {
            holds_output(c.text)
                || [&c.delta, &c.message].into_iter().flatten().any(|d| {
                    holds_output(d.content)
                        || holds_output(d.reasoning_content)
                        || holds_output(d.tool_calls)
                })
        })
    }

    /// The first choice's finish reason, if it has one.
    pub(crate) fn finish(&self) -> Option<Finish> {
        self.choices
            .iter()
            .find_map(|c| c.finish_reason.as_deref().map(Finish::of))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunks_completions_and_the_usage_chunk() {
        let role = br#"{"id":"c","object":"chat.completion.chunk","model":"smollm2","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        let e = Event::parse(role).unwrap();
        assert!(!e.has_output(), "a role-only first chunk is not a token");
        assert_eq!(e.model.as_deref(), Some("smollm2"));
        let tok =
            br#"{"choices":[{"index":0,"delta":{"content":"Hel\"lo"},"finish_reason":null}]}"#;
        assert!(Event::parse(tok).unwrap().has_output());
        let tool =
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#;
        assert!(Event::parse(tool).unwrap().has_output());
        let think = br#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#;
        assert!(Event::parse(think).unwrap().has_output());
        let last = br#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        let e = Event::parse(last).unwrap();
        assert_eq!((e.has_output(), e.finish()), (false, Some(Finish::Length)));
        let usage = br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        let u = Event::parse(usage).unwrap().usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens()),
            (Some(12), Some(5), Some(8))
        );
        let text =
            br#"{"object":"text_completion","choices":[{"text":" world","finish_reason":"stop"}]}"#;
        let e = Event::parse(text).unwrap();
        assert_eq!((e.has_output(), e.finish()), (true, Some(Finish::Stop)));
        let whole = br#"{"choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let e = Event::parse(whole).unwrap();
        assert_eq!(
            (e.has_output(), e.finish()),
            (true, Some(Finish::ToolCalls))
        );
    }

    #[test]
    fn what_is_not_an_object_is_not_an_event() {
        for p in [
            &b"[DONE]"[..],
            b"",
            b"{\"choices\":3}",
            b"\xff",
            b"{\"usage\":{\"prompt_tokens\":-1}}",
        ] {
            assert!(Event::parse(p).is_none(), "{}", String::from_utf8_lossy(p));
        }
        let e = Event::parse(b"{\"choices\":[{\"delta\":{\"content\":null}}]}").unwrap();
        assert!(!e.has_output());
    }
}
