//! The TLS probe: connect to an endpoint with an SNI and report the leaf it presents. Trust is
//! not the question here (the leaf may come from the local CA); identity of the leaf is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::Starttls;

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
        // The handshake signature is still checked: the server must hold the leaf's key.
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth()
        });
    // The default protocol versions are always valid for the default provider.
    #[allow(clippy::expect_used)]
    let config = config.expect("aws-lc-rs supports the default TLS versions");
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Handshake with `addr` using `sni` (after `starttls`'s upgrade, for a mail server's
/// plain-text port); the leaf DER, or why not. An IP address as `sni` (a certificate for an
/// IP name) is a `ServerName::IpAddress`, for which rustls sends no SNI extension (RFC 6066
/// §3: host names only): the server picks its default certificate.
pub(crate) async fn served_leaf(
    addr: SocketAddr,
    sni: &str,
    starttls: Option<Starttls>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let name = match sni.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => {
            ServerName::try_from(sni.to_string()).map_err(|_| format!("invalid SNI {sni:?}"))?
        }
    };
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        if let Some(proto) = starttls {
            super::starttls::upgrade(&mut tcp, proto, addr).await?;
        }
        let tls = connector()
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        let (_, conn) = tls.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| format!("{addr} presented no certificate"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("TLS handshake with {addr} timed out"))?
}
