//! Baseline buffers the engine borrows and gives back.
//!
//! Each batch installs a baseline as large as the batch (8 MiB by default). A fresh buffer each
//! time costs a page fault per 4 KiB written, which on a 512 MiB guest was the largest single
//! cost of both sides. The engine keeps a baseline until the next one replaces it, so two
//! buffers taken in turn are free again by the time each is filled; one that is still held is
//! left to the engine and replaced, never written.

use std::sync::Arc;

use hde_core::delta::Image;

/// Two buffers lent to the engine in turn.
#[derive(Default)]
pub(crate) struct Lent {
    slots: [Arc<Vec<u8>>; 2],
    next: usize,
}

impl Lent {
    /// The next buffer, emptied and filled by `fill`, as an image the engine can keep.
    pub(crate) fn fill(&mut self, fill: impl FnOnce(&mut Vec<u8>)) -> Image {
        let slot = &mut self.slots[self.next];
        self.next ^= 1;
        // Still held by the engine (or by an image it handed out): leave it there.
        if Arc::get_mut(slot).is_none() {
            *slot = Arc::default();
        }
        if let Some(buf) = Arc::get_mut(slot) {
            buf.clear();
            fill(buf);
        }
        Image::shared(slot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_still_held_is_never_written() {
        let mut lent = Lent::default();
        let a = lent.fill(|b| b.extend_from_slice(b"first"));
        let b = lent.fill(|b| b.extend_from_slice(b"second"));
        // `a` is still held: its slot gets a new buffer, and `a` keeps its bytes.
        let c = lent.fill(|b| b.extend_from_slice(b"third"));
        assert_eq!((&*a, &*b, &*c), (&b"first"[..], &b"second"[..], &b"third"[..]));
    }

    #[test]
    fn a_buffer_given_back_is_reused() {
        let mut lent = Lent::default();
        let a = lent.fill(|b| b.resize(1 << 16, 1));
        let first = a.as_ptr();
        drop(a);
        drop(lent.fill(|b| b.push(2)));
        let c = lent.fill(|b| b.resize(1 << 16, 3));
        assert_eq!(c.as_ptr(), first);
        assert!(c.iter().all(|&x| x == 3));
    }
}
