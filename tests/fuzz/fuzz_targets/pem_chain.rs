//! PEM certificate chains: `Chain::from_pem`, then everything the agent does with a chain.
#![no_main]

use certagent::keys::{Chain, pem_encode};
use libfuzzer_sys::fuzz_target;

fn check(pem: &[u8]) {
    let Ok(chain) = Chain::from_pem(pem) else {
        return;
    };
    assert!(!chain.certs.is_empty(), "an Ok chain has a leaf");
    let _ = chain.leaf();
    let _ = chain.leaf_spki_der();
    let _ = chain.check_links();
    let _ = chain.intermediates_pem();
    let _ = chain.leaf_pem();
    // Property: what we write is what we read.
    let text = chain.to_pem();
    match Chain::from_pem(text.as_bytes()) {
        Ok(again) => assert_eq!(
            again.certs, chain.certs,
            "to_pem round trip changed the DER"
        ),
        Err(e) => panic!("to_pem output does not parse again: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes as one DER certificate: reaches the X.509 parser without base64 in the way.
    check(pem_encode("CERTIFICATE", data).as_bytes());
});
