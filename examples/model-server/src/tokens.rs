//! Deterministic "generation": the answer echoes the prompt's words in a loop, so the same prompt
//! always gives the same tokens and tests can predict them without any model weights.

/// Words used when the prompt has none.
const VOCABULARY: [&str; 8] = [
    "the", "mesh", "routes", "every", "token", "to", "its", "model",
];

/// Most tokens one request may ask for; larger `max_tokens` are refused.
pub const MAX_TOKENS_LIMIT: u32 = 4096;

/// The tokens answering `prompt`, exactly `max_tokens` of them. The first token has no leading
/// space, the others start with one, so concatenating them gives readable text.
pub fn generate(prompt: &str, max_tokens: u32) -> Vec<String> {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let source: &[&str] = if words.is_empty() {
        &VOCABULARY
    } else {
        &words
    };
    source
        .iter()
        .cycle()
        .take(max_tokens as usize)
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                (*w).to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// Token count of a prompt, as reported in `usage.prompt_tokens` (whitespace-separated words).
pub fn count(prompt: &str) -> u32 {
    u32::try_from(prompt.split_whitespace().count()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_prompt_words_cyclically() {
        assert_eq!(
            generate("hello big world", 5),
            vec!["hello", " big", " world", " hello", " big"]
        );
    }

    #[test]
    fn same_prompt_same_tokens() {
        assert_eq!(generate("a b c", 16), generate("a b c", 16));
        assert_ne!(generate("a b c", 4), generate("x y z", 4));
    }

    #[test]
    fn empty_prompt_uses_vocabulary() {
        let t = generate("   ", 3);
        assert_eq!(t, vec!["the", " mesh", " routes"]);
    }

    #[test]
    fn zero_tokens_is_empty() {
        assert!(generate("hello", 0).is_empty());
    }

    #[test]
    fn counts_words() {
        assert_eq!(count(""), 0);
        assert_eq!(count(" one  two\nthree "), 3);
    }
}
