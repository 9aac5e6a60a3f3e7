//! Helpers shared by the fuzz targets and the seed generator.

use std::sync::OnceLock;

/// A fixed P-256 key (PKCS#8 DER) for the CRL target's issuer. Fixed, so that seed CRLs
/// signed by it (see `gen_seeds`) get past the signature check into the serial lookup. A
/// throw-away test key: it signs nothing but fuzz seeds.
const CRL_ISSUER_KEY_HEX: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b\
0201010420f1ab1c12771d3a205f66c6a5e0ffa9aed7ad08e9e0c9ea2608a3327ed7a8d475a14403420004951778\
87261bd2b911a75bae6ebdd21c08206b7813f54ea1de4eb9833c8c97c7340e0d118453865aaabecb8c2010f7417a\
782bd26fe64467de363085f2a4ca8f";

pub const CRL_ISSUER_CN: &str = "certagent fuzz CA";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect()
}

pub fn crl_issuer_key() -> rcgen::KeyPair {
    rcgen::KeyPair::try_from(unhex(CRL_ISSUER_KEY_HEX).as_slice()).expect("fixed issuer key")
}

/// The CRL target's issuer certificate (DER): self-signed by the fixed key, generated once.
pub fn crl_issuer_der() -> &'static [u8] {
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| {
        let key = crl_issuer_key();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, CRL_ISSUER_CN);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p.self_signed(&key)
            .expect("self-signed issuer")
            .der()
            .to_vec()
    })
}

/// Splits a CRL-target input into (serial, CRL bytes): the first byte says how many of the
/// following bytes (0..=20) are the serial.
pub fn split_crl_input(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = (n as usize % 21).min(rest.len());
    rest.split_at(n)
}
