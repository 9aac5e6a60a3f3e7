//! A CA reached by a human (the seed article's flow): the CSR is written to
//! `STATE/outbox/NAME.csr` and to the log, the operator submits it, the CA e-mails an approval
//! link, and — possibly days later — the certificate comes back with `certagent import NAME
//! FILE` or a file dropped into `STATE/inbox/`. Until then the re-issue is pending (exit 75),
//! the old certificate stays in service, and the daemon reminds on a schedule.

use std::path::{Path, PathBuf};

use crate::config::ManualIssuer;
use crate::error::{Error, Result};
use crate::store::{Perms, fsutil};

pub(crate) struct Manual {
    outbox: PathBuf,
}

pub(crate) fn outbox_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("outbox")
}

pub(crate) fn inbox_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("inbox")
}

impl Manual {
    pub(crate) fn new(state_dir: &Path, _cfg: &ManualIssuer) -> Manual {
        Manual {
            outbox: outbox_dir(state_dir),
        }
    }

    /// Write the CSR out (once per pending re-issue) and report "pending".
    pub(crate) fn issue(&self, cert_name: &str, csr_der: &[u8]) -> Result<crate::keys::Chain> {
        fsutil::ensure_dir(&self.outbox, 0o755)?;
        let path = self.outbox.join(format!("{cert_name}.csr"));
        let pem = crate::keys::pem_encode("CERTIFICATE REQUEST", csr_der);
        // ECDSA signatures differ on every run: the CSR "is the same" when it carries the
        // same public key (the pending key), so the human is not sent a second one.
        let spki = |der: &[u8]| {
            use x509_parser::prelude::FromDer;
            x509_parser::certification_request::X509CertificationRequest::from_der(der)
                .ok()
                .map(|(_, c)| c.certification_request_info.subject_pki.raw.to_vec())
        };
        let existing = fsutil::read_capped(&path, 1 << 20)?
            .and_then(|b| crate::keys::pem_blocks(&b).ok())
            .and_then(|blocks| blocks.into_iter().next())
            .and_then(|b| spki(b.contents()));
        let fresh = existing.is_none() || existing != spki(csr_der);
        if fresh {
            fsutil::replace_file(&path, pem.as_bytes(), Perms::mode(0o644))?;
            log::warn!(
                cert = cert_name, event = "pending-approval", csr = path.display().to_string().as_str();
                "CSR written for the CA: submit it, approve the CA's e-mail, then `certagent import {cert_name} FILE` or drop the certificate into the inbox\n{pem}"
            );
        }
        Err(Error::Pending {
            message: format!(
                "waiting for the CA: submit {:?}, then hand back the certificate with `certagent import {cert_name} FILE`",
                path.display().to_string()
            ),
            retry_in: None,
            news: fresh,
        })
    }
}
