//! Dashboard sessions (`dashboard_sessions`) and the revocation of account
//! tokens. Writes run on the writer's connection, reads on a reader's.

use creditd_core::engine::Refusal;
use jiff::Timestamp;

use super::codec::{self, truncate};
use super::{Db, DbExt, Row, params};
use crate::{DashboardSession, Reply, StoreError};

const COLUMNS: &str = "id, account_id, token_id, secret_hash, created_at, expires_at, revoked_at";

fn row(row: &dyn Row) -> Result<DashboardSession, StoreError> {
    let revoked: Option<i64> = row.get(6)?;
    Ok(DashboardSession {
        id: row.get(0)?,
        account_id: row.get(1)?,
        token_id: row.get(2)?,
        secret_hash: row.get(3)?,
        created_at: codec::timestamp(row.get(4)?)?,
        expires_at: codec::timestamp(row.get(5)?)?,
        revoked_at: revoked.map(codec::timestamp).transpose()?,
    })
}

pub fn session(conn: &dyn Db, id: &str) -> Result<Option<DashboardSession>, StoreError> {
    conn.query_opt(&format!("SELECT {COLUMNS} FROM dashboard_sessions WHERE id = ?1"), params![id], row)
}

/// `Command::CreateSession`: the account must exist, and the token it was
/// signed in with must still be there.
pub fn create(conn: &dyn Db, mut session: DashboardSession) -> Result<Reply, StoreError> {
    if !conn.exists(
        "SELECT 1 FROM account_tokens WHERE id = ?1 AND account_id = ?2",
        params![session.token_id, session.account_id],
    )? {
        return Err(Refusal::NotFound(format!("token {:?}", session.token_id)).into());
    }
    if conn.exists("SELECT 1 FROM dashboard_sessions WHERE id = ?1", params![session.id])? {
        return Err(Refusal::Conflict(format!("session {:?} already exists", session.id)).into());
    }
    session.created_at = truncate(session.created_at);
    session.expires_at = truncate(session.expires_at);
    session.revoked_at = None;
    conn.write(
        &format!("INSERT INTO dashboard_sessions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)"),
        params![
            session.id,
            session.account_id,
            session.token_id,
            session.secret_hash,
            codec::micros(session.created_at),
            codec::micros(session.expires_at)
        ],
    )?;
    Ok(Reply::Session(session))
}

/// `Command::RevokeSessions`: revoking what is already revoked is no error.
pub fn revoke(conn: &dyn Db, account_id: &str, session_id: Option<&str>, now: Timestamp) -> Result<Reply, StoreError> {
    let now = codec::micros(truncate(now));
    match session_id {
        Some(id) => conn.execute(
            "UPDATE dashboard_sessions SET revoked_at = ?3 WHERE id = ?1 AND account_id = ?2 AND revoked_at IS NULL",
            params![id, account_id, now],
        )?,
        None => conn.execute(
            "UPDATE dashboard_sessions SET revoked_at = ?2 WHERE account_id = ?1 AND revoked_at IS NULL",
            params![account_id, now],
        )?,
    };
    Ok(Reply::Deleted)
}

/// `Command::RevokeAccountToken`: the token is deleted (it no longer signs
/// anything in) and its sessions are revoked. `404` if it is not there.
pub fn revoke_token(conn: &dyn Db, account_id: &str, token_id: &str, now: Timestamp) -> Result<Reply, StoreError> {
    if conn.execute("DELETE FROM account_tokens WHERE id = ?1 AND account_id = ?2", params![token_id, account_id])? == 0
    {
        return Err(Refusal::NotFound(format!("token {token_id:?}")).into());
    }
    conn.execute(
        "UPDATE dashboard_sessions SET revoked_at = ?2 WHERE token_id = ?1 AND revoked_at IS NULL",
        params![token_id, codec::micros(truncate(now))],
    )?;
    Ok(Reply::Deleted)
}
