//! Copies that let go of hyper's read buffers early. hyper's HTTP/1 client reads each upstream
//! response into an 8 KiB buffer and hands out its header values and body chunks as slices of it,
//! so anything still holding one slice (a response head or chunk waiting in a client connection's
//! send queue) keeps the whole 8 KiB alive, and the connection reads the next response into a fresh
//! buffer. Under many concurrent streams those pinned buffers were the largest item of the heap.
//! Copying the few bytes that are actually kept costs less than the buffers they would pin.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

/// Chunks up to this size are copied; a larger one already fills most of its buffer.
pub(crate) const SMALL_CHUNK: usize = 2048;

/// Re-points every header value at one fresh buffer holding just the values' bytes.
pub(crate) fn header_values(headers: &mut HeaderMap) {
    let len = headers.values().map(HeaderValue::len).sum();
    let mut all = BytesMut::with_capacity(len);
    headers
        .values()
        .for_each(|v| all.extend_from_slice(v.as_bytes()));
    let all = all.freeze();
    let mut at = 0;
    for v in headers.values_mut() {
        let end = at + v.len();
        // Every byte was valid in the original value, so this cannot fail; keep the original if
        // it somehow did.
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(all.slice(at..end)) {
            copy.set_sensitive(v.is_sensitive());
            *v = copy;
        }
        at = end;
    }
}

/// A copy of a small chunk; a large one is returned as it is.
pub(crate) fn chunk(data: Bytes) -> Bytes {
    if data.len() <= SMALL_CHUNK {
        Bytes::copy_from_slice(&data)
    } else {
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_stop_sharing_the_buffer_they_came_from() {
        let read_buf = Bytes::from(b"application/jsonv2 secret".to_vec());
        let mut h = HeaderMap::new();
        let value = |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(read_buf.slice(r));
        h.insert("content-type", value(0..16).unwrap());
        h.append("x-model-version", value(16..18).unwrap());
        h.append("x-model-version", value(18..18).unwrap());
        let mut secret = value(19..25).unwrap();
        secret.set_sensitive(true);
        h.insert("authorization", secret);
        assert!(!read_buf.is_unique());

        header_values(&mut h);

        assert_eq!(h["content-type"], "application/json");
        let versions: Vec<_> = h.get_all("x-model-version").iter().collect();
        assert_eq!(versions, ["v2", ""]);
        assert_eq!(h["authorization"], "secret");
        assert!(h["authorization"].is_sensitive());
        // No value refers to the original buffer any more: it is uniquely owned again.
        assert!(read_buf.is_unique());
    }

    #[test]
    fn small_chunks_are_copied_and_large_ones_kept() {
        let read_buf = Bytes::from(vec![7u8; 8192]);
        let small = chunk(read_buf.slice(0..SMALL_CHUNK));
        assert_eq!(small, read_buf.slice(0..SMALL_CHUNK));
        assert!(read_buf.is_unique(), "the small chunk is a copy");
        let large = chunk(read_buf.slice(0..SMALL_CHUNK + 1));
        assert_eq!(large.len(), SMALL_CHUNK + 1);
        assert!(
            !read_buf.is_unique(),
            "the large chunk still shares the buffer"
        );
    }
}
