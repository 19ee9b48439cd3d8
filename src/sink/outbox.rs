//! The event outbox (SQLite): every event is written here before it is published and deleted
//! when the broker acknowledges it (PUBACK), so events survive a broker outage and a daemon
//! crash; unsent ones are replayed after reconnect and after restart. Bounded: beyond
//! `max_events` unsent rows the oldest are dropped, and counted.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

#[derive(Debug, thiserror::Error)]
#[error("outbox {path}: {source}")]
pub struct OutboxError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    max_events: u64,
    dropped: u64,
}

/// An unsent event.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: String,
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Outbox {
    pub fn open(path: &Path, max_events: u64) -> Result<Self, OutboxError> {
        let err = |source| OutboxError { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let conn = Connection::open(path).map_err(err)?;
        // WAL + FULL sync: a committed event survives SIGKILL and power loss.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, payload BLOB NOT NULL);",
        )
        .map_err(err)?;
        Ok(Self { conn, path: path.to_owned(), max_events: max_events.max(1), dropped: 0 })
    }

    fn err(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError { path: self.path.clone(), source }
    }

    /// Stores an event, then drops the oldest beyond the bound.
    pub fn insert(&mut self, p: &Pending) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO events (id, topic, payload) VALUES (?1, ?2, ?3)",
                params![p.id, p.topic, p.payload],
            )
            .map_err(|e| self.err(e))?;
        let over = self.len()?.saturating_sub(self.max_events);
        if over > 0 {
            self.conn
                .execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?1)",
                    params![over],
                )
                .map_err(|e| self.err(e))?;
            self.dropped += over;
            tracing::warn!(dropped = over, total = self.dropped, "outbox full: dropped the oldest events");
        }
        Ok(())
    }

    /// The broker has the event.
    pub fn mark_sent(&mut self, id: &str) -> Result<(), OutboxError> {
        self.conn.execute("DELETE FROM events WHERE id = ?1", params![id]).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Up to `limit` unsent events with `after < seq <= until`, oldest first, with their seq:
    /// a replay in pages, so a long outage's backlog never overfills the client's queue.
    pub fn unsent_page(&self, after: i64, until: i64, limit: usize) -> Result<Vec<(i64, Pending)>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, id, topic, payload FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after, until, limit as i64], |r| {
                Ok((r.get(0)?, Pending { id: r.get(1)?, topic: r.get(2)?, payload: r.get(3)? }))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The newest event's seq (0 when empty).
    pub fn last_seq(&self) -> Result<i64, OutboxError> {
        self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0)).map_err(|e| self.err(e))
    }

    pub fn len(&self) -> Result<u64, OutboxError> {
        self.conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).map_err(|e| self.err(e))
    }

    pub fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len()? == 0)
    }

    /// Events dropped because the outbox was full, since open.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u32) -> Pending {
        Pending { id: format!("id{i}"), topic: "t".into(), payload: vec![i as u8] }
    }

    #[test]
    fn events_survive_reopen_until_sent_and_the_bound_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite");
        {
            let mut o = Outbox::open(&path, 3).unwrap();
            for i in 0..5 {
                o.insert(&ev(i)).unwrap();
            }
            assert_eq!(o.dropped(), 2);
            o.mark_sent("id3").unwrap();
        }
        let o = Outbox::open(&path, 3).unwrap();
        let page = o.unsent_page(0, o.last_seq().unwrap(), 10).unwrap();
        let ids: Vec<String> = page.into_iter().map(|(_, p)| p.id).collect();
        assert_eq!(ids, ["id2", "id4"]);
    }

    #[test]
    fn pages_cover_a_range_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(&dir.path().join("o.sqlite"), 100).unwrap();
        for i in 0..7 {
            o.insert(&ev(i)).unwrap();
        }
        o.mark_sent("id2").unwrap();
        let until = o.last_seq().unwrap();
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = o.unsent_page(after, until - 1, 2).unwrap();
            let Some((last, _)) = page.last() else { break };
            after = *last;
            seen.extend(page.into_iter().map(|(_, p)| p.id));
        }
        assert_eq!(seen, ["id0", "id1", "id3", "id4", "id5"], "id6 is past `until`");
    }
}
