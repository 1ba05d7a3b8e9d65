//! Tokens and the audit trail in the store: their tables' reads, and the
//! writes the writer thread carries out (in the batch's transaction, each
//! in its own savepoint, like every other write).
//!
//! A token's creation or revocation and its audit record are one write:
//! both are durable, or neither.

use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use crate::{AuditQuery, AuditRecord, StateError, TokenRecord};

/// The tables (created with the store's schema: `CREATE ... IF NOT
/// EXISTS` adds them to a database made before they existed).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    last_used_ms INTEGER,
    revoked_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    run_id TEXT,
    detail TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_run ON audit (run_id, id);
";

/// A write about tokens or the audit trail.
pub(super) enum Write {
    Create(Box<TokenRecord>, Box<AuditRecord>),
    Revoke {
        name: String,
        at_ms: i64,
        audit: Box<AuditRecord>,
    },
    Touch {
        name: String,
        at_ms: i64,
    },
    Record(Box<AuditRecord>),
}

impl Write {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Write::Create(..) => "CreateToken",
            Write::Revoke { .. } => "RevokeToken",
            Write::Touch { .. } => "TouchToken",
            Write::Record(..) => "RecordAudit",
        }
    }
}

/// What a [`Write`] did.
#[derive(Debug)]
pub(super) enum Done {
    Created,
    Revoked(Box<TokenRecord>),
    Touched,
    Recorded(i64),
}

/// Carry out `write` on the writer's connection.
pub(super) fn apply(conn: &Connection, write: &Write) -> Result<Done, StateError> {
    match write {
        Write::Create(token, audit) => {
            let exists: Option<String> = conn
                .prepare_cached("SELECT name FROM tokens WHERE name = ?1")?
                .query_row(params![token.name], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return Err(StateError::TokenExists(token.name.clone()));
            }
            conn.prepare_cached(
                "INSERT INTO tokens (name, role, hash, created_at_ms, created_by, last_used_ms, revoked_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                token.name,
                token.role.as_str(),
                &token.hash.as_bytes()[..],
                token.created_at_ms,
                token.created_by,
                token.last_used_ms,
                token.revoked_at_ms
            ])?;
            insert_audit(conn, audit)?;
            Ok(Done::Created)
        }
        Write::Revoke { name, at_ms, audit } => {
            let Some(mut token) = token_named(conn, name)? else {
                return Err(StateError::UnknownToken(name.clone()));
            };
            if let Some(at_ms) = token.revoked_at_ms {
                return Err(StateError::TokenRevoked {
                    name: name.clone(),
                    at_ms,
                });
            }
            conn.prepare_cached("UPDATE tokens SET revoked_at_ms = ?2 WHERE name = ?1")?
                .execute(params![name, at_ms])?;
            insert_audit(conn, audit)?;
            token.revoked_at_ms = Some(*at_ms);
            Ok(Done::Revoked(Box::new(token)))
        }
        Write::Touch { name, at_ms } => {
            conn.prepare_cached(
                "UPDATE tokens SET last_used_ms = ?2 WHERE name = ?1 AND (last_used_ms IS NULL OR last_used_ms < ?2)",
            )?
            .execute(params![name, at_ms])?;
            Ok(Done::Touched)
        }
        Write::Record(audit) => insert_audit(conn, audit).map(Done::Recorded),
    }
}

pub(super) fn insert_audit(conn: &Connection, a: &AuditRecord) -> Result<i64, StateError> {
    conn.prepare_cached(
        "INSERT INTO audit (at_ms, actor, action, run_id, detail, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![a.at_ms, a.actor, a.action, a.run_id, a.detail, a.outcome])?;
    Ok(conn.last_insert_rowid())
}

const TOKEN_COLUMNS: &str = "name, role, hash, created_at_ms, created_by, last_used_ms, revoked_at_ms";

fn token_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<crate::access::TokenRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn token_named(conn: &Connection, name: &str) -> Result<Option<TokenRecord>, StateError> {
    let row = conn
        .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = ?1"))?
        .query_row(params![name], token_of)
        .optional()?;
    row.map(TokenRecord::from_row).transpose()
}

impl Sqlite {
    fn access(&self, write: Write) -> Result<Done, StateError> {
        self.write(|reply| super::Request::Access(write, reply))
    }

    /// Record a new token and the audit record of its creation, in one
    /// transaction. A name that exists or existed is refused
    /// ([`StateError::TokenExists`]).
    pub fn create_token(&self, token: &TokenRecord, audit: &AuditRecord) -> Result<(), StateError> {
        self.access(Write::Create(Box::new(token.clone()), Box::new(audit.clone())))
            .map(|_| ())
    }

    /// Revoke the token `name` and record `audit`, in one transaction.
    /// The token as it is now.
    pub fn revoke_token(&self, name: &str, at_ms: i64, audit: &AuditRecord) -> Result<TokenRecord, StateError> {
        match self.access(Write::Revoke {
            name: name.to_string(),
            at_ms,
            audit: Box::new(audit.clone()),
        })? {
            Done::Revoked(t) => Ok(*t),
            other => Err(StateError::Writer(format!("revoking a token answered {other:?}"))),
        }
    }

    /// Note that the token `name` was used at `at_ms` (kept if later than
    /// what is recorded).
    pub fn touch_token(&self, name: &str, at_ms: i64) -> Result<(), StateError> {
        self.access(Write::Touch {
            name: name.to_string(),
            at_ms,
        })
        .map(|_| ())
    }

    /// Append to the audit trail; the record's id.
    pub fn record_audit(&self, audit: &AuditRecord) -> Result<i64, StateError> {
        match self.access(Write::Record(Box::new(audit.clone())))? {
            Done::Recorded(id) => Ok(id),
            other => Err(StateError::Writer(format!(
                "recording an audit record answered {other:?}"
            ))),
        }
    }

    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at_ms, name"
            ))?;
            let rows = stmt.query_map([], token_of)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(TokenRecord::from_row(row?)?);
            }
            Ok(out)
        })
    }

    /// The audit records `q` asks for, newest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StateError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at_ms, actor, action, run_id, detail, outcome FROM audit \
                 WHERE (?1 IS NULL OR run_id = ?1) AND (?2 IS NULL OR actor = ?2) \
                 AND (?3 IS NULL OR action = ?3) AND (?4 IS NULL OR at_ms >= ?4) \
                 ORDER BY id DESC LIMIT ?5",
            )?;
            let limit = q.limit.map_or(-1, i64::from);
            let rows = stmt.query_map(params![q.run_id, q.actor, q.action, q.since_ms, limit], |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    run_id: r.get(4)?,
                    detail: r.get(5)?,
                    outcome: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{Role, Store, TokenHash};

    fn audit(actor: &str, action: &str, run_id: Option<&str>, at_ms: i64) -> AuditRecord {
        AuditRecord {
            id: 0,
            at_ms,
            actor: actor.into(),
            action: action.into(),
            run_id: run_id.map(str::to_string),
            detail: None,
            outcome: "ok".into(),
        }
    }

    fn token(name: &str, role: Role, secret: &str) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            role,
            hash: TokenHash::of(secret),
            created_at_ms: 5,
            created_by: "local-admin".into(),
            last_used_ms: None,
            revoked_at_ms: None,
        }
    }

    #[test]
    fn tokens_are_created_listed_touched_and_revoked_with_their_audit_records() -> Result<(), StateError> {
        let dir = tempfile::tempdir().map_err(|e| StateError::Dir {
            path: "tmp".into(),
            source: e,
        })?;
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path)?;
            s.create_token(
                &token("ci", Role::Operator, "s1"),
                &audit("local-admin", "token_create", None, 5),
            )?;
            s.create_token(
                &token("ro", Role::Viewer, "s2"),
                &audit("local-admin", "token_create", None, 6),
            )?;
            s.touch_token("ci", 40)?;
            // An older use does not move it back.
            s.touch_token("ci", 30)?;
            let revoked = s.revoke_token("ro", 50, &audit("local-admin", "token_revoke", None, 50))?;
            assert_eq!(revoked.revoked_at_ms, Some(50));
        }
        // Durable: a new owner reads the same.
        let s = Store::open(&path)?;
        let tokens = s.tokens()?;
        assert_eq!(tokens.len(), 2);
        assert_eq!((tokens[0].name.as_str(), tokens[0].role), ("ci", Role::Operator));
        assert!(tokens[0].hash.matches(&TokenHash::of("s1")));
        assert!(!tokens[0].hash.matches(&TokenHash::of("s2")));
        assert_eq!(tokens[0].last_used_ms, Some(40));
        assert_eq!(tokens[1].revoked_at_ms, Some(50));

        // A name is given out once: not again while the token lives, nor
        // after it was revoked; a failed creation records nothing.
        for name in ["ci", "ro"] {
            let e = s.create_token(
                &token(name, Role::Admin, "s3"),
                &audit("local-admin", "token_create", None, 60),
            );
            assert!(matches!(&e, Err(StateError::TokenExists(n)) if n == name), "{e:?}");
        }
        assert!(matches!(
            s.revoke_token("ro", 70, &audit("a", "token_revoke", None, 70)),
            Err(StateError::TokenRevoked { at_ms: 50, .. })
        ));
        assert!(matches!(
            s.revoke_token("nobody", 70, &audit("a", "token_revoke", None, 70)),
            Err(StateError::UnknownToken(_))
        ));
        let trail = s.audit(&AuditQuery::default())?;
        let actions: Vec<&str> = trail.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            ["token_revoke", "token_create", "token_create"],
            "newest first"
        );
        Ok(())
    }

    #[test]
    fn the_audit_trail_filters_by_run_actor_action_and_time() -> Result<(), StateError> {
        let s = Store::open(Path::new(":memory:"))?;
        let records = [
            audit("alice", "submit", Some("r1"), 10),
            audit("bob", "pause", Some("r1"), 20),
            audit("alice", "submit", Some("r2"), 30),
            audit("alice", "resume", Some("r1"), 40),
        ];
        let mut ids = Vec::new();
        for r in &records {
            ids.push(s.record_audit(r)?);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let of = |q: AuditQuery| -> Result<Vec<(String, String, i64)>, StateError> {
            Ok(s.audit(&q)?.into_iter().map(|a| (a.actor, a.action, a.at_ms)).collect())
        };
        let r1 = of(AuditQuery {
            run_id: Some("r1".into()),
            ..AuditQuery::default()
        })?;
        assert_eq!(
            r1,
            [
                ("alice".to_string(), "resume".to_string(), 40),
                ("bob".into(), "pause".into(), 20),
                ("alice".into(), "submit".into(), 10)
            ]
        );
        let alice_submits = of(AuditQuery {
            actor: Some("alice".into()),
            action: Some("submit".into()),
            since_ms: Some(15),
            ..AuditQuery::default()
        })?;
        assert_eq!(alice_submits, [("alice".to_string(), "submit".to_string(), 30)]);
        assert_eq!(
            of(AuditQuery {
                limit: Some(1),
                ..AuditQuery::default()
            })?
            .len(),
            1
        );
        Ok(())
    }

    #[test]
    fn a_store_made_before_tokens_existed_gets_their_tables_and_keeps_its_runs() -> Result<(), StateError> {
        let dir = tempfile::tempdir().map_err(|e| StateError::Dir {
            path: "tmp".into(),
            source: e,
        })?;
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path)?;
            conn.execute_batch(
                "CREATE TABLE runs (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, file TEXT NOT NULL, \
                 status TEXT NOT NULL, created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL, \
                 inputs TEXT NOT NULL); \
                 INSERT INTO runs VALUES ('old', 'w', 'w.k', 'succeeded', 1, 2, '{}');",
            )?;
        }
        let s = Store::open(&path)?;
        assert_eq!(s.run("old")?.status, crate::RunStatus::Succeeded);
        assert!(s.tokens()?.is_empty());
        s.create_token(&token("t", Role::Viewer, "x"), &audit("a", "token_create", None, 1))?;
        assert_eq!(s.tokens()?.len(), 1);
        Ok(())
    }

    #[test]
    fn hashes_compare_whole_and_never_show() {
        let a = TokenHash::of("abc");
        assert!(a.matches(&TokenHash::of("abc")));
        assert!(!a.matches(&TokenHash::of("abd")));
        assert!(!a.matches(&TokenHash::of("ab")));
        assert_eq!(format!("{a:?}"), "TokenHash(..)");
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("root"), None);
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
