//! Issuer failover in the executor: which issuer of the certificate's list the attempt at
//! hand uses (`core::failover` decides), journalled before an order is placed, so a restart
//! resumes the order with the issuer it belongs to and never orders elsewhere meanwhile.

use crate::config::Certificate;
use crate::core::failover::{self, Current};
use crate::core::{Timestamp, humanize};
use crate::error::Result;
use crate::store::{InstalledIssuer, IssuerInUse, Journal};

use super::Executor;

/// The issuer of the renewal in progress: the one journalled as in use (or, in a journal
/// written before failover, the pending order's) while it is still in the list, else the
/// first of the list.
pub(super) fn in_use<'a>(cert: &'a Certificate, journal: &'a Journal) -> &'a str {
    let listed = |name: &&str| cert.issuers.iter().any(|i| i == name);
    journal
        .failover
        .as_ref()
        .map(|f| f.issuer.as_str())
        .filter(listed)
        .or_else(|| {
            journal
                .pending
                .as_ref()
                .map(|p| p.issuer.as_str())
                .filter(listed)
        })
        .unwrap_or(cert.issuer.as_str())
}

/// The issuer of the re-issue being installed (a resumed one keeps the issuer it started
/// with), for the journal: which CA the certificate in service came from.
pub(super) fn installed(
    config: &crate::config::Config,
    cert: &Certificate,
    journal: &Journal,
    dn: &str,
) -> Option<InstalledIssuer> {
    let issuer = journal
        .pending
        .as_ref()
        .map_or(cert.issuer.as_str(), |p| p.issuer.as_str());
    config.issuers.get(issuer).map(|i| InstalledIssuer {
        identity: i.identity(),
        dn: dn.to_string(),
        name: Some(i.name.clone()),
    })
}

/// The issuer the certificate with `serial` in service came from, as journalled when
/// certagent installed it and still of the list; else the first of the list.
pub(super) fn in_service<'a>(cert: &'a Certificate, journal: &'a Journal, serial: &str) -> &'a str {
    journal
        .issued_by(Some(serial))
        .and_then(|n| cert.issuers.iter().find(|i| **i == n))
        .map_or(cert.issuer.as_str(), String::as_str)
}

/// An order at `issuer` failed: its failures began now unless they already had.
pub(super) fn note_failure(
    journal: &mut Journal,
    issuer: &crate::config::Issuer,
    error: &str,
    now: Timestamp,
) {
    let since = journal
        .failover
        .as_ref()
        .filter(|f| f.issuer == issuer.name)
        .and_then(|f| f.failing_since)
        .unwrap_or(now);
    journal.failover = Some(IssuerInUse {
        issuer: issuer.name.clone(),
        failing_since: Some(since),
        last_error: Some(error.to_string()),
    });
}

/// What the journal says about `used`, the issuer in use.
fn current<'a>(journal: &Journal, used: &'a str) -> Current<'a> {
    Current {
        issuer: Some(used),
        failing_since: journal
            .failover
            .as_ref()
            .filter(|f| f.issuer == used)
            .and_then(|f| f.failing_since),
    }
}

impl Executor {
    /// The issuer this attempt uses, journalled; moving on from a failing one is logged at
    /// WARN. `left`: seconds of validity the certificate in service has.
    pub(super) fn choose_issuer(
        &self,
        cert: &Certificate,
        journal: &mut Journal,
        left: Option<i64>,
        now: Timestamp,
    ) -> Result<String> {
        let used = in_use(cert, journal).to_string();
        let choice = failover::choose(
            &cert.issuers,
            &current(journal, &used),
            cert.failover_after,
            left,
            now,
        );
        let chosen = cert.issuers[choice.index].clone();
        if let Some((from, failed_for)) = choice.from {
            let error = journal
                .failover
                .as_ref()
                .and_then(|f| f.last_error.as_deref())
                .unwrap_or("no error recorded");
            log::warn!(cert = cert.name.as_str(), issuer = chosen.as_str(), event = "issuer-failover";
                "issuer {:?} has failed for {} ({error}); trying {chosen:?}",
                cert.issuers[from], humanize(failed_for));
        }
        if journal.failover.as_ref().map(|f| &f.issuer) != Some(&chosen) {
            journal.failover = Some(IssuerInUse {
                issuer: chosen.clone(),
                failing_since: None,
                last_error: None,
            });
            self.store.save_journal(&cert.name, journal)?;
        }
        Ok(chosen)
    }

    /// After a failed order at `used`: whether the same attempt moves on to another issuer.
    pub(super) fn moves_on(
        &self,
        cert: &Certificate,
        journal: &Journal,
        left: Option<i64>,
        used: &str,
    ) -> bool {
        let now = self.clock.now();
        let choice = failover::choose(
            &cert.issuers,
            &current(journal, used),
            cert.failover_after,
            left,
            now,
        );
        cert.issuers.get(choice.index).is_some_and(|c| c != used)
    }
}
