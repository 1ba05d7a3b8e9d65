//! ssh_config files for the system client (`ssh -F <file>`).

use std::path::Path;

use anyhow::Result;

use crate::sys;

/// One `Host <alias>` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshHostEntry {
    /// The name after `Host` (what the test passes to `ssh`).
    pub alias: String,
    /// `HostName`: the address connected to.
    pub host_name: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// `IdentityFile`.
    pub identity_file: Option<String>,
    /// `ProxyJump`: the alias (or `user@host:port`) of the host to jump
    /// through; a comma-separated list for several hops.
    pub proxy_jump: Option<String>,
    /// Any other `Keyword value` pairs.
    pub options: Vec<(String, String)>,
}

impl SshHostEntry {
    /// `Host alias` with HostName, User and Port.
    pub fn new(alias: &str, host_name: &str, user: &str, port: u16) -> SshHostEntry {
        SshHostEntry {
            alias: alias.into(),
            host_name: Some(host_name.into()),
            user: Some(user.into()),
            port: Some(port),
            ..SshHostEntry::default()
        }
    }

    /// The same entry reached through `jump` (`ProxyJump`).
    pub fn proxy_jump(mut self, jump: &str) -> SshHostEntry {
        self.proxy_jump = Some(jump.into());
        self
    }

    /// The same entry with one more `Keyword value` line.
    pub fn option(mut self, keyword: &str, value: &str) -> SshHostEntry {
        self.options.push((keyword.into(), value.into()));
        self
    }
}

/// An ssh_config: `Host` blocks, then `Host *` defaults (last, because
/// ssh keeps the first value it reads for each keyword).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshConfig {
    hosts: Vec<SshHostEntry>,
    defaults: Vec<(String, String)>,
}

impl SshConfig {
    /// An empty configuration.
    pub fn new() -> SshConfig {
        SshConfig::default()
    }

    /// Adds (or replaces, by alias) a `Host` block.
    pub fn host(&mut self, entry: SshHostEntry) -> &mut SshConfig {
        match self.hosts.iter_mut().find(|e| e.alias == entry.alias) {
            Some(old) => *old = entry,
            None => self.hosts.push(entry),
        }
        self
    }

    /// Sets a `Host *` default (replacing an earlier one of that keyword).
    pub fn default_option(&mut self, keyword: &str, value: &str) -> &mut SshConfig {
        match self.defaults.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(keyword)) {
            Some(old) => old.1 = value.into(),
            None => self.defaults.push((keyword.into(), value.into())),
        }
        self
    }

    /// The `Host` blocks.
    pub fn entries(&self) -> &[SshHostEntry] {
        &self.hosts
    }

    /// The block of `alias`.
    pub fn entry(&self, alias: &str) -> Option<&SshHostEntry> {
        self.hosts.iter().find(|e| e.alias == alias)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::from("# written by drover-testkit\n");
        let line = |out: &mut String, keyword: &str, value: &str| {
            out.push_str("    ");
            out.push_str(keyword);
            out.push(' ');
            out.push_str(&quote(value));
            out.push('\n');
        };
        for entry in &self.hosts {
            out.push_str(&format!("\nHost {}\n", entry.alias));
            if let Some(v) = &entry.host_name {
                line(&mut out, "HostName", v);
            }
            if let Some(v) = &entry.user {
                line(&mut out, "User", v);
            }
            if let Some(v) = entry.port {
                line(&mut out, "Port", &v.to_string());
            }
            if let Some(v) = &entry.identity_file {
                line(&mut out, "IdentityFile", v);
            }
            if let Some(v) = &entry.proxy_jump {
                line(&mut out, "ProxyJump", v);
            }
            for (k, v) in &entry.options {
                line(&mut out, k, v);
            }
        }
        if !self.defaults.is_empty() {
            out.push_str("\nHost *\n");
            for (k, v) in &self.defaults {
                line(&mut out, k, v);
            }
        }
        out
    }

    /// Writes the file (mode 0600: ssh refuses a configuration others can
    /// write).
    pub fn write(&self, path: &Path) -> Result<()> {
        sys::write_file(path, self.render().as_bytes(), 0o600)
    }
}

fn quote(value: &str) -> String {
    if value.is_empty() || value.contains(char::is_whitespace) {
        format!("\"{value}\"")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_hosts_then_defaults() {
        let mut config = SshConfig::new();
        config
            .default_option("StrictHostKeyChecking", "yes")
            .host(SshHostEntry::new("bastion", "198.18.0.2", "fleet", 22))
            .host(SshHostEntry::new("target", "198.18.1.10", "fleet", 2222).proxy_jump("bastion"));
        let text = config.render();
        let target = text.find("Host target").unwrap_or_default();
        assert!(text.find("Host bastion").unwrap_or(usize::MAX) < target);
        assert!(text[target..].contains("    ProxyJump bastion\n"));
        assert!(text.trim_end().ends_with("Host *\n    StrictHostKeyChecking yes"));
    }
}
