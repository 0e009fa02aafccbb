//! Opening a database file: owner-only modes, the connection settings
//! (WAL, full sync, a bounded WAL file) and the versioned migrations.

use std::path::Path;

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::rows::{backend, micros};
use crate::store::{StoreError, StoreResult, sql};

/// Versioned migrations, applied in order inside a transaction each.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/sqlite/0001_init.sql")),
    (2, "issued_certificates", include_str!("../../../migrations/sqlite/0002_issued_certificates.sql")),
    (3, "event_relay", include_str!("../../../migrations/sqlite/0003_event_relay.sql")),
    (4, "retention", include_str!("../../../migrations/sqlite/0004_retention.sql")),
];

/// Opens the database file with the store's settings (WAL, full sync).
pub(super) fn connect(path: &Path) -> StoreResult<Connection> {
    owner_only(path)?;
    let conn = Connection::open(path).map_err(backend)?;
    configure(&conn)?;
    Ok(conn)
}

/// The database holds hashes, audit records and identities: it is created
/// owner-only (0600), and an existing file found wider is narrowed. SQLite
/// gives its `-wal` and `-shm` files the database file's mode, so they are
/// owner-only too.
fn owner_only(path: &Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let cannot = |e: std::io::Error| {
            StoreError::Unavailable(format!("cannot open the SQLite database {}: {e}", path.display()))
        };
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the SQLite database was readable by others; narrowing it to 0600");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(cannot)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(cannot)?;
            }
            Err(e) => return Err(cannot(e)),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

pub(super) fn configure(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA journal_size_limit = 67108864;",
    )
    .map_err(backend)
}

/// Applies every migration not yet recorded; returns how many ran.
pub(super) fn migrate(conn: &mut Connection) -> StoreResult<usize> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
        .map_err(backend)?;
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let done: Option<i64> = tx
            .query_row(sql::MIGRATION_APPLIED.sqlite, [version], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        if done.is_none() {
            tx.execute_batch(sql).map_err(backend)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, micros(Utc::now())],
            )
            .map_err(backend)?;
            applied += 1;
        }
        tx.commit().map_err(backend)?;
    }
    Ok(applied)
}
