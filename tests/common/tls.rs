//! Test PKI and certificate inspection.
//!
//! * [`TlsCa`]: a CA generated with rcgen when the test runs (no PEMs are ever
//!   committed), with a `localhost`/`127.0.0.1` server leaf for Pebble's HTTPS
//!   listeners and [`TlsCa::issue_leaf`] for arbitrary names and validity.
//! * [`served_leaf`]: the leaf certificate a TLS server presents for an SNI
//!   name, fetched with a rustls client that accepts any certificate.
//! * [`spki_of_cert_der`], [`spki_of_key_pem`], [`san_dns_names`],
//!   [`cert_serial_hex`], [`cert_validity`]: compare what is served with what
//!   is on disk.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Installs aws-lc-rs as the process-wide rustls crypto provider (once; an
/// already installed provider is kept).
pub fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A test certificate authority, plus a server leaf for `localhost` and
/// `127.0.0.1`, all written as PEM files into a directory.
pub struct TlsCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_pem_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// A leaf certificate and its private key, as issued by [`TlsCa::issue_leaf`].
#[derive(Clone, Debug)]
pub struct Leaf {
    /// PEM of the leaf certificate alone.
    pub cert_pem: String,
    /// DER of the leaf certificate.
    pub cert_der: Vec<u8>,
    /// PKCS#8 PEM of the private key.
    pub key_pem: String,
}

impl Leaf {
    /// Writes the certificate and key PEMs to the given paths.
    pub fn write(&self, cert_path: &Path, key_path: &Path) {
        write_file(cert_path, &self.cert_pem);
        write_file(key_path, &self.key_pem);
    }

    /// DER SubjectPublicKeyInfo of the certificate.
    pub fn spki(&self) -> Vec<u8> {
        spki_of_cert_der(&self.cert_der)
    }

    /// Serial number, lower-case hex without leading zeros (Pebble's format).
    pub fn serial_hex(&self) -> String {
        cert_serial_hex(&self.cert_der)
    }
}

impl TlsCa {
    /// Generates a CA and a leaf for `localhost` + IP `127.0.0.1` (valid from
    /// one hour ago for 30 days) and writes `ca.pem`, `localhost.pem` and
    /// `localhost.key` into `dir` (created if needed).
    pub fn new(dir: &Path) -> TlsCa {
        TlsCa::named(dir, &[(DnType::CommonName, "certagent test CA")])
    }

    /// A CA with Let's Encrypt's intermediate's name (`C=US, O=Let's Encrypt, CN=R11`), for
    /// tests of what certagent does with a site a public CA certified.
    pub fn lets_encrypt_like(dir: &Path) -> TlsCa {
        TlsCa::named(
            dir,
            &[
                (DnType::CountryName, "US"),
                (DnType::OrganizationName, "Let's Encrypt"),
                (DnType::CommonName, "R11"),
            ],
        )
    }

    /// `new` with the given subject name.
    pub fn named(dir: &Path, subject: &[(DnType, &str)]) -> TlsCa {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("create CA dir {}: {e}", dir.display()));

        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty CA params");
        for (ty, value) in subject {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(365 * 86400)).into();
        let key = KeyPair::generate().expect("generate CA key");
        let ca_cert = params.self_signed(&key).expect("self-sign CA certificate");
        let ca_pem = ca_cert.pem();

        let ca = TlsCa {
            issuer: Issuer::new(params, key),
            ca_pem,
            ca_pem_path: dir.join("ca.pem"),
            cert_path: dir.join("localhost.pem"),
            key_path: dir.join("localhost.key"),
        };
        write_file(&ca.ca_pem_path, &ca.ca_pem);
        let leaf = ca.issue_leaf(
            &["localhost", "127.0.0.1"],
            now - Duration::from_secs(3600),
            now + Duration::from_secs(30 * 86400),
        );
        leaf.write(&ca.cert_path, &ca.key_path);
        ca
    }

    /// Path of the CA certificate PEM (the trust anchor for every leaf).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// The CA certificate PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Path of the `localhost`/`127.0.0.1` leaf certificate PEM.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Path of the `localhost`/`127.0.0.1` leaf private key PEM (PKCS#8).
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Issues a server leaf (CA:FALSE, serverAuth) with a fresh ECDSA P-256
    /// key. `names` are DNS names, or IP addresses if they parse as such; the
    /// first one is also the subject CN.
    pub fn issue_leaf(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        self.issue_leaf_for_key(names, not_before, not_after, &key)
    }

    /// Like [`TlsCa::issue_leaf`] but for a given key pair (e.g. an RSA key
    /// from `KeyPair::generate_rsa_for`, or one parsed from an existing key
    /// file with `KeyPair::from_pem`).
    pub fn issue_leaf_for_key(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
        key: &KeyPair,
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())
            .unwrap_or_else(|e| panic!("invalid leaf names {names:?}: {e}"));
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        // Unique serial (rcgen's default is derived from the key): 0x01 (keeps
        // it positive and fixed-length), nanoseconds since 1970, a counter.
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mut serial = vec![0x01];
        serial.extend_from_slice(&nanos.to_be_bytes());
        serial.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(key, &self.issuer)
            .expect("sign leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// DER of the first PEM block in `pem` (panics if there is none).
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap_or_else(|e| panic!("not PEM ({e}): {pem:.80}"));
    block.contents
}

fn parse_cert(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .unwrap_or_else(|e| panic!("not an X.509 certificate: {e}"));
    cert
}

/// DER SubjectPublicKeyInfo of a DER certificate.
pub fn spki_of_cert_der(der: &[u8]) -> Vec<u8> {
    parse_cert(der).tbs_certificate.subject_pki.raw.to_vec()
}

/// DER SubjectPublicKeyInfo of the public half of a PEM private key (PKCS#8,
/// SEC1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY").
pub fn spki_of_key_pem(pem: &str) -> Vec<u8> {
    KeyPair::from_pem(pem)
        .unwrap_or_else(|e| panic!("cannot parse private key PEM: {e}"))
        .subject_public_key_info()
}

/// DNS names in the subjectAltName extension of a DER certificate.
pub fn san_dns_names(der: &[u8]) -> Vec<String> {
    let cert = parse_cert(der);
    let Some(san) = cert
        .subject_alternative_name()
        .unwrap_or_else(|e| panic!("bad subjectAltName extension: {e}"))
    else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(s) => Some(s.to_string()),
            _ => None,
        })
        .collect()
}

/// IP addresses (iPAddress SANs, RFC 5280 §4.2.1.6) in the subjectAltName extension of a
/// DER certificate.
pub fn san_ip_addresses(der: &[u8]) -> Vec<std::net::IpAddr> {
    let cert = parse_cert(der);
    let Some(san) = cert
        .subject_alternative_name()
        .unwrap_or_else(|e| panic!("bad subjectAltName extension: {e}"))
    else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                n => panic!("iPAddress SAN of {n} bytes"),
            },
            _ => None,
        })
        .collect()
}

/// Serial number of a DER certificate as lower-case hex without leading zeros,
/// the format Pebble uses for `cert-status-by-serial`.
pub fn cert_serial_hex(der: &[u8]) -> String {
    format!("{:x}", parse_cert(der).tbs_certificate.serial)
}

/// `(not_before, not_after)` of a DER certificate.
pub fn cert_validity(der: &[u8]) -> (SystemTime, SystemTime) {
    let cert = parse_cert(der);
    let to_system = |t: i64| {
        let secs = u64::try_from(t).expect("certificate time before 1970");
        UNIX_EPOCH + Duration::from_secs(secs)
    };
    let v = cert.validity();
    (
        to_system(v.not_before.timestamp()),
        to_system(v.not_after.timestamp()),
    )
}

/// Accepts any server certificate, but still checks the handshake signature,
/// so a returned leaf proves the server holds the matching private key.
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Performs a TLS handshake with `addr` (e.g. `"127.0.0.1:8443"`) sending SNI
/// `sni` (no SNI is sent if `sni` is an IP address) and returns the DER of the
/// leaf certificate the server presented. Any certificate is accepted.
/// Returns `None` if the connection or handshake fails (5 s timeouts).
pub fn served_leaf(addr: &str, sni: &str) -> Option<Vec<u8>> {
    let (mut conn, mut sock) = handshake(addr, sni)?;
    let leaf = conn.peer_certificates()?.first()?.to_vec();
    // Polite close; failures are irrelevant.
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    let _ = sock.flush();
    Some(leaf)
}

/// A TLS connection held open in the middle of an HTTP request: the server process that
/// accepted it stays busy with it (waiting for the rest of the request headers) until it is
/// dropped. Tests use it to keep an old web-server worker alive across a reload, so that
/// what certagent sees of the old workers does not depend on how fast they exit.
pub struct HeldConnection {
    pub leaf: Vec<u8>,
    _conn: rustls::ClientConnection,
    _sock: TcpStream,
}

/// Connects like [`served_leaf`], then sends the start of an HTTP request and keeps the
/// connection open. `None` if the connection or handshake fails.
pub fn hold_connection(addr: &str, sni: &str) -> Option<HeldConnection> {
    let (mut conn, mut sock) = handshake(addr, sni)?;
    let leaf = conn.peer_certificates()?.first()?.to_vec();
    conn.writer()
        .write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\n").as_bytes())
        .ok()?;
    while conn.wants_write() {
        conn.write_tls(&mut sock).ok()?;
    }
    sock.flush().ok()?;
    Some(HeldConnection {
        leaf,
        _conn: conn,
        _sock: sock,
    })
}

fn handshake(addr: &str, sni: &str) -> Option<(rustls::ClientConnection, TcpStream)> {
    ensure_crypto_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AcceptAnyCert(provider.signature_verification_algorithms));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let server_name = ServerName::try_from(sni.to_owned())
        .unwrap_or_else(|e| panic!("invalid SNI name {sni:?}: {e}"));
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).ok()?;

    let sock_addr = addr.to_socket_addrs().ok()?.next()?;
    let timeout = Duration::from_secs(5);
    let mut sock = TcpStream::connect_timeout(&sock_addr, timeout).ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    sock.set_write_timeout(Some(timeout)).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).ok()?;
    }
    Some((conn, sock))
}
