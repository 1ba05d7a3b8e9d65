//! `drover token ...`: named API tokens with a role, made, listed and
//! revoked over the server's API by an admin token. The API and the token
//! this command itself shows are found as `drover batch` finds them
//! (`--api`/DROVER_API, `--cacert`/DROVER_CACERT; DROVER_TOKEN,
//! DROVER_TOKEN_FILE or the server's token file on this machine, which
//! holds its admin token).

use std::io::Write;
use std::process::ExitCode;

use drover_server::wire::{CreateTokenRequest, CreatedToken, TokenInfo, TokenList, TokenRole};
use reqwest::Method;

use crate::batch::DEFAULT_API;
use crate::batch::client::{ApiError, Client, Setup};
use crate::batch::render::{columns, utc};

pub(crate) const AFTER_HELP: &str = "\
Roles:
  viewer    reads: runs, status, events, logs, metrics, the API document
  operator  viewer + submits workflows (as source) and steers runs: pause, resume, cancel, retry, rollback
  admin     operator + submits workflow files by their path on the server, manages tokens, reads the audit trail

Submitting a workflow runs its scripts on the servers it names: give operator and admin tokens only to
those you would let do that.

The API and this command's own token (which must be an admin's) are found as `drover batch` finds
them: --api / DROVER_API (--cacert / DROVER_CACERT for https with a private CA); DROVER_TOKEN, DROVER_TOKEN_FILE, or the file `drover serve` writes on its
first start (api-token next to its state database), which holds the server's admin token.

Exit status: 0 success, 1 refused (400, 404, 409), 2 usage, 3 environment (the API cannot be reached,
refused the token or its role, or failed).";

/// `drover token`: its connection settings and command.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// The drover API's base URL.
    #[arg(long, env = "DROVER_API", value_name = "URL", default_value = DEFAULT_API, global = true)]
    api: String,
    /// For an https API: trust only the certificates in FILE (PEM: the CA
    /// that issued the server's certificate, or that certificate itself)
    /// instead of the built-in roots.
    #[arg(long, env = "DROVER_CACERT", value_name = "FILE", global = true)]
    cacert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token; print it on stdout. It is shown this once: the
    /// server keeps only its hash.
    Create {
        /// Its name: what the audit trail records for everything done with
        /// it (letters, digits, '.', '_', '-'; never reused).
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List the tokens: name, role, where from, created, last used, revoked.
    List,
    /// Revoke a token: it opens nothing from the moment this returns.
    Revoke {
        /// Its name.
        name: String,
    },
}

/// A role, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    /// Reads only.
    Viewer,
    /// Reads, submits sources, steers runs.
    Operator,
    /// Everything, tokens included.
    Admin,
}

impl RoleArg {
    fn wire(self) -> TokenRole {
        match self {
            RoleArg::Viewer => TokenRole::Viewer,
            RoleArg::Operator => TokenRole::Operator,
            RoleArg::Admin => TokenRole::Admin,
        }
    }
}

/// Run a `drover token` command.
pub(crate) fn main(args: TokenArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let client = match Client::with_cacert(&args.api, args.cacert.as_deref()) {
        Ok(c) => c,
        Err(Setup { message, code }) => {
            eprintln!("drover: {message}");
            return Ok(ExitCode::from(code));
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        match args.command {
            TokenCommand::Create { name, role } => create(&client, name, role).await,
            TokenCommand::List => list(&client).await,
            TokenCommand::Revoke { name } => revoke(&client, &name).await,
        }
    });
    match result {
        Ok(Printed::Token(created)) => {
            writeln!(out, "{}", created.token)?;
            out.flush()?;
            eprintln!(
                "drover: token {:?} ({}) created; this is the only time it is shown: give it to its holder, as \
                 DROVER_TOKEN or in a file of theirs (mode 0600) named by DROVER_TOKEN_FILE",
                created.name,
                created.role.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Printed::Text(text)) => {
            write!(out, "{text}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(client.report(&e)),
    }
}

/// What a command prints.
enum Printed {
    /// A new token: on stdout alone, so it can be piped into a file.
    Token(CreatedToken),
    Text(String),
}

async fn create(client: &Client, name: String, role: RoleArg) -> Result<Printed, ApiError> {
    let req = CreateTokenRequest {
        name,
        role: role.wire(),
    };
    let created: CreatedToken = client
        .call(client.request(Method::POST, &["tokens"]).json(&req))
        .await?;
    Ok(Printed::Token(created))
}

async fn list(client: &Client) -> Result<Printed, ApiError> {
    let list: TokenList = client.call(client.request(Method::GET, &["tokens"])).await?;
    Ok(Printed::Text(token_table(&list.tokens)))
}

async fn revoke(client: &Client, name: &str) -> Result<Printed, ApiError> {
    let t: TokenInfo = client.call(client.request(Method::DELETE, &["tokens", name])).await?;
    Ok(Printed::Text(format!(
        "token {:?} ({}) revoked: it opens nothing from now on\n",
        t.name,
        t.role.as_str()
    )))
}

/// One row per token.
fn token_table(tokens: &[TokenInfo]) -> String {
    let when = |ms: Option<i64>| ms.map_or_else(|| "-".to_string(), utc);
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.as_str().to_string(),
                match t.source.as_str() {
                    "token_file" => "token file".to_string(),
                    "env" => "DROVER_TOKEN".to_string(),
                    other => other.to_string(),
                },
                when(t.created_at_ms),
                t.created_by.clone().unwrap_or_else(|| "-".into()),
                when(t.last_used_ms),
                match t.revoked_at_ms {
                    Some(at) => format!("revoked {}", utc(at)),
                    None => "active".into(),
                },
            ]
        })
        .collect();
    columns(&["name", "role", "from", "created", "by", "last used", "status"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_shows_names_roles_and_times_never_a_token() {
        let tokens = vec![
            TokenInfo {
                name: "local-admin".into(),
                role: TokenRole::Admin,
                source: "token_file".into(),
                created_at_ms: None,
                created_by: None,
                last_used_ms: Some(0),
                revoked_at_ms: None,
            },
            TokenInfo {
                name: "ci".into(),
                role: TokenRole::Operator,
                source: "store".into(),
                created_at_ms: Some(951_782_400_000),
                created_by: Some("local-admin".into()),
                last_used_ms: None,
                revoked_at_ms: Some(951_782_460_000),
            },
        ];
        let table = token_table(&tokens);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("name"), "{table}");
        assert!(
            lines[1].starts_with("local-admin") && lines[1].contains("token file") && lines[1].ends_with("active"),
            "{table}"
        );
        assert!(
            lines[2].contains("operator")
                && lines[2].contains("2000-02-29 00:00:00")
                && lines[2].ends_with("revoked 2000-02-29 00:01:00"),
            "{table}"
        );
    }
}
