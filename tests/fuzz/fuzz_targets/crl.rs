//! CRLs (DER or PEM): `revocation::crl_lookup` against a fixed issuer, with a serial taken
//! from the first bytes of the input.
#![no_main]

use std::sync::OnceLock;

use certagent::revocation::crl_lookup;
use certagent_fuzz::{crl_issuer_der, split_crl_input};
use libfuzzer_sys::fuzz_target;
use x509_parser::prelude::*;

fn issuer() -> &'static X509Certificate<'static> {
    static ISSUER: OnceLock<X509Certificate<'static>> = OnceLock::new();
    ISSUER.get_or_init(|| {
        X509Certificate::from_der(crl_issuer_der())
            .expect("issuer parses")
            .1
    })
}

fuzz_target!(|data: &[u8]| {
    let (serial, crl) = split_crl_input(data);
    if let Ok(v) = crl_lookup(crl, serial, issuer()) {
        // Only a CRL signed by the issuer is believed, and the fuzzer cannot forge one: an Ok
        // verdict means the input still carries a seed CRL's signed bytes.
        let _ = format!("{v:?}");
    }
});
