//! The prompt of an OpenAI-shaped request as a chain of block hashes ([`Prompt`]), for prefix
//! affinity: block `i`'s hash covers every byte before it, so two prompts share their first `k`
//! hashes exactly when they share their first `k` blocks, the way an engine's prefix cache
//! shares KV blocks.
//!
//! The text hashed is what the engine's cache depends on: the `model` (another model or LoRA
//! adapter caches apart), then each message's role and content in order (`messages`), or the
//! `prompt`. It is read from the parsed JSON, not the raw bytes, so two clients that format the
//! same request differently still agree. The body itself is never changed.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::load::adapters::model_key;

/// Bodies up to this size are read for their prompt; larger ones are routed without affinity.
pub(crate) const MAX_BODY: usize = 256 << 10;

/// Bytes of prompt text per block: about 64 tokens, a few of an engine's KV blocks.
pub(crate) const BLOCK: usize = 256;

/// A request's prompt as chained block hashes (the last block may be partial).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Prompt {
    pub(crate) blocks: Vec<u64>,
    /// The key of the body's `model` (`adapters::model_key`), for LoRA-adapter affinity.
    pub(crate) model: Option<u64>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
}

/// The text of a `content` or a `prompt`, as its pieces: a string, or the array forms
/// (`[{"type":"text","text":"..."}]`, `["..."]`); anything else has none. Read by visitors
/// rather than as an untagged enum, which would first copy the whole value into a buffer to try
/// each form in turn: this runs on every request of an InferenceAware service.
struct Text<'a>(Vec<Cow<'a, str>>);

/// One element of the array form: its text, if it has one.
struct Part<'a>(Option<Cow<'a, str>>);

impl Text<'_> {
    fn feed(&self, chain: &mut Chain) {
        for piece in &self.0 {
            chain.feed(piece.as_bytes());
        }
    }
}

/// What both visitors do with a value that is not text: skip it.
macro_rules! ignore_other_values {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of text parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text(vec![Cow::Borrowed(s)]))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text(vec![Cow::Owned(s.to_owned())]))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Text(vec![Cow::Owned(s)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut pieces = Vec::new();
                while let Some(Part(p)) = seq.next_element::<Part<'a>>()? {
                    pieces.extend(p);
                }
                Ok(Text(pieces))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(Vec::new()))
            }
            ignore_other_values!(Text(Vec::new()));
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Part<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Part<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a text part")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Part(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Part(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Part(Some(Cow::Owned(s))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Part(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut text = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "text" && text.is_none() {
                        text = map.next_value::<Part<'a>>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Part(text))
            }
            ignore_other_values!(Part(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Chained block hashing over a stream of bytes.
struct Chain {
    block: [u8; BLOCK],
    len: usize,
    prev: u64,
    blocks: Vec<u64>,
}

impl Chain {
    fn new(seed: u64) -> Self {
        Self {
            block: [0; BLOCK],
            len: 0,
            prev: seed,
            blocks: Vec::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = (BLOCK - self.len).min(bytes.len());
            self.block[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == BLOCK {
                self.seal();
            }
        }
    }

    fn seal(&mut self) {
        self.prev = xxh3_64_with_seed(&self.block[..self.len], self.prev);
        self.blocks.push(self.prev);
        self.len = 0;
    }

    fn finish(mut self) -> Vec<u64> {
        if self.len > 0 {
            self.seal();
        }
        self.blocks
    }
}

/// The `model` of a JSON request body, and where its value lies in the body, so a variant's
/// `modelRewrite` replaces those bytes alone and leaves the rest as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Model {
    pub(crate) name: String,
    /// The quoted JSON string in the body.
    span: Range<usize>,
}

#[derive(Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
}

impl Model {
    /// The body's `model`, if it is a JSON object of at most [`MAX_BODY`] bytes with a string
    /// `model`.
    pub(crate) fn of(body: &[u8]) -> Option<Model> {
        if body.len() > MAX_BODY {
            return None;
        }
        let raw = serde_json::from_slice::<ModelOnly<'_>>(body).ok()?.model?;
        let name: String = serde_json::from_str(raw.get()).ok()?;
        // The raw value borrows from `body`: its offset there is the distance of the pointers.
        let start = (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
        let span = start..start + raw.get().len();
        (body.get(span.clone())? == raw.get().as_bytes()).then_some(Model { name, span })
    }

    /// `body` with its model set to `to`.
    pub(crate) fn rewrite(&self, body: &[u8], to: &str) -> Bytes {
        let quoted = serde_json::to_string(to).unwrap_or_else(|_| "\"\"".into());
        let mut out = BytesMut::with_capacity(body.len() + quoted.len());
        out.put_slice(&body[..self.span.start]);
        out.put_slice(quoted.as_bytes());
        out.put_slice(&body[self.span.end..]);
        out.freeze()
    }
}

impl Prompt {
    /// The prompt of `body`, if it is a JSON object with `messages` or `prompt` and at most
    /// [`MAX_BODY`] bytes; anything else has none (and is routed without affinity).
    pub(crate) fn of(body: &[u8]) -> Option<Prompt> {
        if body.len() > MAX_BODY {
            return None;
        }
        let parsed: Body<'_> = serde_json::from_slice(body).ok()?;
        let model = parsed.model.as_deref().map(model_key);
        // The model seeds the chain: another model (or adapter) caches apart.
        let seed = model.unwrap_or_else(|| model_key(""));
        let mut chain = Chain::new(seed);
        match (&parsed.messages, &parsed.prompt) {
            (Some(messages), _) => {
                for m in messages {
                    chain.feed(m.role.as_deref().unwrap_or("").as_bytes());
                    // Separators no text contains, so "ab"+"c" and "a"+"bc" differ.
                    chain.feed(&[0x1f]);
                    if let Some(c) = &m.content {
                        c.feed(&mut chain);
                    }
                    chain.feed(&[0x1e]);
                }
            }
            (None, Some(p)) => p.feed(&mut chain),
            (None, None) => return None,
        }
        let blocks = chain.finish();
        (!blocks.is_empty()).then_some(Prompt { blocks, model })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chat(system: &str, user: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "model": "m",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "stream": true,
        }))
        .unwrap()
    }

    #[test]
    fn prompts_sharing_a_prefix_share_its_whole_blocks() {
        let system = "Answer briefly. ".repeat(100);
        let a = Prompt::of(&chat(&system, "What is Rust?")).unwrap();
        let b = Prompt::of(&chat(&system, "Who wrote Dune?")).unwrap();
        let shared = a
            .blocks
            .iter()
            .zip(&b.blocks)
            .take_while(|(x, y)| x == y)
            .count();
        // role, separator, content, end, then the user's role and separator are alike.
        let alike = "system".len() + 1 + system.len() + 1 + "user".len() + 1;
        assert_eq!(shared, alike / BLOCK);
        assert_ne!(a.blocks.last(), b.blocks.last());
        // The same request formatted otherwise has the same prompt.
        let spaced = format!(
            r#"{{ "stream": true, "messages": [ {{"content": {:?}, "role": "system"}}, {{"role":"user","content":"What is Rust?"}} ], "model": "m" }}"#,
            system
        );
        assert_eq!(Prompt::of(spaced.as_bytes()).unwrap(), a);
    }

    #[test]
    fn the_model_and_the_content_forms_count() {
        let parts = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
        let plain = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let other = br#"{"model":"lora-a","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(Prompt::of(parts), Prompt::of(plain));
        assert_ne!(Prompt::of(plain), Prompt::of(other));
        let completion = br#"{"model":"m","prompt":"Once upon a time"}"#;
        assert_eq!(Prompt::of(completion).unwrap().blocks.len(), 1);
    }

    #[test]
    fn bodies_without_a_prompt_have_none() {
        for body in [
            &b"not json"[..],
            b"[1,2,3]",
            b"{}",
            br#"{"input":"embeddings have no messages"}"#,
            br#"{"messages":"#,
        ] {
            assert_eq!(Prompt::of(body), None, "{}", String::from_utf8_lossy(body));
        }
        let big = chat(&"x".repeat(MAX_BODY), "q");
        assert_eq!(Prompt::of(&big), None, "over the size bound");
    }

    #[test]
    fn a_rewrite_changes_the_model_and_nothing_else() {
        let body = br#"{ "messages": [{"role":"user","content":"a \"model\": x"}],  "model" : "base", "n": 1}"#;
        let m = Model::of(body).unwrap();
        assert_eq!(m.name, "base");
        let out = m.rewrite(body, "sql-lora");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "messages": [{"role":"user","content":"a \"model\": x"}],  "model" : "sql-lora", "n": 1}"#
        );
        let escaped = br#"{"model":"caf\u00e9"}"#;
        assert_eq!(Model::of(escaped).unwrap().name, "café");
        assert_eq!(
            &Model::of(escaped).unwrap().rewrite(escaped, "a\"b")[..],
            br#"{"model":"a\"b"}"#
        );
        for none in [&b"{}"[..], br#"{"model":7}"#, b"nope", br#"{"model":"#] {
            assert_eq!(Model::of(none), None);
        }
    }

    proptest! {
        #[test]
        fn a_rewritten_body_is_the_same_json_with_the_new_model(
            model in "[ -~]{0,20}", to in "[ -~]{0,20}", pad in " {0,3}"
        ) {
            let body = format!(r#"{{"stream":true,{pad}"model":{pad}{},"x":[1,{{"model":"inner"}}]}}"#,
                serde_json::to_string(&model).unwrap());
            let m = Model::of(body.as_bytes()).unwrap();
            prop_assert_eq!(&m.name, &model);
            let out: serde_json::Value = serde_json::from_slice(&m.rewrite(body.as_bytes(), &to)).unwrap();
            let mut want: serde_json::Value = serde_json::from_str(&body).unwrap();
            want["model"] = to.clone().into();
            prop_assert_eq!(out, want);
        }

        #[test]
        fn any_body_is_read_without_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Prompt::of(&body);
        }

        #[test]
        fn a_longer_conversation_extends_the_chain(turns in proptest::collection::vec("[a-z ]{0,400}", 1..6)) {
            let messages: Vec<_> = turns.iter().map(|t| serde_json::json!({"role":"user","content":t})).collect();
            let body = |n: usize| serde_json::to_vec(&serde_json::json!({"messages": &messages[..n]})).unwrap();
            let full = Prompt::of(&body(messages.len())).unwrap();
            let first = Prompt::of(&body(1)).unwrap();
            // Every whole block of the first turn is a block of the longer prompt too.
            let whole = first.blocks.len() - 1;
            prop_assert_eq!(&full.blocks[..whole], &first.blocks[..whole]);
        }
    }
}
