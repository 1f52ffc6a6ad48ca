//! Ordered, bounded parallel work: segments are built and compressed on worker threads and
//! consumed (written) in order on the calling thread, with at most a few finished segments
//! waiting at any time.
//!
//! This is what keeps an encode's memory at "the image once, plus the baseline": no stage
//! holds more than `depth` segments' output, whatever the image size.

use std::collections::VecDeque;

use hde_sync::{lock, wait, Condvar, Mutex};

/// The shared state of one [`ordered`] run: which index to work on next, and the finished
/// results not yet consumed, in index order.
///
/// Invariants (checked by the loom models below): every index in `0..n` is handed
/// out at most once; results leave in index order; `next - consumed <= depth`, so at most
/// `depth` results are held; once stopped, `take` and `next` return `None` without blocking.
#[derive(Debug)]
pub(crate) struct Window<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

#[derive(Debug)]
struct State<T> {
    n: usize,
    depth: usize,
    /// Next index to hand out.
    next: usize,
    /// Results consumed so far.
    consumed: usize,
    /// Slots of indices `consumed..next`: `Some` once finished.
    ready: VecDeque<Option<T>>,
    stopped: bool,
}

impl<T> Window<T> {
    /// A window over `0..n` holding at most `depth` (at least 1) unconsumed results.
    pub(crate) fn new(n: usize, depth: usize) -> Self {
        let depth = depth.max(1);
        let state = State { n, depth, next: 0, consumed: 0, ready: VecDeque::with_capacity(depth), stopped: false };
        Window { state: Mutex::new(state), changed: Condvar::new() }
    }

    /// The next index to work on; waits while `depth` results are unconsumed. `None` when all
    /// were handed out or the run stopped.
    pub(crate) fn take(&self) -> Option<usize> {
        let mut st = lock(&self.state);
        loop {
            if st.stopped || st.next >= st.n {
                return None;
            }
            if st.next - st.consumed < st.depth {
                let i = st.next;
                st.next += 1;
                st.ready.push_back(None);
                return Some(i);
            }
            st = wait(&self.changed, st);
        }
    }

    /// Hands in the result of index `i` (one that `take` returned).
    pub(crate) fn put(&self, i: usize, value: T) {
        let mut st = lock(&self.state);
        let slot = i.checked_sub(st.consumed).and_then(|k| st.ready.get_mut(k));
        if let Some(slot) = slot {
            *slot = Some(value);
            self.changed.notify_all();
        }
    }

    /// The next result in index order; waits for it. `None` when all were consumed or the run
    /// stopped.
    pub(crate) fn next(&self) -> Option<T> {
        let mut st = lock(&self.state);
        loop {
            if st.stopped || st.consumed >= st.n {
                return None;
            }
            if st.ready.front().is_some_and(Option::is_some) {
                let value = st.ready.pop_front().flatten();
                st.consumed += 1;
                self.changed.notify_all();
                return value;
            }
            st = wait(&self.changed, st);
        }
    }

    /// Ends the run: workers stop taking work, the consumer stops waiting.
    pub(crate) fn stop(&self) {
        lock(&self.state).stopped = true;
        self.changed.notify_all();
    }
}

/// Stops the window if the worker holding it unwinds, so the consumer does not wait for a
/// result that will never come (the panic is re-raised when the threads are joined).
struct StopOnPanic<'a, T>(&'a Window<T>);

impl<T> Drop for StopOnPanic<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            Window::stop(self.0);
        }
    }
}

/// Runs `work(state, i)` for every `i` in `0..n` on up to `threads` worker threads (each with
/// its own `state` from `init`: its codecs and buffers) and hands the results to `sink` in
/// index order on the calling thread. At most `2 * threads` finished results wait for the
/// sink. The first error of `sink` ends the run and is returned.
pub(crate) fn ordered<W, T, E>(
    threads: usize,
    n: usize,
    init: impl Fn() -> W + Sync,
    work: impl Fn(&mut W, usize) -> T + Sync,
    mut sink: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
{
    let workers = threads.min(n);
    if workers <= 1 {
        let mut state = init();
        for i in 0..n {
            sink(work(&mut state, i))?;
        }
        return Ok(());
    }
    let window: Window<T> = Window::new(n, 2 * workers);
    let mut result = Ok(());
    // A worker's panic is raised again here once every thread has stopped (`StopOnPanic`
    // releases the others and the consumer).
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let _guard = StopOnPanic(&window);
                let mut state = init();
                while let Some(i) = window.take() {
                    let value = work(&mut state, i);
                    window.put(i, value);
                }
            });
        }
        while let Some(value) = window.next() {
            if let Err(e) = sink(value) {
                result = Err(e);
                window.stop();
            }
        }
    });
    result
}

#[cfg(all(test, not(hde_loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn results_arrive_in_order_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            for n in [0, 1, 2, 7, 100] {
                let mut seen = Vec::new();
                let r: Result<(), ()> = ordered(
                    threads,
                    n,
                    || (),
                    |(), i| i * i,
                    |v| {
                        seen.push(v);
                        Ok(())
                    },
                );
                assert!(r.is_ok());
                assert_eq!(seen, (0..n).map(|i| i * i).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn at_most_depth_results_wait() {
        let built = AtomicUsize::new(0);
        let max_ahead = AtomicUsize::new(0);
        let mut consumed = 0;
        let r: Result<(), ()> = ordered(
            3,
            200,
            || (),
            |(), i| {
                built.fetch_add(1, Ordering::SeqCst);
                i
            },
            |_| {
                consumed += 1;
                let ahead = built.load(Ordering::SeqCst) - consumed;
                max_ahead.fetch_max(ahead, Ordering::SeqCst);
                Ok(())
            },
        );
        assert!(r.is_ok());
        // 2 * 3 waiting plus the ones being built when the sink looked.
        assert!(max_ahead.load(Ordering::SeqCst) <= 6, "{}", max_ahead.load(Ordering::SeqCst));
    }

    #[test]
    fn a_sink_error_stops_the_run() {
        let built = AtomicUsize::new(0);
        let r = ordered(
            2,
            1000,
            || (),
            |(), i| {
                built.fetch_add(1, Ordering::SeqCst);
                i
            },
            |v| if v == 5 { Err(v) } else { Ok(()) },
        );
        assert_eq!(r, Err(5));
        assert!(built.load(Ordering::SeqCst) < 20);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_without_a_hang() {
        let r = std::panic::catch_unwind(|| {
            let _: Result<(), ()> = ordered(
                2,
                50,
                || (),
                |(), i| {
                    if i == 7 {
                        panic!("worker fails");
                    }
                    i
                },
                |_| Ok(()),
            );
        });
        assert!(r.is_err());
    }
}

/// Loom models of [`Window`] (`cargo xtask loom`): every interleaving of two workers and the
/// consumer, up to the preemption bound.
#[cfg(all(test, hde_loom))]
mod loom_models {
    use loom::sync::Arc;
    use loom::thread;

    use super::Window;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    fn worker(window: &Arc<Window<usize>>) -> thread::JoinHandle<Vec<usize>> {
        let window = window.clone();
        thread::spawn(move || {
            let mut taken = Vec::new();
            while let Some(i) = window.take() {
                taken.push(i);
                window.put(i, i * 10);
            }
            taken
        })
    }

    #[test]
    fn loom_results_leave_in_order_each_index_once_within_depth() {
        model(|| {
            let window = Arc::new(Window::new(3, 1));
            let workers = [worker(&window), worker(&window)];
            let mut got = Vec::new();
            while let Some(v) = window.next() {
                got.push(v);
            }
            let mut taken: Vec<usize> = workers.into_iter().flat_map(|h| h.join().unwrap()).collect();
            taken.sort_unstable();
            assert_eq!(got, vec![0, 10, 20]);
            assert_eq!(taken, vec![0, 1, 2]);
        });
    }

    #[test]
    fn loom_stop_releases_workers_and_consumer() {
        model(|| {
            let window = Arc::new(Window::new(4, 1));
            let w = worker(&window);
            let first = window.next();
            window.stop();
            assert_eq!(window.next(), None);
            let taken = w.join().unwrap();
            assert!(first.is_none() || first == Some(0));
            assert!(taken.len() <= 3, "{taken:?}");
        });
    }
}
