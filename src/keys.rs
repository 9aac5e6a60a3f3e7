//! Keys, CSRs and certificates as bytes: generation (rcgen on aws-lc-rs), bounded PEM parsing,
//! leaf facts, and the pair check that proves a key really belongs to a certificate (the same
//! question nginx and mod_ssl ask, answered by a sign/verify round trip).
//!
//! Private keys live in `SecretPem`, which zeroizes on drop and never prints its contents.

use std::collections::BTreeSet;
use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PublicKeyData, RsaKeySize, SanType, SigningKey,
};
use x509_parser::prelude::*;
use zeroize::Zeroizing;

use crate::core::{CertName, KeySpec, LeafFacts};

/// Files we read are capped: a chain is a few KiB.
pub(crate) const MAX_PEM_BYTES: usize = 1 << 20;
/// A chain longer than this is not a certificate chain.
pub(crate) const MAX_PEM_BLOCKS: usize = 16;

/// A PEM-encoded private key. Zeroized on drop; `Debug` is redacted.
pub struct SecretPem(Zeroizing<String>);

impl SecretPem {
    pub(crate) fn new(pem: String) -> Self {
        SecretPem(Zeroizing::new(pem))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// A private key we can sign with, and what it is.
pub struct PrivateKey {
    pair: KeyPair,
    pub spec: Option<KeySpec>,
    /// The PEM it was read from, kept as is: re-serialising a SEC1 or PKCS#1 key through
    /// rcgen would label SEC1 bytes "PRIVATE KEY", which OpenSSL (and so nginx) rejects.
    original: Option<SecretPem>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PrivateKey({:?}, spki {})",
            self.spec,
            self.spki_sha256()
        )
    }
}

impl PrivateKey {
    pub fn generate(spec: KeySpec) -> Result<PrivateKey, String> {
        let pair = match spec {
            KeySpec::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeySpec::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeySpec::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
            KeySpec::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
            }
            KeySpec::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
            }
        }
        .map_err(|e| format!("failed to generate {spec} key: {e}"))?;
        Ok(PrivateKey {
            pair,
            spec: Some(spec),
            original: None,
        })
    }

    /// Parse a PEM private key (PKCS#8, SEC1 or PKCS#1). Encrypted keys, several keys, or a
    /// key of a type we do not issue are errors; the message never contains key bytes.
    pub fn from_pem(pem: &str) -> Result<PrivateKey, String> {
        let blocks = pem_blocks(pem.as_bytes())?;
        let keys: Vec<_> = blocks
            .iter()
            .filter(|b| b.tag().ends_with("PRIVATE KEY"))
            .collect();
        match keys.as_slice() {
            [] => return Err("no PEM private key found".into()),
            [one] if one.tag() == "ENCRYPTED PRIVATE KEY" => {
                return Err(
                    "the private key is encrypted; web servers need an unencrypted key".into(),
                );
            }
            [_] => {}
            _ => return Err(format!("expected one private key, found {}", keys.len())),
        }
        let der = Zeroizing::new(keys[0].contents().to_vec());
        let pair = KeyPair::try_from(der.as_slice())
            .map_err(|e| format!("unsupported or corrupt private key: {e}"))?;
        let spec = spec_of_spki(&pair.subject_public_key_info());
        Ok(PrivateKey {
            pair,
            spec,
            original: Some(SecretPem::new(pem.to_string())),
        })
    }

    pub fn to_pem(&self) -> SecretPem {
        match &self.original {
            Some(pem) => SecretPem::new(pem.as_str().to_string()),
            None => SecretPem::new(self.pair.serialize_pem()),
        }
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    pub fn spki_sha256(&self) -> String {
        sha256_hex(&self.spki_der())
    }

    /// A CSR for `names`: dNSName and iPAddress SANs, an empty subject.
    pub(crate) fn csr_der(&self, names: &[CertName]) -> Result<Vec<u8>, String> {
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            san_list(names).map_err(|e| format!("failed to build CSR: {e}"))?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&self.pair)
            .map_err(|e| format!("failed to sign CSR: {e}"))?;
        Ok(csr.der().to_vec())
    }

    pub fn key_pair(&self) -> &KeyPair {
        &self.pair
    }

    /// Whether this key is the key of the certificate whose public key is `spki_der`, and is
    /// not corrupt. A key file whose private half does not match its public half never loads
    /// (aws-lc checks the pair on import: `from_pem` refuses it, see
    /// `a_key_whose_halves_disagree_does_not_load`), so the same public key encoded the same
    /// way is enough; any other encoding is decided by a signature made with this key and
    /// verified with that public key.
    pub fn verifies_with(&self, spki_der: &[u8]) -> bool {
        if self.spki_der() == spki_der {
            return true;
        }
        let msg = b"certagent pair check";
        let Ok(sig) = self.pair.sign(msg) else {
            return false;
        };
        let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
            return false;
        };
        let alg: &dyn VerificationAlgorithm = match spec_of_spki(spki_der) {
            Some(KeySpec::EcdsaP256) => &signature::ECDSA_P256_SHA256_ASN1,
            Some(KeySpec::EcdsaP384) => &signature::ECDSA_P384_SHA384_ASN1,
            Some(KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096) => {
                &signature::RSA_PKCS1_2048_8192_SHA256
            }
            None => return false,
        };
        // rcgen signs RSA with PKCS#1 v1.5 SHA-256 and ECDSA with the curve's hash (ASN.1).
        if self.pair.algorithm() != &rcgen::PKCS_RSA_SHA256
            && self.pair.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256
            && self.pair.algorithm() != &rcgen::PKCS_ECDSA_P384_SHA384
        {
            return false;
        }
        UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
            .verify(msg, &sig)
            .is_ok()
    }
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// Which of our key specs a DER SubjectPublicKeyInfo is, if any.
pub(crate) fn spec_of_spki(spki_der: &[u8]) -> Option<KeySpec> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::EC(point) => {
            let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
            if curve == oid_registry::OID_EC_P256 && point.key_size() == 256 {
                Some(KeySpec::EcdsaP256)
            } else if curve == oid_registry::OID_NIST_EC_P384 && point.key_size() == 384 {
                Some(KeySpec::EcdsaP384)
            } else {
                None
            }
        }
        x509_parser::public_key::PublicKey::RSA(rsa) => match rsa.key_size() {
            2048 => Some(KeySpec::Rsa2048),
            3072 => Some(KeySpec::Rsa3072),
            4096 => Some(KeySpec::Rsa4096),
            _ => None,
        },
        _ => None,
    }
}

/// PEM blocks of a file, with the size and block-count caps applied.
pub(crate) fn pem_blocks(data: &[u8]) -> Result<Vec<pem_rfc7468_like::Block>, String> {
    pem_rfc7468_like::parse(data)
}

/// A parsed certificate chain, leaf first, as DER.
#[derive(Clone, Debug)]
pub struct Chain {
    pub certs: Vec<Vec<u8>>,
}

impl Chain {
    pub fn from_pem(pem: &[u8]) -> Result<Chain, String> {
        let blocks = pem_blocks(pem)?;
        if blocks.iter().any(|b| b.tag().ends_with("PRIVATE KEY")) {
            return Err("the certificate file also contains a private key".into());
        }
        let certs: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| b.contents().to_vec())
            .collect();
        if certs.is_empty() {
            return Err("no PEM certificate found".into());
        }
        for (i, der) in certs.iter().enumerate() {
            X509Certificate::from_der(der)
                .map_err(|e| format!("certificate {} of the chain does not parse: {e}", i + 1))?;
        }
        Ok(Chain { certs })
    }

    pub(crate) fn leaf_der(&self) -> &[u8] {
        &self.certs[0]
    }

    pub fn leaf(&self) -> Result<LeafFacts, String> {
        leaf_facts(self.leaf_der())
    }

    /// The leaf's subject distinguished name (RFC 4514 text, as `LeafFacts::issuer_dn`).
    pub fn leaf_subject_dn(&self) -> Result<String, String> {
        let (_, cert) = X509Certificate::from_der(self.leaf_der())
            .map_err(|e| format!("leaf does not parse: {e}"))?;
        Ok(cert.subject().to_string())
    }

    pub fn leaf_spki_der(&self) -> Result<Vec<u8>, String> {
        let (_, cert) = X509Certificate::from_der(self.leaf_der())
            .map_err(|e| format!("leaf does not parse: {e}"))?;
        Ok(cert.public_key().raw.to_vec())
    }

    pub fn to_pem(&self) -> String {
        self.certs
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// Intermediates only (what `chain_file` gets).
    pub fn intermediates_pem(&self) -> String {
        self.certs[1..]
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    pub fn leaf_pem(&self) -> String {
        pem_encode("CERTIFICATE", self.leaf_der())
    }

    /// Each certificate is signed by the next one (when the next one is present).
    pub fn check_links(&self) -> Result<(), String> {
        for pair in self.certs.windows(2) {
            let (_, child) = X509Certificate::from_der(&pair[0]).map_err(|e| e.to_string())?;
            let (_, parent) = X509Certificate::from_der(&pair[1]).map_err(|e| e.to_string())?;
            if child.issuer() != parent.subject() {
                return Err(format!(
                    "chain is out of order: {:?} is not issued by {:?}",
                    child.subject().to_string(),
                    parent.subject().to_string()
                ));
            }
            child
                .verify_signature(Some(parent.public_key()))
                .map_err(|_| {
                    format!(
                        "chain is broken: the signature on {:?} does not verify",
                        child.subject().to_string()
                    )
                })?;
        }
        Ok(())
    }
}

pub fn pem_encode(tag: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

/// The SANs for `names`, in order: a DNS name as dNSName, an IP address as iPAddress
/// (RFC 8738 §3).
pub(crate) fn san_list(names: &[CertName]) -> Result<Vec<SanType>, rcgen::Error> {
    names
        .iter()
        .map(|n| {
            Ok(match n {
                CertName::Dns(d) => SanType::DnsName(d.as_str().to_string().try_into()?),
                CertName::Ip(ip) => SanType::IpAddress(*ip),
            })
        })
        .collect()
}

/// A SAN as the canonical text of the name it stands for (see `CertName`); `None` for kinds
/// certagent does not issue (URI, e-mail, …) and malformed addresses.
fn san_text(n: &GeneralName) -> Option<String> {
    match n {
        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b)
                .ok()
                .map(|a| std::net::IpAddr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(*b)
                .ok()
                .map(|a| std::net::IpAddr::from(a).to_string()),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn leaf_facts(der: &[u8]) -> Result<LeafFacts, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("leaf certificate does not parse: {e}"))?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        names.extend(san.value.general_names.iter().filter_map(san_text));
    }
    let spki = cert.public_key().raw;
    let crl_urls = crl_urls(&cert);
    let cert_id = cert_id(&cert);
    Ok(LeafFacts {
        crl_urls,
        cert_id,
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: serial_hex(cert.raw_serial()),
        key_spec: spec_of_spki(spki),
        spki_sha256: sha256_hex(spki),
        issuer_dn: cert.issuer().to_string(),
    })
}

/// http(s) URLs from the certificate's CRL Distribution Points.
pub(crate) fn crl_urls(cert: &X509Certificate) -> Vec<String> {
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for p in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                    for n in names {
                        if let GeneralName::URI(u) = n
                            && (u.starts_with("http://") || u.starts_with("https://"))
                            && u.len() < 2048
                        {
                            urls.push(u.to_string());
                        }
                    }
                }
            }
        }
    }
    urls
}

/// RFC 9773 §4.1 CertID: base64url(AKI keyIdentifier) "." base64url(serial content bytes).
pub(crate) fn cert_id(cert: &X509Certificate) -> Option<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })?;
    // raw_serial() is the INTEGER's content octets, leading 0x00 pad included.
    Some(format!(
        "{}.{}",
        b64.encode(aki),
        b64.encode(cert.raw_serial())
    ))
}

/// Serial number as lower-case hex without leading zeros (how Pebble and most tools print it).
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let s = hex::encode(raw);
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.to_string()
    }
}

/// A tiny, bounded PEM reader: we need block boundaries and base64 bodies, with caps, and
/// nothing that echoes input back into error messages.
pub(crate) mod pem_rfc7468_like {
    use base64::Engine;

    use super::{MAX_PEM_BLOCKS, MAX_PEM_BYTES};

    pub(crate) struct Block {
        tag: String,
        contents: zeroize::Zeroizing<Vec<u8>>,
    }

    impl std::fmt::Debug for Block {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Block({}, {} bytes)", self.tag, self.contents.len())
        }
    }

    impl Block {
        pub(crate) fn tag(&self) -> &str {
            &self.tag
        }
        pub(crate) fn contents(&self) -> &[u8] {
            &self.contents
        }
    }

    pub(crate) fn parse(data: &[u8]) -> Result<Vec<Block>, String> {
        if data.len() > MAX_PEM_BYTES {
            return Err(format!(
                "PEM data is larger than {} KiB",
                MAX_PEM_BYTES >> 10
            ));
        }
        let text = std::str::from_utf8(data).map_err(|_| "PEM data is not text".to_string())?;
        let mut blocks = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let line = line.trim();
            let Some(tag) = line
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
            else {
                continue;
            };
            if blocks.len() == MAX_PEM_BLOCKS {
                return Err(format!("more than {MAX_PEM_BLOCKS} PEM blocks"));
            }
            let end = format!("-----END {tag}-----");
            let mut b64 = zeroize::Zeroizing::new(String::new());
            let mut closed = false;
            for body in lines.by_ref() {
                let body = body.trim();
                if body == end {
                    closed = true;
                    break;
                }
                if body.contains(':') {
                    // RFC 1421 headers: "Proc-Type: 4,ENCRYPTED" marks a legacy encrypted key.
                    if body.starts_with("Proc-Type") && body.contains("ENCRYPTED") {
                        return Err(
                            "the private key is encrypted; web servers need an unencrypted key"
                                .into(),
                        );
                    }
                    continue;
                }
                b64.push_str(body);
            }
            if !closed {
                return Err(format!("PEM block {tag:?} is truncated (no END line)"));
            }
            let contents = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| format!("PEM block {tag:?} has invalid base64"))?;
            blocks.push(Block {
                tag: tag.to_string(),
                contents: zeroize::Zeroizing::new(contents),
            });
        }
        Ok(blocks)
    }
}

/// Step 3 of the transaction: the chain must be for our key and our names, currently valid,
/// and linked; the key must sign for the leaf. What fails here never reaches the server.
pub(crate) fn validate_chain(
    names: &[CertName],
    key: &PrivateKey,
    chain: &Chain,
    now: crate::core::Timestamp,
) -> Result<(), String> {
    let leaf = chain.leaf()?;
    if leaf.spki_sha256 != key.spki_sha256() {
        return Err("the certificate is for a different key".into());
    }
    let wanted: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    if leaf.names != wanted {
        let have: Vec<&String> = leaf.names.iter().collect();
        return Err(format!(
            "the certificate is for {have:?}, not the configured names {:?}",
            wanted.iter().collect::<Vec<_>>()
        ));
    }
    // CAs back-date by up to an hour; more than a day ahead means a clock problem.
    if leaf.not_before > now + 86_400 {
        return Err(format!(
            "the certificate is not valid until {} (check the clock)",
            crate::core::rfc3339(leaf.not_before)
        ));
    }
    if leaf.not_after <= now {
        return Err(format!(
            "the certificate expired at {}",
            crate::core::rfc3339(leaf.not_after)
        ));
    }
    chain.check_links()?;
    if !key.verifies_with(&chain.leaf_spki_der()?) {
        return Err(
            "the key does not sign for the certificate (sign/verify round trip failed)".into(),
        );
    }
    Ok(())
}

/// The pair check of a generation, the question nginx and mod_ssl ask when they load it: the
/// certificate parses, the key (read only once the certificate parsed) parses, the key is the
/// leaf's key, and (for the key types certagent issues) it signs what the leaf's key verifies.
pub(crate) fn check_generation(
    fullchain_pem: &[u8],
    key_pem: impl FnOnce() -> Result<Zeroizing<Vec<u8>>, String>,
) -> Result<(), String> {
    let chain = Chain::from_pem(fullchain_pem).map_err(|e| format!("certificate: {e}"))?;
    let key_pem = key_pem()?;
    let key = PrivateKey::from_pem(&String::from_utf8_lossy(&key_pem))
        .map_err(|e| format!("key: {e}"))?;
    let leaf = chain.leaf()?;
    if leaf.spki_sha256 != key.spki_sha256() {
        return Err("the key does not belong to the certificate".into());
    }
    if key.spec.is_some() && !key.verifies_with(&chain.leaf_spki_der()?) {
        return Err(
            "the key does not sign for the certificate (sign/verify round trip failed)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn names(list: &[&str]) -> Vec<CertName> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn generated_keys_parse_back_with_their_spec() {
        for spec in [KeySpec::EcdsaP256, KeySpec::EcdsaP384, KeySpec::Rsa2048] {
            let key = PrivateKey::generate(spec).unwrap();
            let pem = key.to_pem();
            assert!(pem.as_str().starts_with("-----BEGIN PRIVATE KEY-----"));
            let back = PrivateKey::from_pem(pem.as_str()).unwrap();
            assert_eq!(back.spec, Some(spec), "{spec}");
            assert_eq!(back.spki_sha256(), key.spki_sha256());
            assert_eq!(spec_of_spki(&key.spki_der()), Some(spec));
        }
    }

    #[test]
    fn csr_carries_the_names_and_the_key() {
        let key = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let der = key.csr_der(&names(&["a.test", "*.b.test"])).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(
            csr.certification_request_info.subject_pki.raw,
            key.spki_der().as_slice()
        );
        let mut found = Vec::new();
        for ext in csr.requested_extensions().unwrap() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    if let GeneralName::DNSName(d) = n {
                        found.push(d.to_string());
                    }
                }
            }
        }
        assert_eq!(found, vec!["a.test", "*.b.test"]);
    }

    #[test]
    fn csr_carries_ip_addresses_as_ip_sans_without_a_subject() {
        let key = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let der = key
            .csr_der(&names(&["a.test", "127.0.0.1", "2001:db8::1"]))
            .unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for ext in csr.requested_extensions().unwrap() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => dns.push(d.to_string()),
                        GeneralName::IPAddress(b) => ips.push(b.to_vec()),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
        }
        assert_eq!(dns, vec!["a.test"]);
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(ips, vec![vec![127, 0, 0, 1], v6.octets().to_vec()]);
    }

    /// A leaf with iPAddress SANs matches the IP names however the addresses are written.
    #[test]
    fn names_check_compares_ip_sans_with_ip_names_canonically() {
        let key = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let leaf = |sans: Vec<SanType>| {
            let mut params = CertificateParams::default();
            params.subject_alt_names = sans;
            params.not_before = ::time::OffsetDateTime::from_unix_timestamp(1_000).unwrap();
            params.not_after = ::time::OffsetDateTime::from_unix_timestamp(3_000_000_000).unwrap();
            let cert = params.self_signed(key.key_pair()).unwrap();
            Chain {
                certs: vec![cert.der().to_vec()],
            }
        };
        let ip_leaf = leaf(vec![
            SanType::IpAddress("::1".parse().unwrap()),
            SanType::DnsName("a.test".try_into().unwrap()),
        ]);
        assert_eq!(
            ip_leaf.leaf().unwrap().names,
            ["::1", "a.test"].map(String::from).into()
        );
        let now = 2_000_000_000;
        validate_chain(&names(&["a.test", "0:0::1"]), &key, &ip_leaf, now).unwrap();
        let err = validate_chain(&names(&["a.test", "::2"]), &key, &ip_leaf, now).unwrap_err();
        assert_eq!(
            err,
            "the certificate is for [\"::1\", \"a.test\"], not the configured names [\"::2\", \"a.test\"]"
        );
        let v4_leaf = leaf(vec![SanType::IpAddress("1.2.3.4".parse().unwrap())]);
        validate_chain(&names(&["1.2.3.4"]), &key, &v4_leaf, now).unwrap();
    }

    /// `key`'s PKCS#8 PEM with the bytes of `ours` replaced by `theirs`.
    fn spliced(key: &PrivateKey, ours: &[u8], theirs: &[u8]) -> String {
        let der = key.pair.serialize_der();
        let at = der
            .windows(ours.len())
            .position(|w| w == ours)
            .expect("public key in the PKCS#8");
        let mut der = der.clone();
        der[at..at + ours.len()].copy_from_slice(theirs);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn a_key_whose_halves_disagree_does_not_load() {
        // EC: the private scalar of one key with the public point of another.
        for spec in [KeySpec::EcdsaP256, KeySpec::EcdsaP384] {
            let a = PrivateKey::generate(spec).unwrap();
            let b = PrivateKey::generate(spec).unwrap();
            let point = |k: &PrivateKey| {
                let spki = k.spki_der();
                let len = if spec == KeySpec::EcdsaP256 { 65 } else { 97 };
                spki[spki.len() - len..].to_vec()
            };
            let pem = spliced(&a, &point(&a), &point(&b));
            assert!(PrivateKey::from_pem(&pem).is_err(), "{spec}: loaded");
            // The splice itself is sound: putting the own point back loads.
            let pem = spliced(&a, &point(&a), &point(&a));
            assert!(
                PrivateKey::from_pem(&pem).is_ok(),
                "{spec}: own point refused"
            );
        }
        // RSA: the primes of one key with the modulus of another (e = 65537 closes the SPKI).
        let a = PrivateKey::generate(KeySpec::Rsa2048).unwrap();
        let b = PrivateKey::generate(KeySpec::Rsa2048).unwrap();
        let modulus = |k: &PrivateKey| {
            let spki = k.spki_der();
            spki[spki.len() - 5 - 256..spki.len() - 5].to_vec()
        };
        let pem = spliced(&a, &modulus(&a), &modulus(&b));
        assert!(PrivateKey::from_pem(&pem).is_err(), "RSA: loaded");
    }

    #[test]
    fn pair_check_accepts_the_own_key_only() {
        let a = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let b = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let r = PrivateKey::generate(KeySpec::Rsa2048).unwrap();
        assert!(a.verifies_with(&a.spki_der()));
        assert!(!a.verifies_with(&b.spki_der()));
        assert!(!a.verifies_with(&r.spki_der()));
        assert!(r.verifies_with(&r.spki_der()));
        // The same public key encoded otherwise (a compressed point) is decided by a
        // signature: accepted for the own key only.
        let compressed = |k: &PrivateKey| {
            let spki = k.spki_der();
            let (alg, point) = (&spki[2..23], &spki[spki.len() - 64..]);
            let mut out = vec![0x30, 0x39];
            out.extend_from_slice(alg);
            out.extend_from_slice(&[0x03, 0x22, 0x00, 0x02 | (point[63] & 1)]);
            out.extend_from_slice(&point[..32]);
            out
        };
        assert_ne!(compressed(&a), a.spki_der());
        assert!(a.verifies_with(&compressed(&a)));
        assert!(!a.verifies_with(&compressed(&b)));
    }

    #[test]
    fn hostile_pem_is_refused_without_echoing_it() {
        let big = vec![b'A'; MAX_PEM_BYTES + 1];
        assert_eq!(
            pem_blocks(&big).unwrap_err(),
            "PEM data is larger than 1024 KiB"
        );
        let many = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            .repeat(MAX_PEM_BLOCKS + 1);
        assert_eq!(
            pem_blocks(many.as_bytes()).unwrap_err(),
            "more than 16 PEM blocks"
        );
        let truncated = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n";
        assert_eq!(
            PrivateKey::from_pem(truncated).unwrap_err(),
            "PEM block \"PRIVATE KEY\" is truncated (no END line)"
        );
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            PrivateKey::from_pem(enc).unwrap_err(),
            "the private key is encrypted; web servers need an unencrypted key"
        );
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(
            PrivateKey::from_pem(legacy)
                .unwrap_err()
                .contains("encrypted")
        );
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = PrivateKey::from_pem(garbage).unwrap_err();
        assert!(
            err.starts_with("unsupported or corrupt private key"),
            "{err}"
        );
        assert_eq!(
            format!("{:?}", SecretPem::new("secret".into())),
            "SecretPem(<redacted>)"
        );
    }

    #[test]
    fn serials_print_without_leading_zeros() {
        assert_eq!(serial_hex(&[0x00, 0x8d, 0xed]), "8ded");
        assert_eq!(serial_hex(&[0]), "0");
    }

    /// RFC 9773 Appendix A.
    const RFC9773_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBQzCB66ADAgECAgUAh2VDITAKBggqhkjOPQQDAjAVMRMwEQYDVQQDEwpFeGFt
cGxlIENBMCIYDzAwMDEwMTAxMDAwMDAwWhgPMDAwMTAxMDEwMDAwMDBaMBYxFDAS
BgNVBAMTC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeBZu
7cbpAYNXZLbbh8rNIzuOoqOOtmxA1v7cRm//AwyMwWxyHz4zfwmBhcSrf47NUAFf
qzLQ2PPQxdTXREYEnKMjMCEwHwYDVR0jBBgwFoAUaYhba4dGQEHhs3uEe6CuLN4B
yNQwCgYIKoZIzj0EAwIDRwAwRAIge09+S5TZAlw5tgtiVvuERV6cT4mfutXIlwTb
+FYN/8oCIClDsqBklhB9KAelFiYt9+6FDj3z4KGVelYM5MdsO3pK
-----END CERTIFICATE-----
";

    #[test]
    fn cert_id_matches_the_rfc_9773_example() {
        let chain = crate::keys::Chain::from_pem(RFC9773_CERT.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(chain.leaf_der()).unwrap();
        assert_eq!(
            cert_id(&cert).unwrap(),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
    }
}
