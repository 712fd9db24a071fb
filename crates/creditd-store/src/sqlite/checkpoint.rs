//! WAL checkpoints off the writer's thread.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses its
//! threshold, on the writer's thread: every caller of that batch and of the
//! batches queued behind it waits while ~64 MiB of WAL are copied back into
//! the database. Here the commit only wakes a checkpointer thread, which
//! checkpoints through its own connection (`PASSIVE`: it never blocks the
//! writer or a reader) while the writer goes on committing.
//!
//! A checkpoint beside a busy writer never gets to the end of the WAL (the
//! writer appends while it copies), and the WAL only starts over from its
//! beginning once a checkpoint has reached its end. So when the thread has
//! copied the bulk, the writer's next commit finishes the job itself: it
//! copies only what was appended meanwhile, and its next transaction starts
//! the WAL over. Past `WRITER_CHECKPOINT_FRAMES` (the thread is stuck or
//! failing) the writer checkpoints in its commit as SQLite would: the WAL
//! never grows without bound.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use crate::StoreError;

/// WAL frames after which the checkpointer is woken (64 MiB at 4 KiB pages):
/// spread traffic rewrites the same index pages over and over, and a long
/// interval copies each back once instead of many times (BENCHMARKS.md).
pub const CHECKPOINT_FRAMES: i32 = 16_384;

/// How many times `frames` the WAL may grow before the writer checkpoints
/// in its commit itself.
const WRITER_CHECKPOINT_FACTOR: i32 = 4;

/// Where the checkpointer is, as the writer's commits see it.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Idle,
    /// Woken: copying the WAL back.
    Copying,
    /// Copied what there was; the writer's next commit finishes.
    Copied,
    Stop,
}

/// The checkpointer thread; dropping it stops and joins the thread.
struct Checkpointer {
    phase: Arc<(Mutex<Phase>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(mut conn: Connection) -> Result<Checkpointer, StoreError> {
        let phase = Arc::new((Mutex::new(Phase::Idle), Condvar::new()));
        let shared = phase.clone();
        let thread = std::thread::Builder::new()
            .name("creditd-checkpoint".into())
            .spawn(move || {
                let (lock, woken) = &*shared;
                loop {
                    {
                        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while *p != Phase::Copying && *p != Phase::Stop {
                            p = woken.wait(p).unwrap_or_else(|e| e.into_inner());
                        }
                        if *p == Phase::Stop {
                            return;
                        }
                    }
                    if let Err(e) = checkpoint(&mut conn) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; the writer checkpoints past its limit");
                    }
                    let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if *p == Phase::Copying {
                        *p = Phase::Copied;
                    }
                }
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { phase, thread: Some(thread) })
    }

    /// Wakes the thread when it is idle; true when it has copied the bulk
    /// since the last call, and the caller is to finish.
    fn wake_or_take_copied(&self) -> bool {
        let (lock, woken) = &*self.phase;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        match *p {
            Phase::Idle => {
                *p = Phase::Copying;
                woken.notify_one();
                false
            }
            Phase::Copied => {
                *p = Phase::Idle;
                true
            }
            Phase::Copying | Phase::Stop => false,
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, woken) = &*self.phase;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Stop;
        woken.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

fn checkpoint(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// Moves `writer`'s checkpoints to a thread of their own, which checkpoints
/// through `checkpointer` (a read-write connection to the same database). The thread lives as
/// long as the writer's connection: SQLite drops the hook, and with it the
/// thread, when that connection closes.
/// `frames` is when to checkpoint (`CHECKPOINT_FRAMES`).
pub fn checkpoint_off_thread(writer: &mut Connection, checkpointer: Connection, frames: i32) -> Result<(), StoreError> {
    let checkpointer = Checkpointer::start(checkpointer)?;
    let (due, writer_due) = (frames, frames.saturating_mul(WRITER_CHECKPOINT_FACTOR));
    writer.wal_hook(Some(move |wal: &mut Wal, frames: i32| {
        if frames >= writer_due || (frames >= due && checkpointer.wake_or_take_copied()) {
            wal.checkpoint_v2(CheckpointMode::PASSIVE)?;
        }
        Ok(())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::open_writer_connection;

    /// Frames of a WAL file of `len` bytes (4 KiB pages).
    fn frames(len: u64) -> u64 {
        len.saturating_sub(32) / (4096 + 24)
    }

    #[test]
    fn the_wal_starts_over_while_the_writer_keeps_committing() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Internal(e.to_string()))?;
        let path = dir.path().join("c.db");
        let mut writer = open_writer_connection(&path)?;
        writer.execute_batch("CREATE TABLE pages (body BLOB NOT NULL)")?;
        checkpoint_off_thread(&mut writer, open_writer_connection(&path)?, 64)?;
        // Every commit appends a page or two: 1,000 commits, one after
        // another, would make a WAL of 1,000+ frames if it never started over.
        for _ in 0..1000 {
            writer.execute("INSERT INTO pages VALUES (zeroblob(3000))", [])?;
        }
        let wal = std::fs::metadata(dir.path().join("c.db-wal")).map_err(|e| StoreError::Internal(e.to_string()))?;
        let limit = (64 * WRITER_CHECKPOINT_FACTOR + 8) as u64;
        assert!(frames(wal.len()) <= limit, "the WAL grew to {} frames", frames(wal.len()));
        // Dropping the writer stops the thread; everything committed is there.
        drop(writer);
        let reopened = open_writer_connection(&path)?;
        let rows: i64 = reopened.query_row("SELECT count(*) FROM pages", [], |r| r.get(0))?;
        assert_eq!(rows, 1000);
        Ok(())
    }
}
