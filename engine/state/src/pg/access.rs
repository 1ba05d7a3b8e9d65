//! Tokens and the audit trail (as `crate::store::access`): a token's
//! creation or revocation and its audit record are one transaction.

use deadpool_postgres::GenericClient;

use super::{Pg, execute, query, query_one, query_opt, unique_violation};
use crate::{AuditQuery, AuditRecord, StateError, TokenRecord};

const TOKEN_COLUMNS: &str = "name, role, hash, created_at_ms, created_by, last_used_ms, revoked_at_ms";

fn token_of(r: &tokio_postgres::Row) -> Result<TokenRecord, StateError> {
    TokenRecord::from_row((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
}

/// Append `a` to the audit trail; its id.
pub(super) async fn insert_audit(c: &impl GenericClient, a: &AuditRecord) -> Result<i64, StateError> {
    Ok(query_one(
        c,
        "INSERT INTO audit (at_ms, actor, action, run_id, detail, outcome) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id",
        &[&a.at_ms, &a.actor, &a.action, &a.run_id, &a.detail, &a.outcome],
    )
    .await?
    .get(0))
}

impl Pg {
    /// Record a new token and the audit record of its creation, in one
    /// transaction; a name that exists or existed is refused
    /// (`TokenExists`).
    pub fn create_token(&self, token: &TokenRecord, audit: &AuditRecord) -> Result<(), StateError> {
        let token = token.clone();
        let audit = audit.clone();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let st = tx
                    .prepare_cached(
                        "INSERT INTO tokens (name, role, hash, created_at_ms, created_by, last_used_ms, \
                         revoked_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .await?;
                let hash: &[u8] = &token.hash.as_bytes()[..];
                let inserted = tx
                    .execute(
                        &st,
                        &[
                            &token.name,
                            &token.role.as_str(),
                            &hash,
                            &token.created_at_ms,
                            &token.created_by,
                            &token.last_used_ms,
                            &token.revoked_at_ms,
                        ],
                    )
                    .await;
                match inserted {
                    Ok(_) => {}
                    Err(e) if unique_violation(&e, "tokens_pkey") => {
                        return Err(StateError::TokenExists(token.name.clone()));
                    }
                    Err(e) => return Err(e.into()),
                }
                insert_audit(&tx, &audit).await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    /// Revoke the token `name` and record `audit`, in one transaction. The
    /// token as it is now.
    pub fn revoke_token(&self, name: &str, at_ms: i64, audit: &AuditRecord) -> Result<TokenRecord, StateError> {
        let name = name.to_string();
        let audit = audit.clone();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let Some(row) = query_opt(
                    &tx,
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = $1 FOR UPDATE"),
                    &[&name],
                )
                .await?
                else {
                    return Err(StateError::UnknownToken(name));
                };
                let mut token = token_of(&row)?;
                if let Some(at_ms) = token.revoked_at_ms {
                    return Err(StateError::TokenRevoked { name, at_ms });
                }
                execute(
                    &tx,
                    "UPDATE tokens SET revoked_at_ms = $2 WHERE name = $1",
                    &[&name, &at_ms],
                )
                .await?;
                insert_audit(&tx, &audit).await?;
                tx.commit().await?;
                token.revoked_at_ms = Some(at_ms);
                Ok(token)
            })
        })
    }

    /// Note that the token `name` was used at `at_ms` (kept if later than
    /// what is recorded).
    pub fn touch_token(&self, name: &str, at_ms: i64) -> Result<(), StateError> {
        let name = name.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                execute(
                    &*c,
                    "UPDATE tokens SET last_used_ms = $2 WHERE name = $1 AND (last_used_ms IS NULL OR last_used_ms < $2)",
                    &[&name, &at_ms],
                )
                .await?;
                Ok(())
            })
        })
    }

    /// Append to the audit trail; the record's id.
    pub fn record_audit(&self, audit: &AuditRecord) -> Result<i64, StateError> {
        let audit = audit.clone();
        self.exec(move |c| Box::pin(async move { insert_audit(&*c, &audit).await }))
    }

    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        self.exec(|c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at_ms, name"),
                    &[],
                )
                .await?;
                rows.iter().map(token_of).collect()
            })
        })
    }

    /// The audit records `q` asks for, newest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StateError> {
        let q = q.clone();
        self.exec(move |c| {
            Box::pin(async move {
                let limit: Option<i64> = q.limit.map(i64::from);
                let rows = query(
                    &*c,
                    "SELECT id, at_ms, actor, action, run_id, detail, outcome FROM audit \
                     WHERE ($1::text IS NULL OR run_id = $1) AND ($2::text IS NULL OR actor = $2) \
                     AND ($3::text IS NULL OR action = $3) AND ($4::bigint IS NULL OR at_ms >= $4) \
                     ORDER BY id DESC LIMIT $5",
                    &[&q.run_id, &q.actor, &q.action, &q.since_ms, &limit],
                )
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| AuditRecord {
                        id: r.get(0),
                        at_ms: r.get(1),
                        actor: r.get(2),
                        action: r.get(3),
                        run_id: r.get(4),
                        detail: r.get(5),
                        outcome: r.get(6),
                    })
                    .collect())
            })
        })
    }
}
