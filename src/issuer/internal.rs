//! The embedded local CA: an ECDSA P-256 root created in the state directory on first use,
//! which signs at once. The default issuer, so certagent works with no account and no network.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SerialNumber, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;

use crate::config::InternalIssuer;
use crate::core::{CertName, Timestamp};
use crate::error::{Context, Error, Result};
use crate::keys::{Chain, PrivateKey};
use crate::store::{Perms, fsutil};

pub(crate) struct LocalCa {
    dir: PathBuf,
    validity: i64,
}

impl LocalCa {
    pub(crate) fn new(dir: &Path, cfg: &InternalIssuer) -> LocalCa {
        LocalCa {
            dir: dir.to_path_buf(),
            validity: cfg.validity.0,
        }
    }

    pub(crate) fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Load the CA's certificate and key, if both are there.
    fn load(&self) -> Result<Option<(String, PrivateKey)>> {
        let (Some(key), Some(cert)) = (
            fsutil::read_capped(&self.dir.join("ca.key"), 64 << 10)?,
            fsutil::read_capped(&self.ca_cert_path(), 64 << 10)?,
        ) else {
            return Ok(None);
        };
        let key = PrivateKey::from_pem(&String::from_utf8_lossy(&key))
            .map_err(|e| Error::msg(format!("failed to load local CA key: {e}")))?;
        Ok(Some((String::from_utf8_lossy(&cert).into_owned(), key)))
    }

    /// Load the CA, creating it the first time. Creation holds an exclusive `flock` on
    /// `ca.lock`, so jobs issuing in parallel (threads or processes) create one CA, not a
    /// key from one and a certificate from another. The key is written 0600 before the
    /// certificate, so a crash in between leaves no certificate without its key.
    fn load_or_create(&self, now: Timestamp) -> Result<(String, PrivateKey)> {
        if let Some(ca) = self.load()? {
            return Ok(ca);
        }
        let lock_path = self.dir.join("ca.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("failed to open {}", lock_path.display()))?;
        let _held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("failed to lock {}", lock_path.display()))?;
        if let Some(ca) = self.load()? {
            return Ok(ca);
        }
        self.create(now)
    }

    /// Generate the CA key and self-signed certificate and write them, key first.
    fn create(&self, now: Timestamp) -> Result<(String, PrivateKey)> {
        let key_path = self.dir.join("ca.key");
        let cert_path = self.ca_cert_path();
        let key = PrivateKey::generate(crate::core::KeySpec::EcdsaP256).map_err(Error::msg)?;
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("certagent local CA ({host})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(now - 3_600)?;
        params.not_after = at(now + 10 * 365 * 86_400)?;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(key.key_pair())
            .context("failed to create local CA")?;
        fsutil::replace_file(&key_path, key.to_pem().as_bytes(), Perms::mode(0o600))?;
        fsutil::replace_file(&cert_path, cert.pem().as_bytes(), Perms::mode(0o644))?;
        log::info!(ca = cert_path.display().to_string().as_str(); "created local CA");
        Ok((cert.pem(), key))
    }

    /// Sign a leaf for `names` and the public key `spki_der`.
    pub(crate) fn issue(
        &self,
        names: &[CertName],
        spki_der: &[u8],
        now: Timestamp,
    ) -> Result<Chain> {
        let (ca_pem, ca_key) = self.load_or_create(now)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key.key_pair())
            .context("failed to load local CA certificate")?;
        let params = self.leaf_params(names, now)?;
        // Test builds can make this CA misbehave like a broken one: sign some other key.
        #[cfg(feature = "failpoints")]
        let foreign = crate::failpoint::active("issue-foreign-key")
            .then(|| PrivateKey::generate(crate::core::KeySpec::EcdsaP256).map(|k| k.spki_der()))
            .transpose()
            .map_err(Error::msg)?;
        #[cfg(feature = "failpoints")]
        let spki_der = foreign.as_deref().unwrap_or(spki_der);
        let public =
            SubjectPublicKeyInfo::from_der(spki_der).context("failed to read public key")?;
        let leaf = params
            .signed_by(&public, &issuer)
            .context("failed to sign certificate")?;
        let ca_der = crate::keys::pem_blocks(ca_pem.as_bytes())
            .map_err(Error::msg)?
            .into_iter()
            .next()
            .map(|b| b.contents().to_vec())
            .ok_or_else(|| Error::msg("local CA certificate is empty"))?;
        #[cfg(feature = "failpoints")]
        let ca_der = if crate::failpoint::active("ca-broken-chain") {
            impostor_ca()?
        } else {
            ca_der
        };
        Ok(Chain {
            certs: vec![leaf.der().to_vec(), ca_der],
        })
    }

    /// A server leaf for `names`, valid from a minute ago for the configured validity. The
    /// CN is the first DNS name; an IP address is never a CN (CA/B BR 7.1.4.3 allows it, but
    /// clients match IP SANs only), so a certificate for IP addresses alone has no subject.
    fn leaf_params(&self, names: &[CertName], now: Timestamp) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            crate::keys::san_list(names).context("failed to build certificate")?;
        let mut dn = DistinguishedName::new();
        if let Some(first) = names.iter().find_map(CertName::dns) {
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        params.not_before = at(now - 60)?;
        params.not_after = at(now + self.validity)?;
        #[cfg(feature = "failpoints")]
        misbehave(&mut params, now)?;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// Test builds can make this CA answer like a misbehaving one (reliability.md F11, F12,
/// F18, F19): expired, not yet valid, or for other names.
#[cfg(feature = "failpoints")]
fn misbehave(params: &mut CertificateParams, now: Timestamp) -> Result<()> {
    if crate::failpoint::active("ca-expired") {
        params.not_before = at(now - 10 * 86_400)?;
        params.not_after = at(now - 86_400)?;
    }
    if crate::failpoint::active("ca-not-yet-valid") {
        params.not_before = at(now + 3 * 86_400)?;
        params.not_after = at(now + 90 * 86_400)?;
    }
    if crate::failpoint::active("ca-wrong-names") {
        params.subject_alt_names = vec![rcgen::SanType::DnsName(
            "evil.test".try_into().context("name")?,
        )];
    }
    Ok(())
}

/// For the `ca-broken-chain` failpoint: an intermediate that did not sign the leaf.
#[cfg(feature = "failpoints")]
fn impostor_ca() -> Result<Vec<u8>> {
    let other = PrivateKey::generate(crate::core::KeySpec::EcdsaP256).map_err(Error::msg)?;
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "certagent local CA (impostor)");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    Ok(p.self_signed(other.key_pair())
        .context("impostor")?
        .der()
        .to_vec())
}

impl LocalCa {
    /// Record the serial as revoked in the CA's list (`revoked`, one hex serial per line).
    /// The local CA publishes no CRL; the list is what `status` and the tests read.
    pub(crate) fn revoke(&self, leaf_der: &[u8]) -> Result<super::RevokeOutcome> {
        let serial = crate::keys::leaf_facts(leaf_der)
            .map_err(Error::msg)?
            .serial;
        let path = self.dir.join("revoked");
        let mut text = fsutil::read_capped(&path, 64 << 20)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if text.lines().any(|l| l == serial) {
            return Ok(super::RevokeOutcome::AlreadyRevoked);
        }
        text.push_str(&serial);
        text.push('\n');
        fsutil::replace_file(&path, text.as_bytes(), Perms::mode(0o644))?;
        Ok(super::RevokeOutcome::Revoked { by_key: false })
    }
}

fn at(ts: Timestamp) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(ts).context("time out of range")
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and never shortened by leading zeros
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{KeySpec, Span};

    #[test]
    fn local_ca_signs_a_leaf_for_our_key_and_names() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::new(
            tmp.path(),
            &InternalIssuer {
                validity: Span::days(30),
            },
        );
        let key = PrivateKey::generate(KeySpec::EcdsaP384).unwrap();
        let names: Vec<CertName> = vec!["a.test".parse().unwrap(), "b.test".parse().unwrap()];
        let now = 1_800_000_000;
        let chain = ca.issue(&names, &key.spki_der(), now).unwrap();
        assert_eq!(chain.certs.len(), 2);
        chain.check_links().unwrap();
        let leaf = chain.leaf().unwrap();
        assert_eq!(leaf.names, ["a.test", "b.test"].map(String::from).into());
        assert_eq!(leaf.spki_sha256, key.spki_sha256());
        assert_eq!(leaf.not_after, now + 30 * 86_400);
        assert_eq!(leaf.key_spec, Some(KeySpec::EcdsaP384));
        // the CA is reused, not re-created
        let again = ca.issue(&names, &key.spki_der(), now).unwrap();
        assert_eq!(again.certs[1], chain.certs[1]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tmp.path().join("ca.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn local_ca_signs_ip_addresses_as_ip_sans_with_the_first_dns_name_as_cn() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::new(
            tmp.path(),
            &InternalIssuer {
                validity: Span(6 * 3_600),
            },
        );
        let key = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let now = 1_800_000_000;
        let subject_of = |chain: &Chain| {
            let (_, cert) = x509_parser::parse_x509_certificate(chain.leaf_der()).unwrap();
            cert.subject().to_string()
        };
        let names: Vec<CertName> = ["127.0.0.1", "a.test", "2001:db8::1"]
            .map(|n| n.parse().unwrap())
            .into();
        let chain = ca.issue(&names, &key.spki_der(), now).unwrap();
        let leaf = chain.leaf().unwrap();
        assert_eq!(
            leaf.names,
            ["127.0.0.1", "2001:db8::1", "a.test"]
                .map(String::from)
                .into()
        );
        assert_eq!(leaf.not_after, now + 6 * 3_600);
        assert_eq!(subject_of(&chain), "CN=a.test");
        crate::keys::validate_chain(&names, &key, &chain, now).unwrap();
        let only_ip: Vec<CertName> = vec!["::1".parse().unwrap()];
        let chain = ca.issue(&only_ip, &key.spki_der(), now).unwrap();
        assert_eq!(chain.leaf().unwrap().names, ["::1".to_string()].into());
        assert_eq!(subject_of(&chain), "");
    }

    #[test]
    fn parallel_first_issuances_create_one_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = InternalIssuer {
            validity: Span::days(30),
        };
        let names: Vec<CertName> = vec!["a.test".parse().unwrap()];
        let now = 1_800_000_000;
        let chains: Vec<Chain> = std::thread::scope(|s| {
            let jobs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let key = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
                        LocalCa::new(tmp.path(), &cfg)
                            .issue(&names, &key.spki_der(), now)
                            .unwrap()
                    })
                })
                .collect();
            jobs.into_iter().map(|j| j.join().unwrap()).collect()
        });
        // Every job signed with the one CA that is on disk, and it still signs.
        let on_disk = std::fs::read_to_string(tmp.path().join("ca.pem")).unwrap();
        let ca_der = crate::keys::pem_blocks(on_disk.as_bytes()).unwrap()[0]
            .contents()
            .to_vec();
        for chain in &chains {
            assert_eq!(chain.certs[1], ca_der);
            chain.check_links().unwrap();
        }
        let key = PrivateKey::generate(KeySpec::EcdsaP256).unwrap();
        let later = LocalCa::new(tmp.path(), &cfg)
            .issue(&names, &key.spki_der(), now)
            .unwrap();
        later.check_links().unwrap();
    }
}
