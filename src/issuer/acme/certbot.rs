//! certbot's ACME account, taken over instead of registering a new one (`account_from_certbot`):
//! the same account keeps its rate-limit history and whatever the CA associates with it.
//!
//! certbot keeps an account in `ROOT/accounts/SERVER/…/ID/`: `regr.json` (`uri`: the account
//! URL) and `private_key.json` (the key as a JWK, RFC 7517). instant-acme signs with ECDSA
//! P-256 keys only, so only such an account can be taken over; certbot's usual RSA account
//! cannot, and this says why rather than registering behind the operator's back. Reads only;
//! never logs or returns key material except as the credentials it builds.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use instant_acme::AccountCredentials;
use zeroize::Zeroizing;

use crate::store::fsutil;

/// certbot's account files are small; anything larger is not one.
const MAX_ACCOUNT_FILE: usize = 64 << 10;

/// The account URL of certbot's account in `dir`, when certagent can take it over for the
/// ACME server at `directory` (its key is an ECDSA P-256 JWK, its URL on that server); else
/// why not.
pub(crate) fn inspect(dir: &Path, directory: &str) -> Result<String, String> {
    read(dir, directory).map(|(uri, _)| uri)
}

/// Credentials for certbot's account in `dir`, for the ACME server at `directory`.
pub(crate) fn credentials(dir: &Path, directory: &str) -> Result<AccountCredentials, String> {
    let (uri, pkcs8) = read(dir, directory)?;
    let json = Zeroizing::new(
        serde_json::json!({
            "id": uri,
            "key_pkcs8": URL_SAFE_NO_PAD.encode(pkcs8.as_slice()),
            "directory": directory,
        })
        .to_string(),
    );
    serde_json::from_str(&json).map_err(|e| format!("failed to build the credentials: {e}"))
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// The account URL (on the server of `directory`) and the key as PKCS#8 DER.
fn read(dir: &Path, directory: &str) -> Result<(String, Zeroizing<Vec<u8>>), String> {
    let file = |name: &str| -> Result<Zeroizing<Vec<u8>>, String> {
        let path = dir.join(name);
        match fsutil::read_capped(&path, MAX_ACCOUNT_FILE) {
            Ok(Some(bytes)) => Ok(Zeroizing::new(bytes)),
            Ok(None) => Err(format!("{:?} does not exist", path.display().to_string())),
            Err(e) => Err(e.to_string()),
        }
    };
    let regr: serde_json::Value = serde_json::from_slice(&file("regr.json")?)
        .map_err(|e| format!("regr.json is not JSON: {e}"))?;
    let uri = regr
        .get("uri")
        .and_then(|u| u.as_str())
        .filter(|u| u.starts_with("https://") && u.len() < 2048)
        .ok_or("regr.json has no https:// account \"uri\"")?
        .to_string();
    if origin(&uri) != origin(directory) {
        return Err(format!(
            "its account {uri:?} belongs to another ACME server than the directory {directory:?}"
        ));
    }
    let jwk: Zeroizing<JwkFields> = Zeroizing::new(
        serde_json::from_slice(&file("private_key.json")?)
            .map_err(|_| "private_key.json is not a JSON Web Key".to_string())?,
    );
    Ok((uri, p256_pkcs8(&jwk)?))
}

/// The fields of a JWK that matter here (RFC 7518 §6.2).
#[derive(serde::Deserialize, Default, zeroize::Zeroize)]
struct JwkFields {
    #[serde(default)]
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    d: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    y: String,
}

/// An EC P-256 private JWK as PKCS#8 DER (RFC 5208 around RFC 5915's ECPrivateKey, with the
/// public key), checked by loading it.
fn p256_pkcs8(jwk: &JwkFields) -> Result<Zeroizing<Vec<u8>>, String> {
    if jwk.kty == "RSA" {
        return Err(
            "its key is RSA, and certagent's ACME client signs with ECDSA P-256 keys only".into(),
        );
    }
    if jwk.kty != "EC" || jwk.crv != "P-256" {
        return Err(format!(
            "its key is {} {}, and certagent's ACME client signs with ECDSA P-256 keys only",
            jwk.kty, jwk.crv
        ));
    }
    let field = |name: &str, b64: &str| -> Result<Zeroizing<Vec<u8>>, String> {
        let raw = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(b64.trim_end_matches('='))
                .map_err(|_| format!("the key's {name:?} is not base64url"))?,
        );
        if raw.is_empty() || raw.len() > 32 {
            return Err(format!("the key's {name:?} is not a P-256 value"));
        }
        // Left-pad: an encoder may drop leading zero bytes.
        let mut out = Zeroizing::new(vec![0u8; 32 - raw.len()]);
        out.extend_from_slice(&raw);
        Ok(out)
    };
    let (d, x, y) = (
        field("d", &jwk.d)?,
        field("x", &jwk.x)?,
        field("y", &jwk.y)?,
    );
    const HEAD: [u8; 36] = [
        0x30, 0x81, 0x87, // PrivateKeyInfo, 135 bytes
        0x02, 0x01, 0x00, // version 0
        0x30, 0x13, // AlgorithmIdentifier
        0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // prime256v1
        0x04, 0x6d, // privateKey OCTET STRING, 109 bytes
        0x30, 0x6b, // ECPrivateKey, 107 bytes
        0x02, 0x01, 0x01, // version 1
        0x04, 0x20, // privateKey, 32 bytes
    ];
    const PUBLIC: [u8; 6] = [0xa1, 0x44, 0x03, 0x42, 0x00, 0x04]; // [1] BIT STRING, uncompressed
    let mut der = Zeroizing::new(Vec::with_capacity(138));
    der.extend_from_slice(&HEAD);
    der.extend_from_slice(&d);
    der.extend_from_slice(&PUBLIC);
    der.extend_from_slice(&x);
    der.extend_from_slice(&y);
    aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
    )
    .map_err(|_| {
        "its key does not load as an ECDSA P-256 key (d does not match x, y)".to_string()
    })?;
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    /// A certbot account directory for a fresh P-256 key, as certbot writes it.
    fn account(dir: &Path, uri: &str) -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let der = pkcs8.as_ref().to_vec();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("private_key.json"),
            serde_json::json!({"kty": "EC", "crv": "P-256", "d": b64(&der[36..68]), "x": b64(&der[74..106]), "y": b64(&der[106..138])}).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("regr.json"),
            serde_json::json!({"body": {}, "uri": uri}).to_string(),
        )
        .unwrap();
        der
    }

    #[test]
    fn a_p256_account_is_taken_over_with_its_url_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("acct");
        let der = account(&dir, "https://ca.test/acme/acct/7");
        assert_eq!(
            inspect(&dir, "https://ca.test/directory"),
            Ok("https://ca.test/acme/acct/7".into())
        );
        let creds = credentials(&dir, "https://ca.test/directory").unwrap();
        assert_eq!(creds.private_key().secret_pkcs8_der(), der.as_slice());
        let json = serde_json::to_value(&creds).unwrap();
        assert_eq!(json["id"], "https://ca.test/acme/acct/7");
        assert_eq!(json["directory"], "https://ca.test/directory");
        let loaded = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
        assert_eq!(loaded.public_key().as_ref()[1..], der[74..138]);

        assert_eq!(
            credentials(&dir, "https://other.test/dir").err().unwrap(),
            "its account \"https://ca.test/acme/acct/7\" belongs to another ACME server than the directory \"https://other.test/dir\""
        );
    }

    #[test]
    fn an_account_that_cannot_be_taken_over_says_why() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("acct");
        account(&dir, "https://ca.test/acme/acct/7");
        std::fs::write(
            dir.join("private_key.json"),
            r#"{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}"#,
        )
        .unwrap();
        assert_eq!(
            inspect(&dir, "https://ca.test/dir").unwrap_err(),
            "its key is RSA, and certagent's ACME client signs with ECDSA P-256 keys only"
        );
        // A d that is not the x, y key's.
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
        account(&one, "https://ca.test/acme/acct/8");
        account(&two, "https://ca.test/acme/acct/9");
        let jwk = |d: &Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(d.join("private_key.json")).unwrap()).unwrap()
        };
        let mut mixed = jwk(&one);
        mixed["d"] = jwk(&two)["d"].clone();
        std::fs::write(one.join("private_key.json"), mixed.to_string()).unwrap();
        assert_eq!(
            inspect(&one, "https://ca.test/dir").unwrap_err(),
            "its key does not load as an ECDSA P-256 key (d does not match x, y)"
        );
        let other = one;
        std::fs::remove_file(other.join("regr.json")).unwrap();
        assert!(
            inspect(&other, "https://ca.test/dir")
                .unwrap_err()
                .ends_with("regr.json\" does not exist")
        );
    }
}
