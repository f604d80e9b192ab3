//! A deterministic, cheap tokenizer: a token is a whitespace-separated word (pieces of at most
//! `MAX_TOKEN_BYTES` for long words), so counts are stable across runs and machines and close
//! enough to a BPE tokenizer's (~1.3 tokens per English word) for scheduling purposes. A token's
//! id is a hash of its text, which is what the prefix cache hashes.

/// Longest token, in bytes: a long word (or a run of characters without spaces) is split so that
/// one huge "word" cannot pass for a one-token prompt.
pub const MAX_TOKEN_BYTES: usize = 16;

/// One token: its id and its text without the separating space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: u64,
    pub text: String,
}

/// FNV-1a, 64 bits: stable across runs and platforms (unlike std's randomly keyed hasher).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser: mixes `x` into a well-spread 64-bit value (the simulator's PRNG step).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The id of a token's text.
pub fn token_id(text: &str) -> u64 {
    fnv1a(text.as_bytes())
}

/// Tokens of `text`, in order.
pub fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let mut rest = word;
        while !rest.is_empty() {
            let mut end = rest.len().min(MAX_TOKEN_BYTES);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            if end == 0 {
                // A character longer than MAX_TOKEN_BYTES cannot exist (UTF-8 is at most 4
                // bytes), but never loop forever on it.
                end = rest.len();
            }
            let (piece, tail) = rest.split_at(end);
            out.push(Token {
                id: token_id(piece),
                text: piece.to_owned(),
            });
            rest = tail;
        }
    }
    out
}

/// Number of tokens of `text`.
pub fn count(text: &str) -> usize {
    tokenize(text).len()
}

/// The prompt a chat request is run on: each message as `<|role|> content`, in order, then the
/// generation marker `<|assistant|>`, like a chat template. A conversation that grows keeps its
/// earlier turns as a token prefix, which is what the prefix cache reuses.
pub fn chat_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (role, content) in messages {
        out.push_str("<|");
        out.push_str(role);
        out.push_str("|> ");
        out.push_str(content);
        out.push('\n');
    }
    out.push_str("<|assistant|>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_tokens_and_ids_are_stable() {
        let t = tokenize(" one  two\nthree ");
        let texts: Vec<&str> = t.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(t[0].id, token_id("one"));
        assert_eq!(tokenize("one")[0].id, t[0].id);
        assert_ne!(t[0].id, t[1].id);
        assert_eq!(count(""), 0);
        // Fixed value: ids must not change between builds, or cached prefixes would not match.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn long_words_split_on_char_boundaries() {
        let word = "é".repeat(20); // 40 bytes
        let t = tokenize(&word);
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|t| t.text.len() <= MAX_TOKEN_BYTES));
        assert_eq!(t.iter().map(|t| t.text.as_str()).collect::<String>(), word);
    }

    #[test]
    fn chat_template_keeps_turns_in_order() {
        let p = chat_prompt([("system", "be brief"), ("user", "hi")]);
        assert_eq!(p, "<|system|> be brief\n<|user|> hi\n<|assistant|>");
        assert_eq!(count(&p), 6);
        let longer = chat_prompt([("system", "be brief"), ("user", "hi"), ("user", "more")]);
        let (a, b) = (tokenize(&p), tokenize(&longer));
        assert_eq!(a[..5], b[..5], "earlier turns are a token prefix");
    }

    #[test]
    fn mix_spreads() {
        assert_ne!(mix(0), mix(1));
        assert_eq!(mix(7), mix(7));
    }
}
