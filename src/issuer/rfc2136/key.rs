//! The TSIG key file, in BIND's format (what `tsig-keygen` writes):
//!
//! ```text
//! key "acme-update" {
//!     algorithm hmac-sha256;
//!     secret "base64…";
//! };
//! ```
//!
//! Read strictly: exactly one key, its name, one of hmac-sha256/384/512, a base64 secret;
//! `#`, `//` and `/* */` comments; nothing else. The secret is held zeroizing and never shown
//! (not even in a parse error).

use std::path::Path;

use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::store::fsutil;

/// A key file is a few hundred bytes; more is not one.
const MAX_KEY_FILE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Algorithm {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha384 => "hmac-sha384",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

pub(crate) struct TsigKey {
    /// The key's name, lowercase, without the trailing dot.
    pub(crate) name: String,
    pub(crate) algorithm: Algorithm,
    pub(crate) secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TsigKey({:?}, {}, secret <redacted>)",
            self.name,
            self.algorithm.as_str()
        )
    }
}

/// Read `configured` (or its systemd credential) and parse it.
pub(crate) fn read_key_file(configured: &Path) -> Result<TsigKey> {
    let path = crate::systemd::secret_path(configured);
    let shown = path.display().to_string();
    let raw = fsutil::read_capped(&path, MAX_KEY_FILE)?.ok_or_else(|| {
        Error::msg(format!("failed to read the TSIG key: {shown:?} does not exist"))
            .with_hint("create it with `tsig-keygen -a hmac-sha256 NAME > FILE` and give the same key to the DNS server")
    })?;
    let raw = Zeroizing::new(raw);
    let text = std::str::from_utf8(&raw).map_err(|_| {
        Error::msg(format!(
            "failed to read the TSIG key: {shown:?} is not text"
        ))
    })?;
    parse_key(text).map_err(|why| {
        Error::msg(format!("failed to read the TSIG key {shown:?}: {why}")).with_hint(
            "expected BIND's format: key \"NAME\" { algorithm hmac-sha256; secret \"BASE64\"; };",
        )
    })
}

/// Tokens: words, quoted strings (the bool says quoted), and the punctuation `{ } ;`.
fn tokens(text: &str) -> std::result::Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        closed = true;
                        break;
                    }
                    prev = c;
                }
                if !closed {
                    return Err("a /* comment is not closed".into());
                }
            }
            '{' | '}' | ';' => out.push((c.to_string(), false)),
            '"' => {
                let mut s = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    if c == '\n' || c == '\\' {
                        break;
                    }
                    s.push(c);
                }
                if !closed {
                    return Err("a quoted string is not closed on its line".into());
                }
                out.push((s, true));
            }
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push((s, false));
            }
        }
    }
    Ok(out)
}

/// Parse the text of a key file. Errors never quote the secret.
pub(crate) fn parse_key(text: &str) -> std::result::Result<TsigKey, String> {
    let toks = tokens(text)?;
    let mut it = toks.into_iter();
    let expect = |what: &str, it: &mut std::vec::IntoIter<(String, bool)>| match it.next() {
        Some((t, false)) if t == what => Ok(()),
        _ => Err(format!("expected {what:?}")),
    };
    expect("key", &mut it)?;
    let name = match it.next() {
        Some((n, _)) if valid_key_name(&n) => n.trim_end_matches('.').to_ascii_lowercase(),
        Some((n, _)) if n != "{" => return Err(format!("{n:?} is not a valid key name")),
        _ => return Err("the key has no name".into()),
    };
    expect("{", &mut it)?;
    let (mut algorithm, mut secret) = (None, None);
    loop {
        match it.next() {
            Some((t, false)) if t == "}" => break,
            Some((t, false)) if t == "algorithm" => {
                if algorithm.is_some() {
                    return Err("algorithm is set twice".into());
                }
                let a = match it.next() {
                    Some((a, _)) => a.to_ascii_lowercase(),
                    None => return Err("algorithm has no value".into()),
                };
                algorithm = Some(match a.as_str() {
                    "hmac-sha256" => Algorithm::HmacSha256,
                    "hmac-sha384" => Algorithm::HmacSha384,
                    "hmac-sha512" => Algorithm::HmacSha512,
                    other => {
                        return Err(format!(
                            "algorithm {other:?} is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512"
                        ));
                    }
                });
                expect(";", &mut it)?;
            }
            Some((t, false)) if t == "secret" => {
                if secret.is_some() {
                    return Err("secret is set twice".into());
                }
                let Some((s, true)) = it.next() else {
                    return Err("secret must be a quoted base64 string".into());
                };
                let s = Zeroizing::new(s);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|_| "the secret is not valid base64".to_string())?;
                if bytes.len() < 16 {
                    return Err("the secret is shorter than 16 bytes".into());
                }
                secret = Some(Zeroizing::new(bytes));
                expect(";", &mut it)?;
            }
            Some((t, _)) => {
                return Err(format!(
                    "unexpected {t:?} in the key; only algorithm and secret may be set"
                ));
            }
            None => return Err("the key is not closed with \"};\"".into()),
        }
    }
    expect(";", &mut it)?;
    if let Some((t, _)) = it.next() {
        return Err(format!(
            "unexpected {t:?} after the key; the file must hold exactly one key"
        ));
    }
    Ok(TsigKey {
        name,
        algorithm: algorithm.ok_or("the key has no algorithm")?,
        secret: secret.ok_or("the key has no secret")?,
    })
}

/// A DNS name: labels of letters, digits, `-` and `_`, at most 63 bytes each, 253 in all.
fn valid_key_name(n: &str) -> bool {
    let n = n.trim_end_matches('.');
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `tsig-keygen -a hmac-sha256 acme-update` writes (BIND 9.18).
    const KEYGEN: &str = "key \"acme-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"Q2VydGFnZW50IHRlc3Qga2V5IDAxMjM0NTY3ODk=\";\n};\n";

    #[test]
    fn tsig_keygen_output_is_read() {
        let k = parse_key(KEYGEN).unwrap();
        assert_eq!(k.name, "acme-update");
        assert_eq!(k.algorithm, Algorithm::HmacSha256);
        assert_eq!(&k.secret[..], b"Certagent test key 0123456789");
        assert!(!format!("{k:?}").contains("Q2Vy"), "{k:?}");
        let commented = "# made by hand\nkey Acme.Update. { // the name\n /* both */ secret \"Q2VydGFnZW50IHRlc3Qga2V5IDAxMjM0NTY3ODk=\"; algorithm HMAC-SHA512; };";
        let k = parse_key(commented).unwrap();
        assert_eq!(
            (k.name.as_str(), k.algorithm),
            ("acme.update", Algorithm::HmacSha512)
        );
    }

    #[test]
    fn anything_but_one_well_formed_key_is_refused_without_showing_the_secret() {
        let secret = "Q2VydGFnZW50IHRlc3Qga2V5IDAxMjM0NTY3ODk=";
        let with = |body: &str| format!("key \"k\" {{ {body} }};");
        let cases = [
            (String::new(), "expected \"key\""),
            (
                with("algorithm hmac-md5; secret \"S\";").replace('S', secret),
                "algorithm \"hmac-md5\" is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512",
            ),
            (with("algorithm hmac-sha256;"), "the key has no secret"),
            (
                with("secret \"S\";").replace('S', secret),
                "the key has no algorithm",
            ),
            (
                with("algorithm hmac-sha256; secret \"not base64!\";"),
                "the secret is not valid base64",
            ),
            (
                with("algorithm hmac-sha256; secret \"c2hvcnQ=\";"),
                "the secret is shorter than 16 bytes",
            ),
            (
                with("algorithm hmac-sha256; secret S;").replace('S', secret),
                "secret must be a quoted base64 string",
            ),
            (
                with("algorithm hmac-sha256; secret \"S\"; primary 1.2.3.4;").replace('S', secret),
                "unexpected \"primary\" in the key; only algorithm and secret may be set",
            ),
            (
                format!("{KEYGEN}{KEYGEN}"),
                "unexpected \"key\" after the key; the file must hold exactly one key",
            ),
            (
                KEYGEN.trim_end().trim_end_matches(';').to_string(),
                "expected \";\"",
            ),
            (
                "key \"a b\" { };".to_string(),
                "\"a b\" is not a valid key name",
            ),
            (
                "key \"k\" { secret \"abc".to_string(),
                "a quoted string is not closed on its line",
            ),
        ];
        for (text, want) in cases {
            let err = parse_key(&text).unwrap_err();
            assert_eq!(err, want, "{text}");
            assert!(!err.contains(secret));
        }
    }

    #[test]
    fn the_key_file_is_read_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tsig.key");
        std::fs::write(&path, KEYGEN).unwrap();
        assert_eq!(read_key_file(&path).unwrap().name, "acme-update");
        std::fs::write(&path, "key \"k\" { algorithm hmac-sha1; };").unwrap();
        let err = read_key_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "failed to read the TSIG key {:?}: algorithm \"hmac-sha1\" is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512",
                path.display().to_string()
            )
        );
        assert!(err.hint().is_some_and(|h| h.contains("key \"NAME\"")));
        let missing = read_key_file(&dir.path().join("none")).unwrap_err();
        assert!(missing.to_string().ends_with("does not exist"), "{missing}");
    }
}
