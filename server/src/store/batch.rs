//! Group commit for PostgreSQL heartbeats: callers queue their write on a
//! bounded channel (a full queue makes them wait: back-pressure) and a
//! writer task applies whatever is queued in one transaction, then answers
//! every caller. A caller is answered only after the transaction committed,
//! so an acknowledged heartbeat is durable; a crash before the commit loses
//! only heartbeats nobody was told about. The SQLite writer
//! (`sqlite::writer`), which group-commits every write, shares the bounds.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};
use crate::model::{HeartbeatCommit, HeartbeatOutcome};

/// Queued heartbeats before callers wait.
pub const QUEUE_CAPACITY: usize = 8192;
/// Heartbeats applied in one transaction at most.
pub const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<StoreResult<HeartbeatOutcome>>;

/// Upper bounds of the batch-size histogram (`MAX_BATCH` is the last).
pub const BATCH_SIZE_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, MAX_BATCH as u64];

/// What a write queue holds and how large its batches are, for `/metrics`.
/// Shared by every writer of a store (the SQLite writer, each PostgreSQL
/// heartbeat shard).
#[derive(Debug, Default)]
pub struct WriteQueueStats {
    /// Writes handed to the queue (including callers waiting for room) and
    /// not yet drained into a batch.
    queued: AtomicU64,
    /// Batches whose size is at most each bound and above the previous one.
    per_bound: [AtomicU64; BATCH_SIZE_BOUNDS.len()],
    writes: AtomicU64,
    batches: AtomicU64,
}

/// A reading of [`WriteQueueStats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteQueueSnapshot {
    pub queued: u64,
    /// Batches of at most each bound (cumulative, as Prometheus wants).
    pub cumulative: [u64; BATCH_SIZE_BOUNDS.len()],
    /// Writes committed or failed in batches, and the number of batches.
    pub writes: u64,
    pub batches: u64,
}

impl WriteQueueStats {
    /// A write is about to be queued.
    pub fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A write left the queue without being drained (its sender failed).
    pub fn abandoned(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// A batch of `size` writes was drained from the queue.
    pub fn drained(&self, size: usize) {
        let size = size as u64;
        self.queued.fetch_sub(size, Ordering::Relaxed);
        let bucket = BATCH_SIZE_BOUNDS.iter().position(|b| size <= *b).unwrap_or(BATCH_SIZE_BOUNDS.len() - 1);
        self.per_bound[bucket].fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(size, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> WriteQueueSnapshot {
        let mut cumulative = [0; BATCH_SIZE_BOUNDS.len()];
        let mut running = 0;
        for (out, n) in cumulative.iter_mut().zip(&self.per_bound) {
            running += n.load(Ordering::Relaxed);
            *out = running;
        }
        WriteQueueSnapshot {
            queued: self.queued.load(Ordering::Relaxed),
            cumulative,
            writes: self.writes.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeartbeatBatcher {
    queue: mpsc::Sender<(HeartbeatCommit, Reply)>,
    stats: Arc<WriteQueueStats>,
}

impl HeartbeatBatcher {
    /// Starts the writer task. `apply` runs one transaction for a batch and
    /// returns one outcome per commit, in order; an `Err` means nothing of
    /// the batch was committed.
    pub fn spawn<F, Fut>(stats: Arc<WriteQueueStats>, apply: F) -> Self
    where
        F: Fn(Vec<HeartbeatCommit>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<Vec<StoreResult<HeartbeatOutcome>>>> + Send,
    {
        let (queue, mut rx) = mpsc::channel::<(HeartbeatCommit, Reply)>(QUEUE_CAPACITY);
        let writer_stats = stats.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let (commits, replies) = drain(first, &mut rx);
                writer_stats.drained(commits.len());
                answer(replies, apply(commits).await);
            }
        });
        Self { queue, stats }
    }

    /// Starts `shards` writers; a heartbeat always goes to the shard of its
    /// agent, so one agent's heartbeats stay in order while different
    /// agents' batches commit in parallel (useful where the database has
    /// more than one writer, as PostgreSQL does).
    pub fn spawn_sharded<F, Fut>(shards: usize, stats: &Arc<WriteQueueStats>, apply: F) -> ShardedBatcher
    where
        F: Fn(Vec<HeartbeatCommit>) -> Fut + Send + Sync + 'static + Clone,
        Fut: Future<Output = StoreResult<Vec<StoreResult<HeartbeatOutcome>>>> + Send,
    {
        ShardedBatcher {
            shards: (0..shards.max(1)).map(|_| Self::spawn(stats.clone(), apply.clone())).collect(),
        }
    }

    /// Queues one heartbeat and waits until its batch has committed.
    pub async fn submit(&self, commit: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        if self.queue.send((commit, reply)).await.is_err() {
            self.stats.abandoned();
            return Err(StoreError::Unavailable("the heartbeat writer stopped".into()));
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the heartbeat writer stopped before committing".into()))?
    }
}

/// The first queued heartbeat and whatever else is already waiting, up to
/// `MAX_BATCH`.
fn drain(
    first: (HeartbeatCommit, Reply),
    rx: &mut mpsc::Receiver<(HeartbeatCommit, Reply)>,
) -> (Vec<HeartbeatCommit>, Vec<Reply>) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    batch.into_iter().unzip()
}

/// Answers every caller of a batch: its own outcome after a commit, or the
/// batch's error when nothing was committed.
fn answer(replies: Vec<Reply>, result: StoreResult<Vec<StoreResult<HeartbeatOutcome>>>) {
    match result {
        Ok(outcomes) if outcomes.len() == replies.len() => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Ok(_) => {
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend("batch outcome count mismatch".into())));
            }
        }
        // Each caller gets the batch's own error: an unreachable database
        // stays `Unavailable` (503), not a generic failure.
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Several batchers, one per shard of agent ids.
#[derive(Debug, Clone)]
pub struct ShardedBatcher {
    shards: Vec<HeartbeatBatcher>,
}

impl ShardedBatcher {
    pub async fn submit(&self, commit: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        let shard = (commit.agent_id.as_u128() % self.shards.len() as u128) as usize;
        self.shards[shard].submit(commit).await
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn batches_land_in_the_smallest_bound_that_holds_them_and_depth_counts_undrained_writes() {
        let stats = WriteQueueStats::default();
        for _ in 0..7 {
            stats.enqueued();
        }
        stats.drained(1);
        stats.drained(2);
        stats.drained(3);
        let s = stats.snapshot();
        assert_eq!(s.queued, 1, "seven queued, six drained");
        assert_eq!((s.writes, s.batches), (6, 3));
        // Bounds 1, 2, 4, ...: sizes 1 | 2 | 3 fall in le=1, le=2, le=4.
        assert_eq!(&s.cumulative[..4], &[1, 2, 3, 3]);
        assert_eq!(s.cumulative[BATCH_SIZE_BOUNDS.len() - 1], 3);
        stats.drained(MAX_BATCH);
        assert_eq!(stats.snapshot().cumulative[BATCH_SIZE_BOUNDS.len() - 2], 3, "a full batch is above 256");
        assert_eq!(stats.snapshot().cumulative[BATCH_SIZE_BOUNDS.len() - 1], 4);
    }
}
