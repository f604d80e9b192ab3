//! Answer tokens, chosen deterministically: echo the prompt's tokens in a loop, or draw words from
//! a fixed vocabulary with a PRNG keyed by the request's seed. Also decides when an answer stops
//! early ("stop"): at a simulated end-of-sequence drawn from a geometric length distribution, or
//! at one of the request's stop strings. Token `i` depends only on the request, never on
//! scheduling, so the same seed and request give the same answer under any load.

use crate::config::Mode;
use crate::tokenizer::{self, Token};

/// Words of the random mode, and of echo mode when the prompt has none.
const VOCABULARY: [&str; 32] = [
    "the",
    "mesh",
    "routes",
    "every",
    "token",
    "to",
    "its",
    "model",
    "a",
    "request",
    "waits",
    "in",
    "queue",
    "while",
    "batch",
    "runs",
    "cache",
    "blocks",
    "hold",
    "prefix",
    "and",
    "each",
    "step",
    "decodes",
    "one",
    "more",
    "for",
    "all",
    "sequences",
    "until",
    "they",
    "stop",
];

/// Where answer tokens come from.
#[derive(Debug, Clone)]
enum Source {
    Echo(Vec<Token>),
    Random(u64),
}

/// One answer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampled {
    /// Token id (what a KV block of the answer hashes).
    pub id: u64,
    /// Text to send: the token with its separating space, cut before a stop string.
    pub text: String,
    /// The answer ends with this token (end-of-sequence or stop string): finish_reason "stop".
    pub stop: bool,
}

/// What a request asked about stopping.
#[derive(Debug, Clone, Default)]
pub struct StopSpec {
    pub stop: Vec<String>,
    pub min_tokens: usize,
    pub ignore_eos: bool,
}

/// Chooses the tokens of one answer.
#[derive(Debug, Clone)]
pub struct Sampler {
    source: Source,
    /// Simulated end-of-sequence: the answer's natural length, if any.
    eos_at: Option<usize>,
    spec: StopSpec,
    /// Text produced so far (to find stop strings spanning tokens); at most max_tokens tokens.
    text: String,
}

/// A per-request seed from the server's `--seed`, the request's own `seed` and its prompt.
pub fn request_seed(server_seed: u64, request_seed: Option<u64>, prompt: &[u64]) -> u64 {
    let mut h = tokenizer::mix(server_seed ^ 0x5eed);
    h = tokenizer::mix(h ^ request_seed.unwrap_or(u64::MAX));
    for id in prompt {
        h = tokenizer::mix(h ^ id);
    }
    h
}

/// A uniform number in (0, 1] from `x`.
fn unit(x: u64) -> f64 {
    ((tokenizer::mix(x) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

impl Sampler {
    /// A sampler for a request: `echo` is the text echoed in echo mode (the prompt, or a chat's
    /// last message), `seed` from [`request_seed`], `mean_len` the mean natural length (0: none).
    pub fn new(mode: Mode, echo: &str, seed: u64, mean_len: f64, spec: StopSpec) -> Self {
        let source = match mode {
            Mode::Echo => {
                let tokens = tokenizer::tokenize(echo);
                if tokens.is_empty() {
                    Source::Echo(
                        VOCABULARY[..8]
                            .iter()
                            .map(|w| Token {
                                id: tokenizer::token_id(w),
                                text: (*w).to_owned(),
                            })
                            .collect(),
                    )
                } else {
                    Source::Echo(tokens)
                }
            }
            Mode::Random => Source::Random(seed),
        };
        let eos_at = (mean_len > 0.0 && !spec.ignore_eos).then(|| {
            // Geometric with mean `mean_len`: P(stop after each token) = 1 / mean_len.
            let p = (1.0 / mean_len).min(1.0);
            let u = unit(seed ^ 0xe05);
            let len = if p >= 1.0 {
                1.0
            } else {
                (u.ln() / (1.0 - p).ln()).ceil()
            };
            (len.max(1.0) as usize).max(spec.min_tokens)
        });
        Self {
            source,
            eos_at,
            spec,
            text: String::new(),
        }
    }

    /// Answer token `i` (0-based); call once per token, in order.
    pub fn next(&mut self, i: usize) -> Sampled {
        let (id, word) = match &self.source {
            Source::Echo(tokens) => {
                let t = &tokens[i % tokens.len()];
                (t.id, t.text.as_str())
            }
            Source::Random(seed) => {
                let w = VOCABULARY
                    [(tokenizer::mix(seed ^ i as u64) % VOCABULARY.len() as u64) as usize];
                (tokenizer::token_id(w), w)
            }
        };
        let mut text = if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        };
        let produced = i + 1;
        let mut stop = self.eos_at == Some(produced);
        if !self.spec.stop.is_empty() {
            let before = self.text.len();
            self.text.push_str(&text);
            if produced < self.spec.min_tokens {
                return Sampled { id, text, stop };
            }
            let longest = self.spec.stop.iter().map(String::len).max().unwrap_or(0);
            // Only a match that ends in the new text is new; start far enough back to catch one
            // that began in earlier tokens.
            let mut from = before.saturating_sub(longest.saturating_sub(1));
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            let found = self
                .spec
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| from + p))
                .min();
            if let Some(at) = found {
                // The stop string is not part of the answer (OpenAI semantics); what came before
                // it in earlier tokens was already sent.
                text = self.text[before.min(at)..at].to_owned();
                stop = true;
            }
        }
        Sampled { id, text, stop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &mut Sampler, n: usize) -> Vec<String> {
        (0..n).map(|i| s.next(i).text).collect()
    }

    #[test]
    fn echo_loops_over_prompt_words() {
        let mut s = Sampler::new(Mode::Echo, "hello big world", 1, 0.0, StopSpec::default());
        assert_eq!(
            texts(&mut s, 5),
            ["hello", " big", " world", " hello", " big"]
        );
        let mut s = Sampler::new(Mode::Echo, "   ", 1, 0.0, StopSpec::default());
        assert_eq!(texts(&mut s, 3), ["the", " mesh", " routes"]);
    }

    #[test]
    fn random_mode_follows_the_seed() {
        let a = texts(
            &mut Sampler::new(Mode::Random, "", 7, 0.0, StopSpec::default()),
            12,
        );
        let b = texts(
            &mut Sampler::new(Mode::Random, "", 7, 0.0, StopSpec::default()),
            12,
        );
        let c = texts(
            &mut Sampler::new(Mode::Random, "", 8, 0.0, StopSpec::default()),
            12,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn request_seed_depends_on_all_inputs() {
        let p = [1, 2, 3];
        assert_eq!(request_seed(1, None, &p), request_seed(1, None, &p));
        assert_ne!(request_seed(1, None, &p), request_seed(2, None, &p));
        assert_ne!(request_seed(1, None, &p), request_seed(1, Some(5), &p));
        assert_ne!(request_seed(1, None, &p), request_seed(1, None, &[1, 2]));
    }

    #[test]
    fn eos_lengths_are_seeded_with_the_requested_mean() {
        let lens: Vec<usize> = (0..2000u64)
            .map(|seed| {
                let mut s = Sampler::new(Mode::Echo, "a b", seed, 20.0, StopSpec::default());
                (0..10_000).find(|i| s.next(*i).stop).map_or(0, |i| i + 1)
            })
            .collect();
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        assert!((15.0..25.0).contains(&mean), "mean {mean}");
        assert!(lens.iter().all(|l| *l >= 1));
        let ignore = StopSpec {
            ignore_eos: true,
            ..StopSpec::default()
        };
        let mut s = Sampler::new(Mode::Echo, "a b", 3, 1.0, ignore);
        assert!((0..100).all(|i| !s.next(i).stop));
    }

    #[test]
    fn stop_strings_cut_the_answer() {
        let spec = StopSpec {
            stop: vec!["three".into()],
            ..StopSpec::default()
        };
        let mut s = Sampler::new(Mode::Echo, "one two three four", 1, 0.0, spec);
        assert_eq!(s.next(0).text, "one");
        assert_eq!(s.next(1).text, " two");
        let last = s.next(2);
        assert_eq!(last.text, " ");
        assert!(last.stop);
        // Spanning two tokens, and held until min_tokens.
        let spec = StopSpec {
            stop: vec!["o t".into()],
            min_tokens: 3,
            ..StopSpec::default()
        };
        let mut s = Sampler::new(Mode::Echo, "two two two", 1, 0.0, spec);
        assert!(!s.next(0).stop);
        assert!(!s.next(1).stop);
        assert!(s.next(2).stop);
    }
}
