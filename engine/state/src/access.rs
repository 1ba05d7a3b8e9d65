//! Who may do what, and who did what: API tokens (stored hashed, with a
//! role) and the audit trail of operator actions.
//!
//! A token itself is never stored: only its SHA-256 ([`TokenHash`]). The
//! tokens are 256 random bits, so a hash cannot be turned back into one;
//! no salt or slow hash is needed for values nobody chose.

use sha2::{Digest, Sha256};

use crate::StateError;

/// What a token may do. Each role may do everything the one before it
/// may (`Viewer < Operator < Admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: runs, their status, events, logs and metrics, the API
    /// document.
    Viewer,
    /// A viewer that also submits workflows as source and steers runs
    /// (pause, resume, cancel, retry, rollback).
    Operator,
    /// An operator that also submits workflow files by their path on the
    /// server, manages tokens and reads the audit trail.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`; None for a name no role has.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 of a token: what is stored and compared, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token` (as presented: the caller trims it).
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether two hashes are equal, in a time that does not depend on
    /// where they differ.
    pub fn matches(&self, other: &TokenHash) -> bool {
        let diff = self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_stored(bytes: &[u8]) -> Option<TokenHash> {
        <[u8; 32]>::try_from(bytes).ok().map(TokenHash)
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the token, but nothing a log needs either.
        f.write_str("TokenHash(..)")
    }
}

/// A named token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its name: what the audit trail calls whoever uses it. Unique for
    /// ever (a revoked token's name is not given out again).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The hash of the token.
    pub hash: TokenHash,
    /// Created, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// The name of the token that created it.
    pub created_by: String,
    /// Last accepted, ms since the Unix epoch (recorded at most about once
    /// a minute).
    pub last_used_ms: Option<i64>,
    /// Revoked, ms since the Unix epoch; a revoked token opens nothing.
    pub revoked_at_ms: Option<i64>,
}

/// One operator action: who did what, to which run, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its position in the trail (0 for one not recorded yet).
    pub id: i64,
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The name of the token used (or how the caller was let in).
    pub actor: String,
    /// submit, pause, resume, cancel, retry, rollback, token_create,
    /// token_revoke.
    pub action: String,
    /// The run it was about, if any.
    pub run_id: Option<String>,
    /// What was asked, in a few words (never a token or a secret).
    pub detail: Option<String>,
    /// `ok`, or why it was refused.
    pub outcome: String,
}

/// Which audit records to read. Newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only about this run.
    pub run_id: Option<String>,
    /// Only by this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// At most this many (None: all).
    pub limit: Option<u32>,
}

/// A token as stored: name, role, hash, created at, by, last used,
/// revoked at.
pub(crate) type TokenRow = (String, String, Vec<u8>, i64, String, Option<i64>, Option<i64>);

impl TokenRecord {
    /// A stored token, checked: a role or hash no token has is an error
    /// naming the token.
    pub(crate) fn from_row(row: TokenRow) -> Result<TokenRecord, StateError> {
        let (name, role, hash, created_at_ms, created_by, last_used_ms, revoked_at_ms) = row;
        let Some(role) = Role::parse(&role) else {
            return Err(StateError::CorruptToken {
                problem: format!("the unknown role {role:?}"),
                name,
            });
        };
        let Some(hash) = TokenHash::from_stored(&hash) else {
            return Err(StateError::CorruptToken {
                problem: format!("a hash of {} bytes instead of 32", hash.len()),
                name,
            });
        };
        Ok(TokenRecord {
            name,
            role,
            hash,
            created_at_ms,
            created_by,
            last_used_ms,
            revoked_at_ms,
        })
    }
}
