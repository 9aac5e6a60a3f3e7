//! The one look at the disk that validation makes: which CA issued the certificate in service,
//! when the configuration leaves the issuer to the embedded local CA.
//!
//! The local CA is the default so that certagent works out of the box where nothing is in
//! service yet. Over a certificate from a public CA it would be an outage for every browser
//! (a discovered Let's Encrypt site, say), so such a configuration is invalid until it names
//! its issuer. A self-signed certificate (Debian's snakeoil) is no loss to replace.

use std::path::Path;

use crate::files as fsutil;
use crate::keys::{self, Chain};

/// The issuer's distinguished name of the certificate in `cert_file`, when it was issued by a
/// CA other than the embedded one of `state_dir`; `None` when there is no such certificate,
/// it is self-signed, or the local CA issued it.
pub(crate) fn foreign_issuer(cert_file: &Path, state_dir: &Path) -> Option<String> {
    use x509_parser::prelude::*;
    let bytes = fsutil::read_capped(cert_file, keys::MAX_PEM_BYTES).ok()??;
    let chain = Chain::from_pem(&bytes).ok()?;
    let (_, leaf) = X509Certificate::from_der(chain.leaf_der()).ok()?;
    if leaf.issuer().as_raw() == leaf.subject().as_raw() {
        return None;
    }
    let local = state_dir
        .join("ca")
        .join(super::BUILTIN_ISSUER)
        .join("ca.pem");
    if let Some(ca) = fsutil::read_capped(&local, keys::MAX_PEM_BYTES)
        .ok()
        .flatten()
        .and_then(|b| Chain::from_pem(&b).ok())
        && let Ok((_, ca)) = X509Certificate::from_der(ca.leaf_der())
        && ca.subject().as_raw() == leaf.issuer().as_raw()
    {
        return None;
    }
    Some(leaf.issuer().to_string())
}

/// The configuration error for a certificate whose issuer defaulted to the local CA while
/// `issued_by` has one in service: the message and the hint.
pub(crate) fn message(cert_file: &Path, issued_by: &str) -> (String, String) {
    let acme = if issued_by.contains("Let's Encrypt") {
        "issuer = \"letsencrypt\" with [issuer.letsencrypt] kind = \"acme\", directory = \"https://acme-v02.api.letsencrypt.org/directory\""
    } else {
        "issuer = \"NAME\" with an [issuer.NAME] table for that CA (kind = \"acme\", \"dnsimple\" or \"manual\")"
    };
    (
        format!(
            "not set, so the embedded local CA would issue this certificate, but {:?} holds one issued by {issued_by:?}, and browsers do not trust the local CA",
            cert_file.display().to_string()
        ),
        format!(
            "name the CA that issues it ({acme}), or write issuer = \"internal\" to replace it with a local certificate on purpose"
        ),
    )
}
