//! Server-sent events split into `data:` payloads as the bytes go by ([`DataLines`]): a chunk
//! may end mid-line, so the unfinished line is kept until its end arrives. Only what is needed
//! to read OpenAI-style streams: each `data:` line is one payload (those servers write one JSON
//! object per line); comments, `event:`, `id:` and `retry:` lines are skipped.
//!
//! The stream is the model server's, so it is bounded: a line longer than [`MAX_LINE`] is not
//! kept (skipped to its end), and the meter stops reading a stream after
//! [`super::MAX_EVENTS`] events.

/// Longest line kept across chunks; a longer one is skipped (its event is not read).
pub(crate) const MAX_LINE: usize = 256 << 10;

#[derive(Debug, Default)]
pub(crate) struct DataLines {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The current line is over [`MAX_LINE`]: drop bytes until its end.
    skipping: bool,
}

impl DataLines {
    /// Feeds the next bytes of the stream; `each` gets the payload of every `data:` line that
    /// ends in them.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(&[u8])) {
        while let Some(nl) = memchr::memchr(b'\n', bytes) {
            let (line, rest) = (&bytes[..nl], &bytes[nl + 1..]);
            bytes = rest;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.partial.is_empty() {
                if let Some(d) = data_of(line) {
                    each(d);
                }
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                if whole.len() + line.len() <= MAX_LINE {
                    whole.extend_from_slice(line);
                    if let Some(d) = data_of(&whole) {
                        each(d);
                    }
                }
                whole.clear();
                // Keep the allocation for the next split line.
                self.partial = whole;
            }
        }
        if self.skipping {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }
}

/// The payload of a `data:` line (one space after the colon dropped, `\r` of CRLF too).
fn data_of(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let data = line.strip_prefix(b"data:")?;
    Some(data.strip_prefix(b" ").unwrap_or(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(chunks: &[&[u8]]) -> Vec<String> {
        let mut d = DataLines::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |p| out.push(String::from_utf8_lossy(p).into_owned()));
        }
        out
    }

    #[test]
    fn payloads_of_data_lines_only_across_chunk_boundaries() {
        let stream: &[&[u8]] = &[
            b": keep-alive\n\nevent: message\ndata: {\"a\"",
            b":1}\r\n\r\ndata:{\"b\":2}\n\nid: 3\nretry: 10\nda",
            b"ta: [DONE]\n\ndata: unterminated",
        ];
        assert_eq!(all(stream), ["{\"a\":1}", "{\"b\":2}", "[DONE]"]);
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let long = vec![b'x'; MAX_LINE + 10];
        let mut first = b"data: ".to_vec();
        first.extend_from_slice(&long[..MAX_LINE / 2]);
        let got = all(&[&first, &long[MAX_LINE / 2..], b"\ndata: ok\n"]);
        assert_eq!(got, ["ok"]);
    }

    proptest! {
        /// However the stream is cut into chunks, the same payloads come out.
        #[test]
        fn chunking_does_not_change_the_payloads(
            events in proptest::collection::vec("[a-z{}\":, ]{0,40}", 0..20),
            cuts in proptest::collection::vec(0usize..2000, 0..10),
        ) {
            let text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[at..c]);
                at = c;
            }
            prop_assert_eq!(all(&chunks), events);
        }
    }
}
