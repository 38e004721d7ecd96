//! [`OutputBuffer`]: the bounded, shared capture of a run's output.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Shared, bounded capture of a run's combined stdout+stderr, readable while
/// the run goes on.
///
/// It keeps the **last** `limit` bytes ever written (a sliding window) and
/// counts every byte ever written, so positions are absolute offsets into the
/// run's whole output: the window covers `[total_written - kept, total_written)`.
/// Clones share the same buffer.
#[derive(Clone, Debug)]
pub struct OutputBuffer {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    kept: VecDeque<u8>,
    limit: usize,
    total: u64,
}

impl Inner {
    fn window_start(&self) -> u64 {
        self.total - self.kept.len() as u64
    }
}

impl OutputBuffer {
    /// A buffer that keeps the last `limit` bytes written to it.
    pub fn new(limit: usize) -> Self {
        OutputBuffer {
            inner: Arc::new(Mutex::new(Inner {
                kept: VecDeque::with_capacity(limit.min(64 * 1024)),
                limit,
                total: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated in
        // a way that matters (worst case a few bytes too many are kept), so a
        // poisoned lock is simply taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `data`, dropping the oldest bytes beyond the limit.
    pub fn write(&self, data: &[u8]) {
        let mut inner = self.lock();
        inner.total += data.len() as u64;
        let limit = inner.limit;
        if data.len() >= limit {
            inner.kept.clear();
            inner.kept.extend(&data[data.len() - limit..]);
            return;
        }
        inner.kept.extend(data);
        let excess = inner.kept.len().saturating_sub(limit);
        if excess > 0 {
            inner.kept.drain(..excess);
        }
    }

    /// The byte limit this buffer was made with.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// The last `max_bytes` of what is kept (fewer if less is kept).
    pub fn tail(&self, max_bytes: usize) -> Vec<u8> {
        let inner = self.lock();
        let skip = inner.kept.len().saturating_sub(max_bytes);
        inner.kept.range(skip..).copied().collect()
    }

    /// Everything kept.
    pub fn snapshot(&self) -> Vec<u8> {
        let inner = self.lock();
        inner.kept.iter().copied().collect()
    }

    /// Bytes ever written (monotonic), i.e. the absolute offset of the end of
    /// the output so far.
    pub fn total_written(&self) -> u64 {
        self.lock().total
    }

    /// The bytes from absolute offset `offset` on that are still kept, and the
    /// offset to pass next time (the current [`total_written`](Self::total_written)).
    ///
    /// If `offset` fell out of the window, reading starts at the window's
    /// start (the bytes in between are lost); an offset past the end yields
    /// nothing.
    pub fn read_from(&self, offset: u64) -> (Vec<u8>, u64) {
        let inner = self.lock();
        let start = offset.max(inner.window_start());
        if start >= inner.total {
            return (Vec::new(), inner.total);
        }
        // `start - window_start` < kept.len(), which is a usize.
        let skip = (start - inner.window_start()) as usize;
        (inner.kept.range(skip..).copied().collect(), inner.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes() {
        let b = OutputBuffer::new(5);
        b.write(b"abc");
        assert_eq!(b.snapshot(), b"abc");
        b.write(b"defg");
        assert_eq!(b.snapshot(), b"cdefg");
        assert_eq!(b.total_written(), 7);
        b.write(b"0123456789");
        assert_eq!(b.snapshot(), b"56789");
        assert_eq!(b.total_written(), 17);
        assert_eq!(b.tail(2), b"89");
        assert_eq!(b.tail(100), b"56789");
    }

    #[test]
    fn read_from_follows() {
        let b = OutputBuffer::new(4);
        assert_eq!(b.read_from(0), (vec![], 0));
        b.write(b"ab");
        let (data, off) = b.read_from(0);
        assert_eq!((data.as_slice(), off), (&b"ab"[..], 2));
        b.write(b"c");
        assert_eq!(b.read_from(off), (b"c".to_vec(), 3));
        // Offset 1 fell out of the window after this write: start at window start.
        b.write(b"def");
        assert_eq!(b.read_from(1), (b"cdef".to_vec(), 6));
        assert_eq!(b.read_from(4), (b"ef".to_vec(), 6));
        assert_eq!(b.read_from(6), (vec![], 6));
        assert_eq!(b.read_from(99), (vec![], 6));
    }

    #[test]
    fn zero_limit_keeps_nothing_but_counts() {
        let b = OutputBuffer::new(0);
        b.write(b"hello");
        assert_eq!(b.snapshot(), b"");
        assert_eq!(b.total_written(), 5);
        assert_eq!(b.read_from(0), (vec![], 5));
    }
}
