//! Token metrics of OpenAI-shaped responses, read as they are relayed ([`TokenMeter`]): time to
//! the first event that carries output (not to the response head, which an SSE server sends
//! before any token), time per output token after it, the token counts of `usage` (or, without
//! it, the events that carried output, said so), the finish reason, and whether the stream was
//! cut or abandoned by its client. The meter sees each chunk after it was handed on: it never
//! holds a chunk back, and a stream it cannot read is relayed all the same.
//!
//! Below `request` (which keeps a meter in the request's guard and records its [`Tally`] when
//! the stream ends), above `metrics`.

pub(crate) mod event;
pub(crate) mod sse;

use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use self::event::{Event, Finish, Usage};
use self::sse::DataLines;

/// Events read per stream; past them the stream is relayed unread (a runaway stream costs no
/// more than this).
pub(crate) const MAX_EVENTS: u32 = 1 << 20;

/// A whole JSON response is read for its `usage` up to this size.
const MAX_JSON: usize = 1 << 20;

/// A model name longer than this is not a label.
const MAX_MODEL: usize = 128;

/// Whether a request path is an OpenAI-style generation (`/v1/completions`,
/// `/v1/chat/completions`): the responses metered.
pub(crate) fn is_generation(path: &str) -> bool {
    path.ends_with("/completions")
}

/// How a metered response's stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Read to its end.
    Complete,
    /// Cut after its head by an upstream failure or a timeout.
    Cut,
    /// Its client went away first.
    Aborted,
}

/// Where an output token count comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counted {
    /// The model server's `usage`.
    Usage,
    /// The events that carried output (no `usage` in the response: the client did not ask
    /// for `stream_options.include_usage`); a server may put several tokens in one event.
    Events,
}

impl Counted {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Counted::Usage => "usage",
            Counted::Events => "events",
        }
    }
}

/// What the meter found in one response.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tally {
    /// The `model` the server answered with.
    pub(crate) model: Option<String>,
    /// From the request's start to the first event with output (streams only).
    pub(crate) ttft: Option<Duration>,
    /// Between the first and the last output token, per token after the first (streams
    /// with at least two tokens).
    pub(crate) tpot: Option<Duration>,
    pub(crate) input: Option<u64>,
    pub(crate) output: Option<(u64, Counted)>,
    pub(crate) cached: Option<u64>,
    /// From the request's start to the stream's end.
    pub(crate) duration: Duration,
    /// The finish reason's label, or `aborted`, `cut`, or `unfinished` (a complete stream
    /// without a finish reason).
    pub(crate) outcome: &'static str,
}

/// Every `outcome` a tally can carry: the finish reasons' labels, then how a stream may end
/// without one. Metrics make one series of each per model.
pub(crate) const OUTCOMES: [&str; 8] = [
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "other",
    "aborted",
    "cut",
    "unfinished",
];

/// The response's form, and what of it is kept while it streams.
#[derive(Debug)]
enum Form {
    Sse(DataLines),
    /// A whole JSON response, read at its end; `None` once over [`MAX_JSON`].
    Json(Option<Vec<u8>>),
}

/// A response being metered.
#[derive(Debug)]
pub(crate) struct TokenMeter {
    form: Form,
    seen: Seen,
}

/// What the events said so far.
#[derive(Debug)]
struct Seen {
    start: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Events that carried output.
    outputs: u64,
    events: u32,
    usage: Option<Usage>,
    finish: Option<Finish>,
    model: Option<String>,
}

impl TokenMeter {
    /// A meter for a response of this content type to a request that started at `start`:
    /// server-sent events or JSON; any other response is not metered.
    pub(crate) fn for_response(content_type: Option<&HeaderValue>, start: Instant) -> Option<Self> {
        let ct = content_type?.to_str().ok()?;
        let essence = ct.split(';').next()?.trim();
        let form = if essence.eq_ignore_ascii_case("text/event-stream") {
            Form::Sse(DataLines::default())
        } else if essence.eq_ignore_ascii_case("application/json") {
            Form::Json(Some(Vec::new()))
        } else {
            return None;
        };
        Some(Self {
            form,
            seen: Seen {
                start,
                first: None,
                last: None,
                outputs: 0,
                events: 0,
                usage: None,
                finish: None,
                model: None,
            },
        })
    }

    /// The next chunk of the body, relayed at `now`.
    pub(crate) fn chunk(&mut self, data: &[u8], now: Instant) {
        let seen = &mut self.seen;
        match &mut self.form {
            Form::Sse(lines) => {
                if seen.events < MAX_EVENTS {
                    lines.feed(data, |payload| seen.event(payload, Some(now)));
                }
            }
            Form::Json(buf) => {
                if let Some(b) = buf {
                    if b.len() + data.len() > MAX_JSON {
                        *buf = None;
                    } else {
                        b.extend_from_slice(data);
                    }
                }
            }
        }
    }

    /// What the response said, once its stream ended that way at `now`.
    pub(crate) fn tally(mut self, ending: Ending, now: Instant) -> Tally {
        if let (Form::Json(Some(body)), Ending::Complete) = (&self.form, ending) {
            self.seen.event(body, None);
        }
        let s = self.seen;
        let counted = match (s.usage.and_then(|u| u.completion_tokens), &self.form) {
            (Some(n), _) => Some((n, Counted::Usage)),
            (None, Form::Sse(_)) if s.events > 0 => Some((s.outputs, Counted::Events)),
            _ => None,
        };
        let tpot = match (s.first, s.last, counted) {
            (Some(f), Some(l), Some((n, _))) if n >= 2 && l > f => {
                Some(l.duration_since(f).div_f64((n - 1) as f64))
            }
            _ => None,
        };
        Tally {
            model: s.model,
            ttft: s.first.map(|f| f.saturating_duration_since(s.start)),
            tpot,
            input: s.usage.and_then(|u| u.prompt_tokens),
            output: counted,
            cached: s.usage.and_then(|u| u.cached_tokens()),
            duration: now.saturating_duration_since(s.start),
            outcome: match ending {
                Ending::Cut => "cut",
                Ending::Aborted => "aborted",
                Ending::Complete => s.finish.map_or("unfinished", Finish::label),
            },
        }
    }
}

impl Seen {
    /// One event's payload; `at` is when it went by (`None` for a whole JSON response, which
    /// has no token timing).
    fn event(&mut self, payload: &[u8], at: Option<Instant>) {
        self.events = self.events.saturating_add(1);
        let Some(e) = Event::parse(payload) else {
            return;
        };
        if self.model.is_none()
            && let Some(m) = e.model.as_deref().filter(|m| m.len() <= MAX_MODEL)
        {
            self.model = Some(m.to_owned());
        }
        if e.has_output() {
            self.outputs += 1;
            if let Some(now) = at {
                self.first.get_or_insert(now);
                self.last = Some(now);
            }
        }
        if let Some(f) = e.finish() {
            self.finish = Some(f);
        }
        if e.usage.is_some() {
            self.usage = e.usage;
        }
    }
}

#[cfg(test)]
mod tests;
