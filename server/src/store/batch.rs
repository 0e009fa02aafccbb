//! Group commit for PostgreSQL heartbeats: callers queue their write on a
//! bounded channel (a full queue makes them wait: back-pressure) and a
//! writer task applies whatever is queued in one transaction, then answers
//! every caller. A caller is answered only after the transaction committed,
//! so an acknowledged heartbeat is durable; a crash before the commit loses
//! only heartbeats nobody was told about. The SQLite writer
//! (`sqlite::writer`), which group-commits every write, shares the bounds.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};
use crate::model::{HeartbeatCommit, HeartbeatOutcome};

/// Queued heartbeats before callers wait.
pub const QUEUE_CAPACITY: usize = 8192;
/// Heartbeats applied in one transaction at most.
pub const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<StoreResult<HeartbeatOutcome>>;

#[derive(Debug, Clone)]
pub struct HeartbeatBatcher {
    queue: mpsc::Sender<(HeartbeatCommit, Reply)>,
}

impl HeartbeatBatcher {
    /// Starts the writer task. `apply` runs one transaction for a batch and
    /// returns one outcome per commit, in order; an `Err` means nothing of
    /// the batch was committed.
    pub fn spawn<F, Fut>(apply: F) -> Self
    where
        F: Fn(Vec<HeartbeatCommit>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<Vec<StoreResult<HeartbeatOutcome>>>> + Send,
    {
        let (queue, mut rx) = mpsc::channel::<(HeartbeatCommit, Reply)>(QUEUE_CAPACITY);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let (commits, replies) = drain(first, &mut rx);
                answer(replies, apply(commits).await);
            }
        });
        Self { queue }
    }

    /// Starts `shards` writers; a heartbeat always goes to the shard of its
    /// agent, so one agent's heartbeats stay in order while different
    /// agents' batches commit in parallel (useful where the database has
    /// more than one writer, as PostgreSQL does).
    pub fn spawn_sharded<F, Fut>(shards: usize, apply: F) -> ShardedBatcher
    where
        F: Fn(Vec<HeartbeatCommit>) -> Fut + Send + Sync + 'static + Clone,
        Fut: Future<Output = StoreResult<Vec<StoreResult<HeartbeatOutcome>>>> + Send,
    {
        ShardedBatcher { shards: (0..shards.max(1)).map(|_| Self::spawn(apply.clone())).collect() }
    }

    /// Queues one heartbeat and waits until its batch has committed.
    pub async fn submit(&self, commit: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((commit, reply)).await.map_err(|_| StoreError::Unavailable("the heartbeat writer stopped".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the heartbeat writer stopped before committing".into()))?
    }
}

/// The first queued heartbeat and whatever else is already waiting, up to
/// `MAX_BATCH`.
fn drain(first: (HeartbeatCommit, Reply), rx: &mut mpsc::Receiver<(HeartbeatCommit, Reply)>) -> (Vec<HeartbeatCommit>, Vec<Reply>) {
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
        Err(e) => {
            let text = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(text.clone())));
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
