//! Background WAL checkpoints.

use std::path::Path;

use rusqlite::Connection;

use super::rows::backend;
use crate::store::{StoreError, StoreResult};

/// Pages the WAL may hold before the writer checkpoints it itself: a
/// backstop for when the background checkpointer falls behind.
pub(super) const WAL_BACKSTOP_PAGES: u32 = 16_384;
/// How long commits accumulate between background checkpoints, so that a
/// page rewritten by many commits is copied into the database file once.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Copies committed WAL frames into the database file on a thread and
/// connection of its own (a PASSIVE checkpoint blocks neither the writer
/// nor readers), so the writer, which every write waits for, never stops
/// to do it.
pub(super) struct Checkpointer {
    committed: std::sync::mpsc::SyncSender<()>,
}

impl Checkpointer {
    pub(super) fn spawn(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;").map_err(backend)?;
        let (committed, commits) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("oneprotect-sqlite-checkpoint".into())
            .spawn(move || Self::run(&conn, &commits))
            .map_err(|e| StoreError::Unavailable(format!("could not start the checkpointer: {e}")))?;
        Ok(Self { committed })
    }

    /// Ends when the store is dropped (the channel disconnects).
    fn run(conn: &Connection, commits: &std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut last = std::time::Instant::now();
        while commits.recv().is_ok() {
            while let Some(left) = CHECKPOINT_INTERVAL.checked_sub(last.elapsed()) {
                if let Err(RecvTimeoutError::Disconnected) = commits.recv_timeout(left) {
                    return;
                }
            }
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "background WAL checkpoint failed; the writer's backstop will checkpoint");
            }
            last = std::time::Instant::now();
        }
    }

    /// Tells the checkpointer a transaction committed; never blocks.
    pub(super) fn note_commit(&self) {
        let _ = self.committed.try_send(());
    }
}
