//! The log's writer: lines go to stderr from a thread of their own, in batches; and what a
//! line costs to format ([`Lines`], [`Fields`], [`Clock`]: see [`format`]).
//!
//! tracing-appender's non-blocking writer wakes its thread for every line: under load that
//! is a futex wake, a context switch and a `write` per request, about 6% of a small read's
//! CPU (perf, W1). [`Batched`] instead collects lines in one buffer and wakes its thread for
//! the first line of a batch only; the thread waits up to [`BATCH_WINDOW`] for more and then
//! writes them all at once. Warnings and errors are written at once, with what came before
//! them. A logger waits (rather than drop lines) while [`MAX_PENDING`] bytes are queued.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

pub mod format;
pub use format::{Clock, Fields, Lines};

/// How long the first line of a batch waits for more before the batch is written.
pub const BATCH_WINDOW: Duration = Duration::from_millis(25);

/// Bytes of queued lines past which the batch is written without waiting out its window.
const WRITE_AT: usize = 64 * 1024;

/// Bytes of queued lines past which a logger waits for the thread to catch up.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

/// How long dropping the guard waits for the last lines to be written.
const LAST_WRITE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    /// Lines not yet handed to the thread, whole lines only.
    pending: Vec<u8>,
    /// A warning or an error is pending, or a full batch: write without waiting.
    urgent: bool,
    /// The guard dropped: write what is left and stop.
    closed: bool,
    /// The thread wrote what was left and stopped.
    done: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the thread: a batch has begun, or must be written now.
    work: Condvar,
    /// Wakes loggers waiting for room, and the guard waiting for the last write.
    room: Condvar,
    window: Duration,
    write_at: usize,
    max_pending: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while the lock is held leaves whole lines behind; keep logging.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` to give `tracing_subscriber::fmt().with_writer(…)`.
#[derive(Clone)]
pub struct Batched {
    shared: Arc<Shared>,
}

/// Writes what is queued and stops the thread when dropped: keep it alive while logging.
#[must_use = "dropping the guard writes what is queued and stops the writer"]
pub struct Flushed {
    shared: Arc<Shared>,
}

impl Batched {
    /// A writer whose lines `out` receives in batches, from a thread named `log`.
    pub fn new<W: Write + Send + 'static>(out: W) -> std::io::Result<(Batched, Flushed)> {
        Self::with(out, BATCH_WINDOW, WRITE_AT, MAX_PENDING)
    }

    fn with<W: Write + Send + 'static>(
        out: W,
        window: Duration,
        write_at: usize,
        max_pending: usize,
    ) -> std::io::Result<(Batched, Flushed)> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            work: Condvar::new(),
            room: Condvar::new(),
            window,
            write_at: write_at.min(max_pending),
            max_pending,
        });
        std::thread::Builder::new().name("log".into()).spawn({
            let shared = shared.clone();
            move || write_batches(&shared, out)
        })?;
        Ok((Batched { shared: shared.clone() }, Flushed { shared }))
    }

    fn push(&self, line: &[u8], urgent: bool) {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        while queue.pending.len() >= shared.max_pending && !queue.closed {
            queue = shared.room.wait(queue).unwrap_or_else(PoisonError::into_inner);
        }
        let begins_batch = queue.pending.is_empty();
        queue.pending.extend_from_slice(line);
        let now = urgent || queue.pending.len() >= shared.write_at;
        queue.urgent |= now;
        drop(queue);
        if begins_batch || now {
            shared.work.notify_one();
        }
    }
}

/// The thread's loop: wait for a batch to begin, give it its window, write it.
fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut queue = shared.lock();
        while queue.pending.is_empty() && !queue.closed {
            queue = shared.work.wait(queue).unwrap_or_else(PoisonError::into_inner);
        }
        if !queue.urgent && !queue.closed {
            queue = shared
                .work
                .wait_timeout_while(queue, shared.window, |q| !q.urgent && !q.closed)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut queue.pending, &mut batch);
        queue.urgent = false;
        let last = queue.closed;
        drop(queue);
        shared.room.notify_all();
        if !batch.is_empty() {
            // Nowhere is left to report a failing stderr; the lines are dropped.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
        }
        if last {
            shared.lock().done = true;
            shared.room.notify_all();
            return;
        }
    }
}

impl Drop for Flushed {
    fn drop(&mut self) {
        let shared = &*self.shared;
        let mut queue = shared.lock();
        queue.closed = true;
        shared.work.notify_one();
        shared.room.notify_all();
        // A stderr that blocks (a full pipe nobody reads) must not keep the process alive.
        let _ = shared.room.wait_timeout_while(queue, LAST_WRITE, |q| !q.done);
    }
}

/// One event's writer; tracing-subscriber writes each formatted line with one `write_all`.
pub struct Line<'a> {
    batched: &'a Batched,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.batched.push(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            batched: self,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            batched: self,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A writer whose bytes the test reads, and how many writes brought them.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut sink = self.0.lock().unwrap();
            sink.0.extend_from_slice(buf);
            sink.1 += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().0.clone()).unwrap()
        }

        fn writes(&self) -> usize {
            self.0.lock().unwrap().1
        }

        /// Waits (at most ten seconds) until `lines` lines have been written.
        fn wait_for(&self, lines: usize) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.text().lines().count() < lines {
                assert!(Instant::now() < deadline, "only {:?} was written", self.text());
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// A window no test waits out: what is written was written for another reason.
    const FOREVER: Duration = Duration::from_secs(3600);

    fn log(batched: &Batched, events: impl FnOnce()) {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(batched.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, events);
    }

    #[test]
    fn every_line_of_many_threads_is_written_whole_and_in_order_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        // A small queue, so that loggers also wait for room.
        let (batched, flushed) = Batched::with(sink.clone(), BATCH_WINDOW, 512, 1024).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let batched = &batched;
                scope.spawn(move || {
                    for n in 0..2_000 {
                        batched
                            .make_writer()
                            .write_all(format!("t{thread} n{n}\n").as_bytes())
                            .unwrap();
                    }
                });
            }
        });
        drop(flushed);
        let text = sink.text();
        assert_eq!(text.lines().count(), 8_000);
        for thread in 0..4 {
            let seen: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("t{thread} n")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(seen, (0..2_000).collect::<Vec<_>>());
        }
        assert!(sink.writes() < 8_000, "lines were batched: {} writes", sink.writes());
    }

    #[test]
    fn info_lines_wait_for_their_window_and_are_written_in_one_write() {
        let sink = Sink::default();
        let (batched, flushed) = Batched::with(sink.clone(), FOREVER, WRITE_AT, MAX_PENDING).unwrap();
        log(&batched, || {
            for n in 0..10 {
                tracing::info!(n, "request done");
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(sink.text(), "", "written before the window ended");
        drop(flushed);
        assert_eq!(sink.text().lines().count(), 10);
        assert_eq!(sink.writes(), 1);
    }

    #[test]
    fn lines_are_written_when_their_window_ends() {
        let sink = Sink::default();
        let (batched, _flushed) =
            Batched::with(sink.clone(), Duration::from_millis(10), WRITE_AT, MAX_PENDING).unwrap();
        log(&batched, || tracing::info!("request done"));
        sink.wait_for(1);
        assert!(sink.text().contains("request done"));
    }

    #[test]
    fn a_warning_or_an_error_is_written_at_once_with_the_lines_before_it() {
        for urgent in [tracing::Level::WARN, tracing::Level::ERROR] {
            let sink = Sink::default();
            let (batched, _flushed) = Batched::with(sink.clone(), FOREVER, WRITE_AT, MAX_PENDING).unwrap();
            log(&batched, || {
                tracing::info!("before");
                match urgent {
                    tracing::Level::WARN => tracing::warn!("trouble"),
                    _ => tracing::error!("trouble"),
                }
            });
            sink.wait_for(2);
            let text = sink.text();
            assert!(text.find("before") < text.find("trouble"), "{text}");
        }
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_out_its_window() {
        let sink = Sink::default();
        let (batched, _flushed) = Batched::with(sink.clone(), FOREVER, 100, MAX_PENDING).unwrap();
        for n in 0..20 {
            batched
                .make_writer()
                .write_all(format!("line {n:>3}\n").as_bytes())
                .unwrap();
        }
        // 100 bytes are 10 lines of 9 bytes and a bit: at least the first 11 go out.
        sink.wait_for(11);
    }
}
