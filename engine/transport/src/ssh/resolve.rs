//! Parsing ~/.ssh/config: ssh2-config (maintained, ssh_config(5) first-value and Host negation rules, ProxyJump, a settable home,
//! few deps); not russh-config 0.58, which splits only at one space, rejects options before the first Host and pulls in tokio process.
//!
//! From what a workflow declares to an [`SshTarget`]. Every field is taken
//! from the first of these that sets it: the server's `ssh` block, what its
//! provider knows ([`SshHints`]), the OpenSSH client configuration
//! (`ssh.config_file`, else `~/.ssh/config`), then the defaults (user root,
//! port 22; keys: ssh-agent's and the default identity files). See
//! [`resolve`] for the details, and schemas/server.k `SshAccess`.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_core::model::{self, Become, SshAccess};
use ssh2_config::{HostParams, ParseRule, SshConfig};

use super::{Bastion, HostKeyPolicy, SshError, SshTarget};

/// SSH access a provider knows for certain about a server it made; fields
/// the workflow sets itself take precedence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshHints {
    /// Login user.
    pub user: Option<String>,
    /// TCP port.
    pub port: Option<u16>,
    /// A private key the server accepts.
    pub key_file: Option<PathBuf>,
    /// A known_hosts file recording the server's host key, read before
    /// drover's own and the user's.
    pub known_hosts: Option<PathBuf>,
    /// The server's directory for temporary files (absolute), when the
    /// provider knows it differs from `/tmp`: hosts that share one /tmp
    /// each have their own (`TMPDIR`), and run directories go there.
    pub temp_dir: Option<String>,
}

/// Where drover's own files are, for every server.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// drover's own known_hosts (`<state dir>/known_hosts`): read for every
    /// server without `ssh.known_hosts`, and where accept-new records keys.
    pub known_hosts: PathBuf,
    /// What relative paths of a workflow are relative to (its directory).
    pub base_dir: PathBuf,
    /// Limit for connecting, handshake, authentication and setup.
    pub connect_timeout: Duration,
    /// Keepalive interval (zero: none).
    pub keepalive: Duration,
    /// The home directory of the user drover runs as: what `~/` means, and
    /// where `~/.ssh/config`, `~/.ssh/known_hosts` and the default identity
    /// files (`~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`) are. [`Defaults::new`]
    /// takes `$HOME`; tests point it at a directory of their own.
    pub home: PathBuf,
}

impl Defaults {
    /// Defaults with drover's own `known_hosts`, the workflow's directory,
    /// a 10 s connect timeout, 15 s keepalives and `$HOME` as the home.
    pub fn new(known_hosts: impl Into<PathBuf>, base_dir: impl Into<PathBuf>) -> Defaults {
        Defaults {
            known_hosts: known_hosts.into(),
            base_dir: base_dir.into(),
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            home: home_dir(),
        }
    }
}

/// `$HOME`, else the home directory in the password database, else `/`.
fn home_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(user)) => user.dir,
        _ => PathBuf::from("/"),
    }
}

/// One server to reach.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The server's name, for messages.
    pub host: &'a str,
    /// The address to connect to: the server's address when it has one,
    /// else its hostname. Also the name matched against the `Host` patterns
    /// of the SSH client configuration, whose `HostName` replaces it.
    pub address: &'a str,
    /// What the workflow declares.
    pub access: &'a SshAccess,
    /// What the provider knows.
    pub hints: &'a SshHints,
}

/// The default identity files, tried (those that exist) when no key file
/// is set anywhere, after ssh-agent's keys.
const DEFAULT_IDENTITIES: [&str; 3] = ["id_ed25519", "id_ecdsa", "id_rsa"];

/// The target for `dest`.
///
/// - address: the configuration's `HostName` for `dest.address` (`%h`
///   there is `dest.address`), else `dest.address`;
/// - port, user: `ssh` block, hints, configuration (`Port`, `User`), then
///   22 and root;
/// - key: `ssh.key_file`, the hint's, the configuration's first
///   `IdentityFile`, else ssh-agent's keys and the default identity files
///   that exist. A key file from the configuration is tried with the
///   agent's keys (as OpenSSH does; an encrypted one can only be used
///   through the agent);
/// - known_hosts: `ssh.known_hosts` alone (read, and written by
///   accept-new); else the hint's, drover's own ([`Defaults::known_hosts`],
///   written by accept-new) and `~/.ssh/known_hosts`, read in that order;
/// - bastions: `ssh.jump`, else the configuration's `ProxyJump`, each
///   `[user@]host[:port]` (or `ssh://...`), first hop first; each bastion's
///   `HostName`, `User` and `Port` are looked up in the configuration too
///   (user default: root);
/// - `ssh.become = "sudo"`: commands run as `ssh.become_user`, else root.
///
/// Relative paths are relative to [`Defaults::base_dir`]; `~/` is
/// [`Defaults::home`]. A configuration named by `ssh.config_file` must
/// exist; `~/.ssh/config` may not. `Match` blocks of the configuration are
/// skipped (ssh2-config does not evaluate them).
pub fn resolve(dest: Destination<'_>, defaults: &Defaults) -> Result<SshTarget, SshError> {
    let access = dest.access;
    let home = &defaults.home;
    let path = |p: &str| expand_in(p, &defaults.base_dir, home);
    let config = Config::load(dest.host, access.config_file.as_deref().map(path), home)?;
    let params = config.query(dest.address);

    let address = params
        .host_name
        .as_deref()
        .map(|name| host_name_tokens(name, dest.address))
        .unwrap_or_else(|| dest.address.to_string());
    let port = access.port.or(dest.hints.port).or(params.port).unwrap_or(22);
    let user = access
        .user
        .clone()
        .or_else(|| dest.hints.user.clone())
        .or_else(|| params.user.clone())
        .unwrap_or_else(|| "root".into());

    let explicit_key = access
        .key_file
        .as_deref()
        .map(path)
        .or_else(|| dest.hints.key_file.clone());
    let config_key = params
        .identity_file
        .as_ref()
        .and_then(|files| files.first())
        .map(|f| expand_in(&f.to_string_lossy(), &defaults.base_dir, home));
    let (key_file, use_agent, identity_files) = match (explicit_key, config_key) {
        (Some(key), _) => (Some(key), false, Vec::new()),
        (None, Some(key)) => (Some(key), true, Vec::new()),
        (None, None) => {
            let ssh_dir = home.join(".ssh");
            let defaults: Vec<PathBuf> = DEFAULT_IDENTITIES
                .iter()
                .map(|name| ssh_dir.join(name))
                .filter(|p| p.is_file())
                .collect();
            (None, true, defaults)
        }
    };

    let (known_hosts, read_known_hosts) = match access.known_hosts.as_deref() {
        Some(file) => {
            let file = path(file);
            (file.clone(), vec![file])
        }
        None => {
            let mut read: Vec<PathBuf> = dest.hints.known_hosts.iter().cloned().collect();
            read.push(defaults.known_hosts.clone());
            read.push(home.join(".ssh").join("known_hosts"));
            read.dedup();
            (defaults.known_hosts.clone(), read)
        }
    };

    let hops: Vec<String> = if access.jump.is_empty() {
        params.proxy_jump.clone().unwrap_or_default()
    } else {
        access.jump.clone()
    };
    let mut jump = Vec::new();
    bastions(
        dest.host,
        &config,
        &hops,
        &mut vec![dest.address.to_string()],
        &mut jump,
    )?;

    let become_user = access
        .become_method
        .map(|Become::Sudo| access.become_user.clone().unwrap_or_else(|| "root".into()));

    Ok(SshTarget {
        host: dest.host.to_string(),
        address,
        port,
        user,
        key_file,
        use_agent,
        identity_files,
        known_hosts,
        read_known_hosts,
        host_key_policy: match access.host_key_policy {
            model::HostKeyPolicy::Strict => HostKeyPolicy::Verify,
            model::HostKeyPolicy::AcceptNew => HostKeyPolicy::TrustOnFirstUse,
        },
        jump,
        become_user,
        connect_timeout: defaults.connect_timeout,
        keepalive: defaults.keepalive,
        temp_dir: dest
            .hints
            .temp_dir
            .clone()
            .filter(|t| t.starts_with('/'))
            .unwrap_or_else(|| "/tmp".into()),
    })
}

/// Bastions may be chained this deep through their own `ProxyJump`.
const MAX_JUMP_DEPTH: usize = 8;

/// Appends the bastions of `hops` (`[user@]host[:port]`, commas allowed,
/// `none` alone for none) to `out`, first hop first, each completed from
/// the configuration (`HostName`, `User`, `Port`). The first hop's own
/// `ProxyJump` is followed, as OpenSSH does (a later hop is reached
/// through the one before it); `path` holds the names being resolved, to
/// refuse a loop.
fn bastions(
    host: &str,
    config: &Config,
    hops: &[String],
    path: &mut Vec<String>,
    out: &mut Vec<Bastion>,
) -> Result<(), SshError> {
    let specs: Vec<&str> = hops.iter().flat_map(|s| s.split(',')).map(str::trim).collect();
    if specs.len() == 1 && specs.first().is_some_and(|s| s.eq_ignore_ascii_case("none")) {
        return Ok(());
    }
    let invalid = |message: String| SshError::InvalidInput {
        host: host.to_string(),
        message,
    };
    for (index, spec) in specs.into_iter().enumerate() {
        let (hop_user, hop_name, hop_port) = parse_jump(spec)
            .map_err(|message| invalid(format!("bastion {spec:?}: {message} (expected [user@]host[:port])")))?;
        let hop_params = config.query(&hop_name);
        if index == 0
            && let Some(inner) = hop_params.proxy_jump.as_ref().filter(|inner| !inner.is_empty())
        {
            if path.iter().any(|p| p.eq_ignore_ascii_case(&hop_name)) || path.len() > MAX_JUMP_DEPTH {
                return Err(invalid(format!(
                    "the ProxyJump of bastion {hop_name} leads back to {} (a loop in the SSH client configuration; \
                     exclude it with `Host * !{hop_name}`)",
                    path.join(" -> ")
                )));
            }
            path.push(hop_name.clone());
            bastions(host, config, inner, path, out)?;
            path.pop();
        }
        out.push(Bastion {
            address: hop_params
                .host_name
                .as_deref()
                .map(|name| host_name_tokens(name, &hop_name))
                .unwrap_or_else(|| hop_name.clone()),
            port: hop_port.or(hop_params.port).unwrap_or(22),
            user: hop_user
                .or_else(|| hop_params.user.clone())
                .unwrap_or_else(|| "root".into()),
        });
    }
    Ok(())
}

/// The parsed client configuration, or none.
struct Config(Option<SshConfig>);

impl Config {
    /// `explicit` (which must exist), else `~/.ssh/config` if it exists.
    fn load(host: &str, explicit: Option<PathBuf>, home: &Path) -> Result<Config, SshError> {
        let (path, required) = match explicit {
            Some(path) => (path, true),
            None => (home.join(".ssh").join("config"), false),
        };
        let failed = |message: String| SshError::Config {
            host: host.to_string(),
            path: path.clone(),
            message,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Config(None)),
            Err(e) => return Err(failed(format!("cannot read it: {e}"))),
        };
        let text = skip_match_blocks(&text);
        let parsed = SshConfig::default()
            .home_dir(home)
            .parse(
                &mut BufReader::new(text.as_bytes()),
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map_err(|e| failed(e.to_string()))?;
        Ok(Config(Some(parsed)))
    }

    /// What the configuration says for `name` (nothing without one).
    fn query(&self, name: &str) -> HostParams {
        match &self.0 {
            Some(config) => config.query(name),
            None => SshConfig::default().query(name),
        }
    }
}

/// The configuration with every `Match` line replaced by `Host !*`, which
/// matches no host: ssh2-config does not know `Match`, and would otherwise
/// apply the options of a `Match` block to the `Host` block before it.
fn skip_match_blocks(text: &str) -> String {
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let keyword: String = trimmed
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '=')
                .collect();
            if keyword.eq_ignore_ascii_case("match") {
                "Host !*\n".to_string()
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

/// `HostName` with its tokens `%h` (the name looked up) and `%%`
/// expanded.
fn host_name_tokens(host_name: &str, original: &str) -> String {
    let mut out = String::new();
    let mut chars = host_name.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(original),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Splits a bastion `[user@]host[:port]`, `[user@][v6 address][:port]` or
/// `ssh://[user@]host[:port]`.
pub(super) fn parse_jump(spec: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let spec = spec.strip_prefix("ssh://").unwrap_or(spec).trim_end_matches('/');
    let (user, rest) = match spec.rsplit_once('@') {
        Some((user, rest)) if !user.is_empty() => (Some(user.to_string()), rest),
        Some(_) => return Err("empty user name".into()),
        None => (None, spec),
    };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err("unclosed [".into());
        };
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("unexpected {after:?} after ]")),
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("no host name".into());
    }
    let port = match port {
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err(format!("bad port {port:?}")),
        },
        None => None,
    };
    Ok((user, host.to_string(), port))
}

/// `path` with `~/` expanded and a relative path taken from `base`.
pub fn expand(path: &str, base: &Path) -> PathBuf {
    expand_in(path, base, &home_dir())
}

/// [`expand`] with `home` as `~`.
fn expand_in(path: &str, base: &Path, home: &Path) -> PathBuf {
    if path == "~" {
        return home.to_path_buf();
    }
    if let Some(rest) = path.strip_prefix("~/") {
        return home.join(rest);
    }
    base.join(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(home: &Path) -> Defaults {
        Defaults {
            known_hosts: PathBuf::from("/state/known_hosts"),
            base_dir: PathBuf::from("/workflows/site"),
            connect_timeout: Duration::from_secs(3),
            keepalive: Duration::ZERO,
            home: home.to_path_buf(),
        }
    }

    fn resolve_with(access: &SshAccess, hints: &SshHints, address: &str, home: &Path) -> Result<SshTarget, SshError> {
        resolve(
            Destination {
                host: "web-1",
                address,
                access,
                hints,
            },
            &defaults(home),
        )
    }

    fn write_config(home: &Path, text: &str) {
        std::fs::create_dir_all(home.join(".ssh")).expect("mkdir");
        std::fs::write(home.join(".ssh/config"), text).expect("write config");
    }

    #[test]
    fn defaults_without_any_configuration() {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".ssh")).expect("mkdir");
        std::fs::write(home.path().join(".ssh/id_rsa"), "x").expect("write");
        std::fs::write(home.path().join(".ssh/id_ed25519"), "x").expect("write");
        let t = resolve_with(&SshAccess::default(), &SshHints::default(), "10.1.2.3", home.path()).expect("resolves");
        assert_eq!((t.address.as_str(), t.port, t.user.as_str()), ("10.1.2.3", 22, "root"));
        assert_eq!(t.key_file, None);
        assert!(t.use_agent);
        assert_eq!(
            t.identity_files,
            [home.path().join(".ssh/id_ed25519"), home.path().join(".ssh/id_rsa")]
        );
        assert_eq!(t.known_hosts, PathBuf::from("/state/known_hosts"));
        assert_eq!(
            t.read_known_hosts,
            [
                PathBuf::from("/state/known_hosts"),
                home.path().join(".ssh/known_hosts")
            ]
        );
        assert!(t.jump.is_empty());
        assert_eq!(t.become_user, None);
    }

    #[test]
    fn workflow_beats_hints_beats_config_beats_defaults() {
        let home = tempfile::tempdir().expect("tempdir");
        write_config(
            home.path(),
            "User from-global\n\
             Host web-*.example.com !web-db.example.com\n\
             \tHostName %h.internal\n\
             \tPort 2200\n\
             \tUser from-config\n\
             \tIdentityFile ~/.ssh/from-config\n\
             \tIdentityFile ~/.ssh/second\n\
             Match user ops\n\
             \tPort 9999\n\
             Host * !bastion !second\n\
             \tPort 2300\n\
             \tProxyJump ops@bastion:2022,second\n\
             Host second\n\
             \tHostName 10.9.9.9\n\
             \tUser jumper\n",
        );
        let hints = SshHints {
            user: Some("from-hint".into()),
            ..SshHints::default()
        };
        let t = resolve_with(&SshAccess::default(), &hints, "web-1.example.com", home.path()).expect("resolves");
        assert_eq!(t.address, "web-1.example.com.internal");
        assert_eq!(t.port, 2200, "first obtained value; Match skipped");
        assert_eq!(t.user, "from-hint");
        assert_eq!(t.key_file, Some(home.path().join(".ssh/from-config")));
        assert!(t.use_agent, "a configured IdentityFile goes with the agent");
        assert!(t.identity_files.is_empty());
        let hops: Vec<String> = t.jump.iter().map(ToString::to_string).collect();
        // "second": HostName from its own block, User from the global
        // line (obtained first), the default port.
        assert_eq!(hops, ["ops@bastion:2022", "from-global@10.9.9.9:22"]);

        // A negated pattern: web-db gets the last block only; the global
        // User is the first obtained value for it.
        let t = resolve_with(
            &SshAccess::default(),
            &SshHints::default(),
            "web-db.example.com",
            home.path(),
        )
        .expect("resolves");
        assert_eq!((t.address.as_str(), t.port), ("web-db.example.com", 2300));
        assert_eq!(t.user, "from-global");

        let access = SshAccess {
            user: Some("deploy".into()),
            port: Some(2222),
            key_file: Some("keys/id".into()),
            jump: vec!["jump.example.com".into()],
            ..SshAccess::default()
        };
        let t = resolve_with(&access, &hints, "web-1.example.com", home.path()).expect("resolves");
        assert_eq!((t.port, t.user.as_str()), (2222, "deploy"));
        assert_eq!(t.key_file, Some(PathBuf::from("/workflows/site/keys/id")));
        assert!(!t.use_agent);
        let hops: Vec<String> = t.jump.iter().map(ToString::to_string).collect();
        // The bastion's own ProxyJump (from the last block) is followed.
        assert_eq!(
            hops,
            [
                "ops@bastion:2022",
                "from-global@10.9.9.9:22",
                "from-global@jump.example.com:2300"
            ]
        );
    }

    #[test]
    fn a_named_config_file_must_exist_and_parse() {
        let home = tempfile::tempdir().expect("tempdir");
        let access = SshAccess {
            config_file: Some("missing.conf".into()),
            ..SshAccess::default()
        };
        let error = resolve_with(&access, &SshHints::default(), "h", home.path()).expect_err("missing");
        assert!(matches!(error, SshError::Config { .. }), "{error}");
        assert!(error.to_string().contains("/workflows/site/missing.conf"), "{error}");
        assert_eq!(error.kind(), drover_core::FailureKind::Permanent);

        let file = home.path().join("bad.conf");
        std::fs::write(&file, "Host x\n  Port notaport\n").expect("write");
        let access = SshAccess {
            config_file: Some(file.display().to_string()),
            ..SshAccess::default()
        };
        let error = resolve_with(&access, &SshHints::default(), "x", home.path()).expect_err("bad port");
        assert!(matches!(error, SshError::Config { .. }), "{error}");
    }

    #[test]
    fn known_hosts_become_and_bad_bastions() {
        let home = tempfile::tempdir().expect("tempdir");
        let hints = SshHints {
            known_hosts: Some("/provider/known_hosts".into()),
            ..SshHints::default()
        };
        let t = resolve_with(&SshAccess::default(), &hints, "h", home.path()).expect("resolves");
        assert_eq!(t.read_known_hosts[0], PathBuf::from("/provider/known_hosts"));
        assert_eq!(t.known_hosts, PathBuf::from("/state/known_hosts"));

        let access = SshAccess {
            known_hosts: Some("~/kh".into()),
            become_method: Some(Become::Sudo),
            ..SshAccess::default()
        };
        let t = resolve_with(&access, &hints, "h", home.path()).expect("resolves");
        assert_eq!(t.known_hosts, home.path().join("kh"));
        assert_eq!(t.read_known_hosts, [home.path().join("kh")]);
        assert_eq!(t.become_user.as_deref(), Some("root"));
        let access = SshAccess {
            become_method: Some(Become::Sudo),
            become_user: Some("app".into()),
            ..SshAccess::default()
        };
        let t = resolve_with(&access, &hints, "h", home.path()).expect("resolves");
        assert_eq!(t.become_user.as_deref(), Some("app"));

        for bad in ["", "u@", "@h", "h:0", "h:x", "[::1", "h:70000"] {
            let access = SshAccess {
                jump: vec![bad.into()],
                ..SshAccess::default()
            };
            let error = resolve_with(&access, &hints, "h", home.path()).expect_err(bad);
            assert!(matches!(error, SshError::InvalidInput { .. }), "{bad}: {error}");
        }
    }

    #[test]
    fn proxy_jump_chains_are_followed_and_loops_refused() {
        let home = tempfile::tempdir().expect("tempdir");
        write_config(
            home.path(),
            "Host target\n\tProxyJump b2\n\
             Host b2\n\tHostName 10.0.2.2\n\tProxyJump b1\n\
             Host b1\n\tHostName 10.0.1.2\n\tUser ops\n\
             Host loop-a\n\tProxyJump loop-b\n\
             Host loop-b\n\tProxyJump loop-a\n\
             Host *\n\tPort 2222\n",
        );
        let t = resolve_with(&SshAccess::default(), &SshHints::default(), "target", home.path()).expect("resolves");
        let hops: Vec<String> = t.jump.iter().map(ToString::to_string).collect();
        assert_eq!(hops, ["ops@10.0.1.2:2222", "root@10.0.2.2:2222"]);
        // An explicit list: only its first hop's ProxyJump is followed.
        let access = SshAccess {
            jump: vec!["b2,b1".into()],
            ..SshAccess::default()
        };
        let t = resolve_with(&access, &SshHints::default(), "x", home.path()).expect("resolves");
        let hops: Vec<String> = t.jump.iter().map(ToString::to_string).collect();
        assert_eq!(hops, ["ops@10.0.1.2:2222", "root@10.0.2.2:2222", "ops@10.0.1.2:2222"]);
        let error =
            resolve_with(&SshAccess::default(), &SshHints::default(), "loop-a", home.path()).expect_err("a loop");
        assert!(error.to_string().contains("loop"), "{error}");
        let none = SshAccess {
            jump: vec!["none".into()],
            ..SshAccess::default()
        };
        assert!(
            resolve_with(&none, &SshHints::default(), "target", home.path())
                .expect("resolves")
                .jump
                .is_empty()
        );
    }

    #[test]
    fn jump_specs() {
        assert_eq!(parse_jump("h"), Ok((None, "h".into(), None)));
        assert_eq!(parse_jump("u@h:2"), Ok((Some("u".into()), "h".into(), Some(2))));
        assert_eq!(parse_jump("u@[::1]:2"), Ok((Some("u".into()), "::1".into(), Some(2))));
        assert_eq!(parse_jump("ssh://u@h:22"), Ok((Some("u".into()), "h".into(), Some(22))));
    }
}
