//! The one writer. Every SQLite write (heartbeats, enrollments,
//! revocations, audit records) is an operation queued to one thread that
//! owns the writer connection. The thread applies whatever is queued, up
//! to `MAX_BATCH` operations, in one transaction and answers each caller
//! only after that transaction committed: one fsync covers the batch
//! (group commit), and an acknowledged write is durable. A full queue
//! makes callers wait (back-pressure).
//!
//! An operation's writes are kept when it returns `Ok` and discarded when
//! it returns `Err`, so a refusal must be decided before anything is
//! written. A batch runs its operations directly; if one fails, the
//! transaction is rolled back and the batch applied again with a savepoint
//! per operation, so the failure stays that operation's own. Operations
//! may therefore run twice, which is why they are `FnMut`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::rows::backend;
use crate::store::batch::{MAX_BATCH, QUEUE_CAPACITY, WriteQueueStats};
use crate::store::{StoreError, StoreResult};

/// A queued write, type-erased so that one queue carries every kind.
trait Operation: Send {
    /// Applies the write inside the batch's transaction (or savepoint);
    /// `true` when its writes are to be kept.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Whether it must commit in a transaction of its own.
    fn alone(&self) -> bool;
    /// Answers the caller once the batch's fate is known: its own result
    /// when the batch committed, the batch's error otherwise.
    fn answer(self: Box<Self>, batch: Result<(), &StoreError>);
}

struct Pending<T, F> {
    write: F,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    alone: bool,
}

impl<T, F> Operation for Pending<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> StoreResult<T> + Send,
{
    fn apply(&mut self, conn: &Connection) -> bool {
        // A panic fails this operation alone (its writes are rolled back)
        // instead of taking the writer, and every later write, down.
        let result = catch_unwind(AssertUnwindSafe(|| (self.write)(conn)))
            .unwrap_or_else(|_| Err(StoreError::Backend("a store write panicked".into())));
        let keep = result.is_ok();
        self.result = Some(result);
        keep
    }

    fn alone(&self) -> bool {
        self.alone
    }

    fn answer(self: Box<Self>, batch: Result<(), &StoreError>) {
        let outcome = match batch {
            Ok(()) => {
                self.result.unwrap_or_else(|| Err(StoreError::Backend("the write was never applied".into())))
            }
            Err(e) => Err(e.clone()),
        };
        let _ = self.reply.send(outcome);
    }
}

type Queued = Box<dyn Operation>;

/// The handle callers queue writes on. The thread ends when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Queued>,
    stats: std::sync::Arc<WriteQueueStats>,
}

impl Writer {
    /// Starts the writer thread on `conn`; `committed` runs after every
    /// batch that committed, before its callers are answered.
    pub(super) fn spawn(mut conn: Connection, committed: impl Fn() + Send + 'static) -> StoreResult<Self> {
        let (queue, mut rx) = mpsc::channel::<Queued>(QUEUE_CAPACITY);
        let stats = std::sync::Arc::new(WriteQueueStats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("oneprotect-sqlite-writer".into())
            .spawn(move || {
                let mut held = None;
                while let Some(first) = held.take().or_else(|| rx.blocking_recv()) {
                    let mut batch;
                    (batch, held) = drain(first, &mut rx);
                    writer_stats.drained(batch.len());
                    let outcome = apply_batch(&mut conn, &mut batch);
                    if outcome.is_ok() {
                        committed();
                    }
                    for operation in batch {
                        operation.answer(outcome.as_ref().map(|_| ()));
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("could not start the SQLite writer: {e}")))?;
        Ok(Self { queue, stats })
    }

    pub(super) fn stats(&self) -> &WriteQueueStats {
        &self.stats
    }

    /// Queues `write` and waits until the batch holding it committed.
    pub(super) async fn write<T, F>(&self, write: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(write, false).await
    }

    /// Like `write`, but committed in a transaction of its own: the
    /// one-transaction-per-write rate that benchmarks compare batches to.
    pub(super) async fn write_alone<T, F>(&self, write: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(write, true).await
    }

    async fn submit<T, F>(&self, write: F, alone: bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let operation: Queued = Box::new(Pending { write, result: None, reply, alone });
        self.stats.enqueued();
        if self.queue.send(operation).await.is_err() {
            self.stats.abandoned();
            return Err(StoreError::Unavailable("the SQLite writer stopped".into()));
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer stopped before committing".into()))?
    }
}

/// The first queued operation and whatever else is already waiting, up to
/// `MAX_BATCH`; an operation that must commit alone ends the batch before
/// it and is handed back to start the next one.
fn drain(first: Queued, rx: &mut mpsc::Receiver<Queued>) -> (Vec<Queued>, Option<Queued>) {
    let alone = first.alone();
    let mut batch = vec![first];
    while !alone && batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(next) if next.alone() => return (batch, Some(next)),
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    (batch, None)
}

/// Applies a batch in one transaction. `Ok` means it committed (an
/// operation that failed inside it had its own writes rolled back); `Err`
/// means nothing of it was committed.
fn apply_batch(conn: &mut Connection, batch: &mut [Queued]) -> StoreResult<()> {
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        if batch.iter_mut().all(|operation| operation.apply(&tx)) {
            return tx.commit().map_err(backend);
        }
        // Dropping the transaction rolls it back.
    }
    if batch.len() == 1 {
        // Its failure is its answer, and nothing else was written.
        return Ok(());
    }
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    for operation in batch.iter_mut() {
        let savepoint = tx.savepoint().map_err(backend)?;
        if operation.apply(&savepoint) {
            savepoint.commit().map_err(backend)?;
        } else {
            drop(savepoint);
            // Some errors (a full disk, I/O) end the whole transaction;
            // then nothing of the batch may be reported as written.
            if tx.is_autocommit() {
                return Err(StoreError::Backend("a write failure ended the batch's transaction".into()));
            }
        }
    }
    tx.commit().map_err(backend)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    type Write = Box<dyn FnMut(&Connection) -> StoreResult<()> + Send>;
    type Answer = tokio::task::JoinHandle<StoreResult<()>>;

    /// A writer on an in-memory table of unique values, and how many
    /// batches it has committed.
    fn writer() -> (Writer, Arc<AtomicUsize>) {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (v TEXT NOT NULL UNIQUE)").expect("schema");
        let commits = Arc::new(AtomicUsize::new(0));
        let counted = commits.clone();
        let writer = Writer::spawn(conn, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .expect("spawn");
        (writer, commits)
    }

    fn insert(v: &'static str) -> Write {
        Box::new(move |conn| conn.execute("INSERT INTO t (v) VALUES (?1)", [v]).map(|_| ()).map_err(backend))
    }

    /// Writes `v`, then fails: its write must not be kept.
    fn insert_then_fail(v: &'static str) -> Write {
        Box::new(move |conn| {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [v]).map_err(backend)?;
            Err(StoreError::Backend("refused after writing".into()))
        })
    }

    /// Keeps the writer busy inside a batch of its own, queues `writes` in
    /// order behind it (each `alone` or not), then lets it go: the writes
    /// travel together in the batches that follow. One answer per write.
    async fn queued_behind_a_busy_writer(
        writer: &Writer,
        writes: Vec<(bool, Write)>,
    ) -> Vec<StoreResult<()>> {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let (started, running) = oneshot::channel();
        let mut started = Some(started);
        let w = writer.clone();
        let held: Answer = tokio::spawn(async move {
            w.write(move |_| {
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
                let _ = released.lock().map(|r| r.recv());
                Ok(())
            })
            .await
        });
        running.await.expect("the writer runs the holding write");
        let mut answers: Vec<Answer> = Vec::new();
        for (n, (alone, write)) in writes.into_iter().enumerate() {
            let w = writer.clone();
            answers.push(tokio::spawn(async move {
                if alone { w.write_alone(write).await } else { w.write(write).await }
            }));
            while writer.queue.max_capacity() - writer.queue.capacity() <= n {
                tokio::task::yield_now().await;
            }
        }
        release.send(()).expect("release");
        held.await.expect("task").expect("holding write");
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.expect("task"));
        }
        results
    }

    fn batched(writes: Vec<Write>) -> Vec<(bool, Write)> {
        writes.into_iter().map(|w| (false, w)).collect()
    }

    async fn rows(writer: &Writer) -> Vec<String> {
        writer
            .write(|conn| {
                let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").map_err(backend)?;
                let values = stmt
                    .query_map([], |r| r.get(0))
                    .map_err(backend)?
                    .collect::<Result<Vec<String>, _>>()
                    .map_err(backend)?;
                Ok(values)
            })
            .await
            .expect("rows")
    }

    #[tokio::test]
    async fn writes_queued_together_commit_in_one_transaction() {
        let (writer, commits) = writer();
        let values = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let results =
            queued_behind_a_busy_writer(&writer, batched(values.into_iter().map(insert).collect())).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            commits.load(Ordering::SeqCst),
            2,
            "the holding batch, then one batch for all eight writes"
        );
        assert_eq!(rows(&writer).await, values);
    }

    #[tokio::test]
    async fn a_failing_write_is_rolled_back_alone_and_its_neighbours_commit() {
        let (writer, commits) = writer();
        let results = queued_behind_a_busy_writer(
            &writer,
            batched(vec![insert("a"), insert_then_fail("refused"), insert("c"), insert("a")]),
        )
        .await;
        assert!(results[0].is_ok());
        assert!(matches!(&results[1], Err(StoreError::Backend(m)) if m == "refused after writing"));
        assert!(results[2].is_ok());
        assert!(results[3].is_err(), "a unique violation fails its own write");
        assert_eq!(commits.load(Ordering::SeqCst), 2);
        assert_eq!(rows(&writer).await, ["a", "c"], "the refused write left nothing behind");
    }

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_keeps_serving() {
        let (writer, _) = writer();
        let panicking: Write = Box::new(|conn| {
            conn.execute("INSERT INTO t (v) VALUES ('panicked')", []).map_err(backend)?;
            panic!("a write that panics (test fixture)")
        });
        let results =
            queued_behind_a_busy_writer(&writer, batched(vec![insert("a"), panicking, insert("c")])).await;
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok(), "{results:?}");
        writer.write(insert("after")).await.expect("the writer still serves");
        assert_eq!(rows(&writer).await, ["a", "after", "c"]);
    }

    #[tokio::test]
    async fn a_failure_that_ends_the_transaction_fails_every_write_of_its_batch() {
        let (writer, commits) = writer();
        // What SQLite does on some I/O and disk-full errors: the whole
        // transaction is gone, savepoints included.
        let ending: Write = Box::new(|conn| {
            conn.execute_batch("ROLLBACK").map_err(backend)?;
            Err(StoreError::Backend("the transaction ended".into()))
        });
        let results =
            queued_behind_a_busy_writer(&writer, batched(vec![insert("a"), ending, insert("c")])).await;
        assert!(
            results.iter().all(Result::is_err),
            "nothing of the batch may be reported as written: {results:?}"
        );
        assert_eq!(commits.load(Ordering::SeqCst), 1, "only the holding batch committed");
        assert!(rows(&writer).await.is_empty());
    }

    #[tokio::test]
    async fn a_write_alone_commits_in_a_transaction_of_its_own() {
        let (writer, commits) = writer();
        let results = queued_behind_a_busy_writer(
            &writer,
            vec![(false, insert("a")), (true, insert("b")), (false, insert("c"))],
        )
        .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(commits.load(Ordering::SeqCst), 4, "the holding batch, [a], [b] alone, [c]");
    }
}
