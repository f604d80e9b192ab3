//! Server-sent events: the `data:` framing and a channel-backed response body, so each event is
//! handed to hyper (and flushed to the socket) the moment it is produced, never buffered whole.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

/// The final event of an OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// One `data:` event. JSON from serde_json has no raw newlines, so a single `data:` line suffices.
pub fn event(json: &serde_json::Value) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A response body fed by a channel: ends when every sender is dropped.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it; `capacity` events may wait unsent.
    pub fn new(capacity: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, Self { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn frames_one_data_line_per_event() {
        let e = event(&serde_json::json!({"text": "a\nb"}));
        assert_eq!(&e[..], b"data: {\"text\":\"a\\nb\"}\n\n");
        assert_eq!(DONE, b"data: [DONE]\n\n");
    }

    #[tokio::test]
    async fn channel_body_yields_frames_in_order_then_ends() {
        let (tx, mut body) = ChannelBody::new(4);
        tx.send(Bytes::from_static(b"one")).await.expect("open");
        tx.send(Bytes::from_static(b"two")).await.expect("open");
        drop(tx);
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("infallible");
            got.push(frame.into_data().expect("data frame"));
        }
        assert_eq!(
            got,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
    }
}
