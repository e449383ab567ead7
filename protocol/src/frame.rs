//! Framing of tagged messages: a 1-byte tag, then a 4-byte big-endian length that
//! counts itself but not the tag, then the body.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes in a frame header: the tag and the length word.
pub const HEADER_LEN: usize = 5;

/// Default cap on one message (tag excluded), the same 1 GiB PostgreSQL allows for
/// a single allocation; configurable because a proxy may want to be stricter.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 1 << 30;

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type byte.
    pub tag: u8,
    /// Body length in bytes (the declared length minus the 4 bytes of the length word).
    pub body_len: usize,
}

impl FrameHeader {
    /// The whole frame's size on the wire, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// A frame whose declared length cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length word is below its own size, which no valid message has.
    #[error("invalid message length {len} for message type {tag:?}: a length counts its own 4 bytes")]
    TooShort {
        /// The message's tag, as a character where printable.
        tag: char,
        /// The declared length.
        len: u32,
    },
    /// The length exceeds the configured maximum message size.
    #[error("message of type {tag:?} declares {len} bytes, more than the maximum of {max} (raise max_message_bytes if this is legitimate)")]
    TooLong {
        /// The message's tag.
        tag: char,
        /// The declared length.
        len: u32,
        /// The configured maximum.
        max: usize,
    },
}

/// Reads and checks the header at the start of `buf`; `Ok(None)` until 5 bytes are
/// there. The length is validated here, before any caller sizes a buffer from it.
pub fn parse_header(buf: &[u8], max_message_len: usize) -> Result<Option<FrameHeader>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::TooShort {
            tag: char::from(tag),
            len,
        });
    }
    let body_len = (len - 4) as usize;
    if body_len > max_message_len {
        return Err(FrameError::TooLong {
            tag: char::from(tag),
            len,
            max: max_message_len,
        });
    }
    Ok(Some(FrameHeader { tag, body_len }))
}

/// One whole message: its tag and body (header stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The message body.
    pub body: Bytes,
}

/// Splits the first complete frame off `buf`; `Ok(None)` (and `buf` untouched) while
/// the frame is incomplete. Used where whole messages are wanted (login, tests); the
/// hot path walks headers in place instead.
pub fn decode_frame(buf: &mut BytesMut, max_message_len: usize) -> Result<Option<Frame>, FrameError> {
    let Some(header) = parse_header(buf, max_message_len)? else {
        return Ok(None);
    };
    if buf.len() < header.frame_len() {
        buf.reserve(header.frame_len() - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(header.body_len).freeze();
    Ok(Some(Frame { tag: header.tag, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_frames_split_across_reads() {
        // ReadyForQuery 'I' followed by the first half of a CommandComplete.
        let mut buf = BytesMut::from(&b"Z\0\0\0\x05IC\0\0\0\x0dSELE"[..]);
        let f = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Z');
        assert_eq!(&f.body[..], b"I");
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None);
        buf.extend_from_slice(b"CT 1\0");
        let f = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'C', &b"SELECT 1\0"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_lengths_below_four() {
        for len in 0u32..4 {
            let mut bytes = vec![b'Q'];
            bytes.extend_from_slice(&len.to_be_bytes());
            assert_eq!(parse_header(&bytes, 1024), Err(FrameError::TooShort { tag: 'Q', len }));
        }
    }

    #[test]
    fn rejects_oversized_length_before_buffering() {
        let mut buf = BytesMut::from(&b"D\x7f\xff\xff\xff"[..]);
        let err = decode_frame(&mut buf, 1 << 20).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { tag: 'D', .. }));
        // Nothing was reserved for the bogus length.
        assert!(buf.capacity() < 1 << 20);
        assert!(err.to_string().contains("max_message_bytes"));
    }

    #[test]
    fn empty_body_is_valid() {
        let mut buf = BytesMut::from(&b"S\0\0\0\x04"[..]);
        let f = decode_frame(&mut buf, 0).unwrap().unwrap();
        assert_eq!((f.tag, f.body.len()), (b'S', 0));
    }
}
