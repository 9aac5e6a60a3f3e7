//! PEM private keys (PKCS#8, SEC1, PKCS#1): `PrivateKey::from_pem`, the SPKI hash and the
//! pair check.
#![no_main]

use certagent::keys::{PrivateKey, pem_encode};
use libfuzzer_sys::fuzz_target;

fn check(pem: &str) {
    let Ok(key) = PrivateKey::from_pem(pem) else {
        return;
    };
    let spki = key.spki_der();
    assert_eq!(key.spki_sha256().len(), 64);
    let ok = key.verifies_with(&spki);
    // A key of a type we issue must pass its own pair check.
    if key.spec.is_some() {
        assert!(
            ok,
            "a {:?} key fails the pair check with its own SPKI",
            key.spec
        );
    }
    // The key is kept as read (SEC1/PKCS#1 labels matter to OpenSSL), and never printed.
    assert_eq!(key.to_pem().as_str(), pem);
    let debug = format!("{key:?}");
    assert!(
        !debug.contains("PRIVATE KEY"),
        "Debug shows the key: {debug}"
    );
}

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
    // The rest of the bytes as the DER of a key, under the label the first byte picks.
    if let Some((&sel, der)) = data.split_first() {
        let tag = ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"][sel as usize % 3];
        check(&pem_encode(tag, der));
    }
});
