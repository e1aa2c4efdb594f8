//! The group-commit queue every store's writer drains, one rule for all of
//! them: a write waits in the queue; the writer takes the first that comes
//! and every other already waiting, up to `max_batch`, commits them together
//! and then answers each. `store.group_commit = false` is `max_batch = 1`.
//!
//! Closing is part of the queue: [`WriteQueue::close`] asks the writer to
//! finish the writes queued before it and stop, and resolves once the writer
//! has released its database ([`Batches::finish`]). Works the same whether
//! the writer is a thread ([`Batches::blocking_next`], SQLite) or a task
//! ([`Batches::next`], PostgreSQL and MongoDB).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

enum Msg<J> {
    Job(J),
    Close(oneshot::Sender<()>),
}

/// The store's side: submits writes and asks for the close.
pub(crate) struct WriteQueue<J> {
    tx: mpsc::UnboundedSender<Msg<J>>,
}

/// The writer's side: hands out batches until the queue closes.
pub(crate) struct Batches<J> {
    rx: mpsc::UnboundedReceiver<Msg<J>>,
    max_batch: usize,
    closing: Option<oneshot::Sender<()>>,
    closed: bool,
}

impl<J> WriteQueue<J> {
    /// A queue whose batches hold at most `max_batch` writes (at least 1).
    pub(crate) fn new(max_batch: usize) -> (WriteQueue<J>, Batches<J>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let batches = Batches {
            rx,
            max_batch: max_batch.max(1),
            closing: None,
            closed: false,
        };
        (WriteQueue { tx }, batches)
    }

    /// Queues a write; false when the writer has stopped.
    pub(crate) fn submit(&self, job: J) -> bool {
        self.tx.send(Msg::Job(job)).is_ok()
    }

    /// Asks the writer to finish what was queued before and stop. The
    /// future resolves when it has (at once if it had stopped already).
    pub(crate) fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        let (done, stopped) = oneshot::channel();
        let sent = self.tx.send(Msg::Close(done)).is_ok();
        async move {
            if sent {
                let _ = stopped.await;
            }
        }
    }
}

impl<J> Batches<J> {
    /// The next batch, waiting for its first write; `None` once the queue
    /// is closed (everything queued before the close has been handed out).
    pub(crate) async fn next(&mut self) -> Option<Vec<J>> {
        if self.closed {
            return None;
        }
        let first = self.rx.recv().await;
        self.fill(first)
    }

    /// [`Batches::next`] for a writer thread (never inside a runtime).
    pub(crate) fn blocking_next(&mut self) -> Option<Vec<J>> {
        if self.closed {
            return None;
        }
        let first = self.rx.blocking_recv();
        self.fill(first)
    }

    fn fill(&mut self, first: Option<Msg<J>>) -> Option<Vec<J>> {
        let mut jobs = match first {
            Some(Msg::Job(job)) => vec![job],
            Some(Msg::Close(done)) => {
                self.close_with(done);
                return None;
            }
            None => {
                self.closed = true;
                return None;
            }
        };
        while jobs.len() < self.max_batch {
            match self.rx.try_recv() {
                Ok(Msg::Job(job)) => jobs.push(job),
                Ok(Msg::Close(done)) => {
                    self.close_with(done);
                    break;
                }
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    fn close_with(&mut self, done: oneshot::Sender<()>) {
        self.closed = true;
        self.closing = Some(done);
        // Later submissions fail at once instead of waiting forever.
        self.rx.close();
    }

    /// Tells the closer the writer has stopped; call it after releasing
    /// the database.
    pub(crate) fn finish(mut self) {
        if let Some(done) = self.closing.take() {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_take_what_waits_up_to_the_limit_and_close_in_order() {
        let (queue, mut batches) = WriteQueue::new(3);
        for i in 0..5 {
            assert!(queue.submit(i));
        }
        let closed = queue.close();
        // After the close: never run, its caller hears the store closed.
        queue.submit(5);
        assert_eq!(batches.next().await, Some(vec![0, 1, 2]));
        assert_eq!(batches.next().await, Some(vec![3, 4]));
        assert_eq!(batches.next().await, None);
        assert_eq!(batches.next().await, None);
        assert!(!queue.submit(6), "the writer has stopped taking writes");
        batches.finish();
        closed.await;
    }

    #[test]
    fn a_writer_thread_gets_the_same_batches() {
        let (queue, mut batches) = WriteQueue::new(1);
        queue.submit("a");
        queue.submit("b");
        drop(queue);
        assert_eq!(batches.blocking_next(), Some(vec!["a"]));
        assert_eq!(batches.blocking_next(), Some(vec!["b"]));
        assert_eq!(batches.blocking_next(), None);
    }
}
