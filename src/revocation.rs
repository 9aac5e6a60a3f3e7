//! Knowing what the CA thinks of the certificate in service, without OCSP (Let's Encrypt
//! ended it in 2025): the CRL named in the certificate's CRL Distribution Points, and ACME
//! Renewal Information (RFC 9773) when the directory offers it.
//!
//! Everything fetched is size-capped and treated as hostile; a CRL is believed only if its
//! signature verifies with the issuer certificate from our own chain.

use x509_parser::prelude::*;

use crate::core::Timestamp;
use crate::error::{Error, Result};
use crate::http::Http;

/// CRLs of a big CA are sharded but can still be a few MiB.
pub(crate) const MAX_CRL_BYTES: usize = 16 << 20;

/// What a CRL says about one serial.
#[derive(Debug, PartialEq)]
pub struct CrlVerdict {
    /// `Some(reason)` when listed (reason code if the entry has one).
    pub(crate) revoked: Option<Option<u8>>,
    pub(crate) next_update: Option<Timestamp>,
}

/// Look up `serial` (content octets) in the DER or PEM CRL `data`, believing it only if it is
/// signed by `issuer`.
pub fn crl_lookup(
    data: &[u8],
    serial: &[u8],
    issuer: &X509Certificate,
) -> Result<CrlVerdict, String> {
    let der = if data.starts_with(b"-----BEGIN") {
        crate::keys::pem_blocks(data)?
            .into_iter()
            .find(|b| b.tag() == "X509 CRL")
            .map(|b| b.contents().to_vec())
            .ok_or("no X509 CRL block in the PEM")?
    } else {
        data.to_vec()
    };
    let (_, crl) = parse_x509_crl(&der).map_err(|e| format!("the CRL does not parse: {e}"))?;
    if crl.issuer() != issuer.subject() {
        return Err(format!(
            "the CRL is issued by {:?}, not by {:?}",
            crl.issuer().to_string(),
            issuer.subject().to_string()
        ));
    }
    crl.verify_signature(issuer.public_key())
        .map_err(|_| "the CRL's signature does not verify".to_string())?;
    let strip = |s: &[u8]| {
        s.iter()
            .skip_while(|&&b| b == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    let want = strip(serial);
    let revoked = crl
        .iter_revoked_certificates()
        .find(|r| strip(r.raw_serial()) == want)
        .map(|r| r.reason_code().map(|(_, code)| code.0));
    Ok(CrlVerdict {
        revoked,
        next_update: crl.next_update().map(|t| t.timestamp()),
    })
}

/// Fetch a CRL (capped) and look the serial up.
pub(crate) async fn check_crl(
    http: &Http,
    url: &str,
    serial: &[u8],
    issuer_der: &[u8],
) -> Result<CrlVerdict> {
    let (status, _, body) = http.get_capped_to(url, MAX_CRL_BYTES).await?;
    if !status.is_success() {
        return Err(Error::msg(format!("failed to fetch CRL {url}: {status}")));
    }
    let (_, issuer) = X509Certificate::from_der(issuer_der)
        .map_err(|e| Error::msg(format!("issuer certificate does not parse: {e}")))?;
    crl_lookup(&body, serial, &issuer).map_err(|e| Error::msg(format!("CRL {url}: {e}")))
}

/// An ARI answer (RFC 9773 §4.2).
#[derive(Debug, PartialEq)]
pub struct RenewalInfo {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Seconds until asking again: the server's Retry-After, clamped to 1 min .. 12 h
    /// (`core::cadence::ari_poll_interval`).
    pub retry_after: i64,
    pub(crate) explanation_url: Option<String>,
}

pub fn parse_renewal_info(body: &[u8], retry_after: Option<i64>) -> Result<RenewalInfo, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "renewalInfo is not JSON".to_string())?;
    let time = |k: &str| -> Result<Timestamp, String> {
        let s = v["suggestedWindow"][k]
            .as_str()
            .ok_or(format!("renewalInfo has no suggestedWindow.{k}"))?;
        ::time::OffsetDateTime::parse(s, &::time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .map_err(|_| format!("renewalInfo suggestedWindow.{k} is not an RFC 3339 time"))
    };
    let (start, end) = (time("start")?, time("end")?);
    if end <= start {
        return Err("renewalInfo window ends before it starts".into());
    }
    Ok(RenewalInfo {
        start,
        end,
        // RFC 9773 §4.3: clamp to sane limits; absent means the server has no opinion.
        retry_after: crate::core::cadence::ari_poll_interval(retry_after),
        explanation_url: v["explanationURL"]
            .as_str()
            .filter(|u| u.len() < 2048)
            .map(str::to_string),
    })
}

/// Fetch the directory's `renewalInfo` base URL (None when the CA offers no ARI).
pub(crate) async fn renewal_info_base(http: &Http, directory: &str) -> Result<Option<String>> {
    let (status, _, body) = http.get_capped(directory).await?;
    if !status.is_success() {
        return Err(Error::msg(format!(
            "failed to fetch the ACME directory: {status}"
        )));
    }
    let dir: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| Error::msg("the ACME directory is not JSON"))?;
    Ok(dir["renewalInfo"]
        .as_str()
        .filter(|u| u.starts_with("https://"))
        .map(|u| u.trim_end_matches('/').to_string()))
}

pub(crate) async fn renewal_info(
    http: &Http,
    base: &str,
    cert_id: &str,
    now: std::time::SystemTime,
) -> Result<RenewalInfo> {
    let url = format!("{base}/{cert_id}");
    let (status, headers, body) = http.get_capped(&url).await?;
    if !status.is_success() {
        return Err(Error::msg(format!(
            "failed to fetch renewal information: {status}"
        )));
    }
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::http::parse_retry_after(v, now));
    parse_renewal_info(&body, retry_after).map_err(Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_info_is_parsed_checked_and_clamped() {
        let body = br#"{"suggestedWindow":{"start":"2026-12-01T00:00:00Z","end":"2026-12-02T00:00:00Z"},"explanationURL":"https://x/why"}"#;
        let ri = parse_renewal_info(body, Some(5)).unwrap();
        assert_eq!(ri.end - ri.start, 86_400);
        assert_eq!(ri.retry_after, 60);
        assert_eq!(ri.explanation_url.as_deref(), Some("https://x/why"));
        assert_eq!(parse_renewal_info(body, None).unwrap().retry_after, 21_600);
        // Asked at least twice a day, even when the CA says to wait longer.
        assert_eq!(
            parse_renewal_info(body, Some(2 * 86_400))
                .unwrap()
                .retry_after,
            43_200
        );
        let backwards =
            br#"{"suggestedWindow":{"start":"2026-12-02T00:00:00Z","end":"2026-12-01T00:00:00Z"}}"#;
        assert_eq!(
            parse_renewal_info(backwards, None).unwrap_err(),
            "renewalInfo window ends before it starts"
        );
        assert_eq!(
            parse_renewal_info(b"<html>", None).unwrap_err(),
            "renewalInfo is not JSON"
        );
    }

    #[test]
    fn crls_are_believed_only_when_signed_by_the_issuer() {
        use rcgen::{
            CertificateParams, CertificateRevocationListParams, IsCa, Issuer, KeyIdMethod, KeyPair,
            RevocationReason, RevokedCertParams, SerialNumber,
        };
        let make_ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let cert = p.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca, ca_key) = make_ca("CA");
        let (other, other_key) = make_ca("CA");
        let crl_by = |key: &KeyPair, cert: &rcgen::Certificate| {
            let issuer = Issuer::from_ca_cert_der(cert.der(), key).unwrap();
            CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2026, 1, 1),
                next_update: rcgen::date_time_ymd(2026, 1, 8),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: vec![RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[0x00, 0x87, 0x65]),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                }],
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&issuer)
            .unwrap()
        };
        let (_, ca_x509) = X509Certificate::from_der(ca.der()).unwrap();
        let good = crl_by(&ca_key, &ca);
        let v = crl_lookup(good.der(), &[0x00, 0x87, 0x65], &ca_x509).unwrap();
        assert_eq!(v.revoked, Some(Some(1)));
        assert!(v.next_update.is_some());
        assert_eq!(
            crl_lookup(good.der(), &[0x01], &ca_x509).unwrap().revoked,
            None
        );
        // Same name, other key: forged.
        let forged = crl_by(&other_key, &other);
        assert_eq!(
            crl_lookup(forged.der(), &[0x87, 0x65], &ca_x509).unwrap_err(),
            "the CRL's signature does not verify"
        );
        assert!(
            crl_lookup(b"garbage", &[1], &ca_x509)
                .unwrap_err()
                .starts_with("the CRL does not parse")
        );
    }
}
