//! Read buffers are lent to a connection only while it holds bytes. Most of a busy
//! proxy's connections are idle at any instant (thousands of clients each waiting
//! for its application), and a 32 KiB buffer per direction per connection would be
//! nearly all of what they cost. A connection that has forwarded everything gives
//! its buffer back before it waits for more; the next read on the same thread takes
//! a warm one from the spare list, so busy traffic cycles a few buffers and
//! allocates nothing.

use bytes::BytesMut;
use std::cell::RefCell;

/// Size of a lent read buffer.
pub const BUF_SIZE: usize = 32 * 1024;

/// Spare buffers kept per thread (2 MiB): enough for every connection a thread
/// serves at once on a busy proxy; more are freed.
const SPARE_PER_THREAD: usize = 64;

thread_local! {
    // Per thread, not shared: taking and giving back costs no lock and no atomic.
    // A session that moves between runtime threads only shifts a buffer from one
    // list to another.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`BUF_SIZE`] bytes.
pub fn lend() -> BytesMut {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
}

/// Takes back a buffer whose bytes were all consumed. One still shared with bytes
/// split off it, or grown for a large message, is freed instead of kept.
pub fn give_back(mut buf: BytesMut) {
    debug_assert!(buf.is_empty(), "a buffer given back with {} unread bytes", buf.len());
    buf.clear();
    // An exhausted buffer (every byte read and advanced past) shows no capacity
    // but still owns its allocation: reclaiming is what tells the two apart.
    if !buf.try_reclaim(BUF_SIZE) || buf.capacity() > 2 * BUF_SIZE {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_PER_THREAD {
            spare.push(buf);
        }
    });
}

/// Gives back an empty buffer and puts a lent one in its place (on a warm thread,
/// the same one, reclaimed whole).
pub fn renew(buf: &mut BytesMut) {
    give_back(std::mem::take(buf));
    *buf = lend();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_buffer_is_lent_again_whole_and_an_oversized_one_is_not() {
        let mut buf = lend();
        buf.extend_from_slice(&[7; 100]);
        let _ = buf.split_to(100);
        let ptr = buf.as_ptr();
        give_back(buf);
        let again = lend();
        assert!(again.is_empty());
        assert!(again.capacity() >= BUF_SIZE);
        assert_eq!(
            again.as_ptr(),
            ptr.wrapping_sub(100),
            "the same allocation, from its start"
        );

        let mut big = BytesMut::with_capacity(4 * BUF_SIZE);
        big.extend_from_slice(&[1; 10]);
        big.clear();
        let big_ptr = big.as_ptr();
        give_back(again);
        give_back(big);
        assert_ne!(lend().as_ptr(), big_ptr, "oversized buffers are freed, not kept");
    }

    #[test]
    fn an_exhausted_buffer_is_kept_though_it_shows_no_capacity() {
        let mut buf = lend();
        let ptr = buf.as_ptr();
        let full = buf.capacity();
        buf.resize(full, 0);
        let _ = buf.split_to(full);
        assert_eq!(buf.capacity(), 0);
        renew(&mut buf);
        assert_eq!(buf.as_ptr(), ptr);
        assert!(buf.capacity() >= BUF_SIZE);
    }

    #[test]
    fn a_buffer_still_shared_with_split_off_bytes_is_not_kept() {
        let mut buf = lend();
        buf.extend_from_slice(b"message");
        let frame = buf.split_to(7).freeze();
        let ptr = buf.as_ptr();
        give_back(buf);
        assert_ne!(lend().as_ptr(), ptr);
        drop(frame);
    }
}
