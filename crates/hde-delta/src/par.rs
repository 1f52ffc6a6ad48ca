//! Runs a function over segment indices on a few threads, results in index order.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `(0..n).map(f).collect()`, spread over up to `threads` threads (the caller's included in
/// the count). Workers take the next index from a shared counter, so uneven segments balance
/// out; results are put back in index order, so output never depends on the thread count.
pub(crate) fn map<T, F>(threads: usize, n: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    let workers = threads.min(n);
    if workers <= 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return done;
            }
            done.push((i, f(i)));
        }
    };
    // A panicking worker's panic is resumed here, once the others have finished.
    let mut parts = std::thread::scope(|s| {
        let handles: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
        let mut parts = vec![work()];
        for h in handles {
            match h.join() {
                Ok(part) => parts.push(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        parts
    });
    let mut all: Vec<(usize, T)> = parts.drain(..).flatten().collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// Like [`map`], but hands each worker ownership of `items[i]` (e.g. the `&mut` output chunk
/// of segment `i`).
pub(crate) fn map_each<I, T, F>(threads: usize, items: Vec<I>, f: F) -> Vec<T>
where
    I: Send,
    T: Send,
    F: Fn(usize, I) -> T + Sync,
{
    // Each slot is taken exactly once, by the worker that drew its index.
    let slots: Vec<std::sync::Mutex<Option<I>>> = items.into_iter().map(|i| std::sync::Mutex::new(Some(i))).collect();
    map(threads, slots.len(), |i| {
        let item = slots[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        item.map(|item| f(i, item))
    })
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn order_is_kept_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            for n in [0, 1, 2, 7, 100] {
                let out = super::map(threads, n, |i| i * i);
                assert_eq!(out, (0..n).map(|i| i * i).collect::<Vec<_>>());
            }
        }
    }
}
