//! JWS signed with a certificate's own key (RFC 8555 §6.2, §7.6): the header carries the
//! public key as `jwk` instead of an account URL. instant-acme only signs with account keys,
//! and a revocation signed by the compromised key is what makes a CA like Let's Encrypt block
//! that key for good.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rcgen::SigningKey;
use serde_json::{Value, json};
use x509_parser::prelude::*;

use crate::core::KeySpec;
use crate::keys::PrivateKey;

/// `alg` and `jwk` for a key.
pub(crate) fn jwk(key: &PrivateKey) -> Result<(&'static str, Value), String> {
    let spki_der = key.spki_der();
    let (_, spki) = SubjectPublicKeyInfo::from_der(&spki_der).map_err(|e| e.to_string())?;
    match (key.spec, spki.parsed().map_err(|e| e.to_string())?) {
        (
            Some(spec @ (KeySpec::EcdsaP256 | KeySpec::EcdsaP384)),
            x509_parser::public_key::PublicKey::EC(point),
        ) => {
            let raw = point.data();
            let n = (raw.len() - 1) / 2;
            let (x, y) = (&raw[1..1 + n], &raw[1 + n..]);
            let (alg, crv) = if spec == KeySpec::EcdsaP256 {
                ("ES256", "P-256")
            } else {
                ("ES384", "P-384")
            };
            Ok((
                alg,
                json!({"crv": crv, "kty": "EC", "x": B64.encode(x), "y": B64.encode(y)}),
            ))
        }
        (_, x509_parser::public_key::PublicKey::RSA(rsa)) => {
            let strip = |b: &[u8]| {
                b.iter()
                    .skip_while(|&&x| x == 0)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            Ok((
                "RS256",
                json!({"e": B64.encode(strip(rsa.exponent)), "kty": "RSA", "n": B64.encode(strip(rsa.modulus))}),
            ))
        }
        _ => Err("unsupported key type for a JWS".into()),
    }
}

/// A flattened JWS of `payload` with `protected` (which must already hold `alg`).
pub(crate) fn sign(key: &PrivateKey, protected: &Value, payload: &Value) -> Result<Value, String> {
    let protected = B64.encode(protected.to_string());
    let payload = B64.encode(payload.to_string());
    let input = format!("{protected}.{payload}");
    let sig = key
        .key_pair()
        .sign(input.as_bytes())
        .map_err(|e| format!("failed to sign: {e}"))?;
    let sig = match key.spec {
        Some(KeySpec::EcdsaP256) => der_to_fixed(&sig, 32)?,
        Some(KeySpec::EcdsaP384) => der_to_fixed(&sig, 48)?,
        _ => sig,
    };
    Ok(json!({"protected": protected, "payload": payload, "signature": B64.encode(sig)}))
}

/// ECDSA signature: DER `SEQUENCE { INTEGER r, INTEGER s }` -> JWS `r || s`, each `len` bytes
/// (RFC 7518 §3.4).
fn der_to_fixed(der: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let bad = || "malformed ECDSA signature".to_string();
    let (_, obj) = x509_parser::der_parser::parse_der(der).map_err(|_| bad())?;
    let seq = obj.as_sequence().map_err(|_| bad())?;
    if seq.len() != 2 {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(2 * len);
    for int in seq {
        let bytes = int.as_slice().map_err(|_| bad())?;
        let bytes: Vec<u8> = bytes.iter().skip_while(|&&b| b == 0).copied().collect();
        if bytes.len() > len {
            return Err(bad());
        }
        out.extend(std::iter::repeat_n(0u8, len - bytes.len()));
        out.extend(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{self, UnparsedPublicKey};

    use super::*;

    #[test]
    fn es256_and_es384_signatures_verify_as_fixed_width_jws() {
        for (spec, alg, width) in [
            (KeySpec::EcdsaP256, &signature::ECDSA_P256_SHA256_FIXED, 32),
            (KeySpec::EcdsaP384, &signature::ECDSA_P384_SHA384_FIXED, 48),
        ] {
            let key = PrivateKey::generate(spec).unwrap();
            let (name, jwk) = jwk(&key).unwrap();
            let jws = sign(&key, &json!({"alg": name, "jwk": jwk}), &json!({"x": 1})).unwrap();
            let sig = B64.decode(jws["signature"].as_str().unwrap()).unwrap();
            assert_eq!(sig.len(), 2 * width);
            let input = format!(
                "{}.{}",
                jws["protected"].as_str().unwrap(),
                jws["payload"].as_str().unwrap()
            );
            let raw = key.key_pair().public_key_raw().to_vec();
            UnparsedPublicKey::new(alg, raw.clone())
                .verify(input.as_bytes(), &sig)
                .unwrap();
            // The JWK's coordinates are the key's public point.
            let x = B64.decode(jwk["x"].as_str().unwrap()).unwrap();
            let y = B64.decode(jwk["y"].as_str().unwrap()).unwrap();
            assert_eq!([&[4u8][..], &x, &y].concat(), raw);
        }
    }

    #[test]
    fn rs256_jwk_carries_modulus_and_exponent() {
        let key = PrivateKey::generate(KeySpec::Rsa2048).unwrap();
        let (name, jwk) = jwk(&key).unwrap();
        assert_eq!(name, "RS256");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(B64.decode(jwk["n"].as_str().unwrap()).unwrap().len(), 256);
    }
}
