//! Masking: every secret value is replaced by `****` wherever text leaves
//! the engine — task logs and the live stream (in the transport), journal
//! events (in the scheduler), and so reports and anything rebuilt from the
//! journal.
//!
//! A multi-line secret (a key, a certificate) is also masked line by line,
//! because output is handled a line at a time. Values shorter than
//! [`MIN_LEN`] characters are not masked: masking "1" or "no" would
//! destroy every log while protecting nothing.

use aho_corasick::{AhoCorasick, MatchKind};

/// What a secret is replaced with.
pub const MASK: &str = "****";

/// Shortest value that is masked.
pub const MIN_LEN: usize = 4;

/// Replaces secret values in text.
#[derive(Clone)]
pub struct Masker {
    // None when there is nothing to mask: the common case costs nothing.
    matcher: Option<AhoCorasick>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the patterns: they are the secrets.
        f.debug_struct("Masker")
            .field("patterns", &self.matcher.as_ref().map_or(0, AhoCorasick::patterns_len))
            .finish()
    }
}

impl Default for Masker {
    fn default() -> Self {
        Masker::none()
    }
}

impl Masker {
    /// A masker that masks nothing.
    pub fn none() -> Masker {
        Masker { matcher: None }
    }

    /// A masker for these secret values.
    pub fn new<I, S>(values: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut patterns: Vec<String> = Vec::new();
        for v in values {
            let v = v.as_ref();
            let mut add = |p: &str| {
                if p.chars().count() >= MIN_LEN && !patterns.iter().any(|q| q == p) {
                    patterns.push(p.to_string());
                }
            };
            add(v);
            if v.contains('\n') {
                v.lines().map(str::trim).for_each(&mut add);
            }
        }
        if patterns.is_empty() {
            return Masker::none();
        }
        // Longest first, so a secret that contains another is masked whole.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();
        Masker { matcher }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        match &self.matcher {
            None => text.to_string(),
            Some(m) => m.replace_all(text, &vec![MASK; m.patterns_len()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_and_the_lines_of_multiline_values() {
        let m = Masker::new([
            "s3cr3t-token",
            "-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----",
            "no",
        ]);
        assert_eq!(m.mask("token=s3cr3t-token and s3cr3t-token"), "token=**** and ****");
        assert_eq!(m.mask("AAAABBBBCCCC"), "****");
        // Too short to mask.
        assert_eq!(m.mask("no"), "no");
        assert!(!format!("{m:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_longer_secret_containing_a_shorter_one_is_masked_whole() {
        let m = Masker::new(["abcd", "abcdefgh"]);
        assert_eq!(m.mask("xabcdefghx abcd"), "x****x ****");
    }

    #[test]
    fn no_secrets_no_change() {
        let m = Masker::new(Vec::<String>::new());
        assert!(m.is_empty());
        assert_eq!(m.mask("anything"), "anything");
    }
}
