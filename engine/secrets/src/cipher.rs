//! sops's value cipher (aes/cipher.go): each value is
//! `ENC[AES256_GCM,data:<b64>,iv:<b64>,tag:<b64>,type:<type>]`, AES-256-GCM
//! under the file's 32-byte data key with a 32-byte IV (sops uses
//! `cipher.NewGCMWithNonceSize(aes, 32)`), the 16-byte tag stored apart
//! from the ciphertext, and the value's path as additional data.

use std::sync::LazyLock;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::generic_array::typenum::{U12, U32};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use regex::Regex;
use zeroize::Zeroizing;

/// The data key of a file.
pub(crate) type DataKey = Zeroizing<[u8; 32]>;

/// The same expression sops matches values with (not anchored at the end).
static ENC: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)] // a constant pattern: covered by every test
    Regex::new(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]").expect("constant regex")
});

/// Why a value did not decrypt. Fixed texts: they end up in error messages
/// and must never include the value.
pub(crate) type Failure = &'static str;

/// A decrypted value with the type sops recorded for it.
pub(crate) enum Plain {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// sops 3.10+ encrypts YAML timestamps as `type:time` (RFC 3339 text).
    Time(String),
    /// An encrypted YAML comment; it is not part of the data.
    Comment,
}

/// Decrypts the bytes of one `ENC[...]` value, returning the plaintext and
/// the recorded type.
pub(crate) fn open(key: &DataKey, value: &str, aad: &str) -> Result<(Zeroizing<Vec<u8>>, String), Failure> {
    let caps = ENC
        .captures(value)
        .ok_or("it is not in sops's ENC[AES256_GCM,...] format")?;
    let field = |i: usize| caps.get(i).map_or("", |m| m.as_str());
    let b64 = |i: usize, what: Failure| STANDARD.decode(field(i)).map_err(|_| what);
    let mut data = b64(1, "its data is not valid base64")?;
    let iv = b64(2, "its iv is not valid base64")?;
    let tag = b64(3, "its tag is not valid base64")?;
    if tag.len() != 16 {
        return Err("its tag is not 16 bytes");
    }
    data.extend_from_slice(&tag);
    let payload = Payload {
        msg: &data,
        aad: aad.as_bytes(),
    };
    let key = GenericArray::from_slice(key.as_slice());
    let plain = match iv.len() {
        32 => AesGcm::<Aes256, U32>::new(key).decrypt(Nonce::<U32>::from_slice(&iv), payload),
        // Not written by sops, but Go's GCM would accept it too.
        12 => AesGcm::<Aes256, U12>::new(key).decrypt(Nonce::<U12>::from_slice(&iv), payload),
        _ => return Err("its iv is neither 32 nor 12 bytes"),
    }
    .map_err(
        |_| "authentication failed: the ciphertext, its path or the data key does not match (tampered or corrupt)",
    )?;
    Ok((Zeroizing::new(plain), field(4).to_owned()))
}

/// Decrypts one value and converts it to its recorded type, the way sops's
/// `Cipher.Decrypt` does.
pub(crate) fn decrypt(key: &DataKey, value: &str, aad: &str) -> Result<Plain, Failure> {
    let (bytes, kind) = open(key, value, aad)?;
    let text = || std::str::from_utf8(&bytes).map_err(|_| "its plaintext is not UTF-8");
    Ok(match kind.as_str() {
        "str" | "bytes" => Plain::Str(text()?.to_owned()),
        "int" | "int64" => Plain::Int(
            text()?
                .parse()
                .map_err(|_| "it is typed int but its plaintext is not one")?,
        ),
        "float" => Plain::Float(
            text()?
                .parse()
                .map_err(|_| "it is typed float but its plaintext is not one")?,
        ),
        "bool" => Plain::Bool(parse_go_bool(text()?).ok_or("it is typed bool but its plaintext is not one")?),
        "time" => Plain::Time(text()?.to_owned()),
        "comment" => Plain::Comment,
        _ => return Err("it has an unknown type tag"),
    })
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bools() {
        assert_eq!(parse_go_bool("True"), Some(true));
        assert_eq!(parse_go_bool("F"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }

    #[test]
    fn the_pattern_is_sops_own() {
        assert!(ENC.is_match("ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]"));
        assert!(!ENC.is_match("ENC[AES256_CBC,data:AA==]"));
        assert!(!ENC.is_match("plain"));
    }

    #[test]
    fn a_bad_value_fails_without_echoing_it() {
        let key = Zeroizing::new([7u8; 32]);
        let failure = decrypt(&key, "hunter2", "a:").err().expect("not ENC");
        assert!(!failure.contains("hunter2"));
        let wrong = "ENC[AES256_GCM,data:AAAA,iv:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]";
        assert!(decrypt(&key, wrong, "a:").is_err());
    }
}
