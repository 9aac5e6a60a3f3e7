//! The per-certificate journal: what is in service, what is pending (key, order, chain), a
//! flip in progress, the backoff, the CA's view, the outcomes. Serialized as JSON; every field
//! added later has a default, so an older journal still reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::FlagId;
use crate::core::{Asked, KeySpec, Reason, Requested, Timestamp};

/// Per-certificate durable state. Written atomically after every step that matters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub(crate) schema: u32,
    /// Generation verified in service (or taken over at adoption).
    pub(crate) current: Option<u64>,
    /// Next generation number to use; never reused.
    pub(crate) next_generation: u64,
    pub(crate) pending: Option<Pending>,
    /// Set between the flip of `current` and verification: recovery finishes or undoes it.
    pub(crate) flip: Option<Flip>,
    pub(crate) last: Option<Outcome>,
    /// Consecutive failed attempts and when the next one is due (daemon backoff).
    #[serde(default)]
    pub(crate) failures: u32,
    #[serde(default)]
    pub(crate) retry_at: Option<Timestamp>,
    /// `Retry-After` (seconds) of the last failure, if the server sent one.
    #[serde(default)]
    pub(crate) server_retry_after: Option<i64>,
    /// The compromise flag file that was already answered, as last seen: it stays answered
    /// while it is there, however it is rewritten (`compromise::track_flag`).
    #[serde(default)]
    pub(crate) handled_flag: Option<FlagId>,
    /// The CA revoked the serial in service (seen on its CRL).
    #[serde(default)]
    pub(crate) revoked: Option<Revoked>,
    /// Work left after an install: revoking and purging a compromised predecessor.
    #[serde(default)]
    pub(crate) post: Option<PostActions>,
    /// ACME Renewal Information for the certificate in service.
    #[serde(default)]
    pub(crate) ari: Option<Ari>,
    /// When the CA's view (CRL, ARI) of the serial in service was last fetched, and when to
    /// fetch it next (`None`: there is nothing to fetch for this serial).
    #[serde(default)]
    pub(crate) refresh: Option<Refresh>,
    /// Re-issue outcomes since the journal was created, by reason and outcome (the
    /// counters behind the metrics; never reset).
    #[serde(default)]
    pub(crate) tally: BTreeMap<Reason, BTreeMap<OutcomeKind, u64>>,
    /// When a new certificate was last installed, and its serial.
    #[serde(default)]
    pub(crate) last_success: Option<Timestamp>,
    #[serde(default)]
    pub(crate) installed_serial: Option<String>,
    /// The CA of the certificate certagent last installed (`None` before the first install,
    /// and in journals written before it was recorded).
    #[serde(default)]
    pub(crate) installed_issuer: Option<InstalledIssuer>,
    /// The ACME profile of the certificate certagent last installed (`None` before the
    /// first install, and in journals written before it was recorded: no profile was asked
    /// for then).
    #[serde(default)]
    pub(crate) installed_profile: Option<InstalledProfile>,
    /// What the certificate needed when the failure behind `retry_at` happened: the backoff
    /// holds back only these (`core::backoff_holds`).
    #[serde(default)]
    pub(crate) retry_reasons: Vec<Reason>,
    /// When the daemon started re-issues by itself in the last hour (the hourly guard).
    #[serde(default)]
    pub(crate) auto_reissues: Vec<Timestamp>,
    /// Why the re-issue in progress started (the operator's words, what was observed): copied
    /// into the outcome that ends it.
    #[serde(default)]
    pub(crate) asked: Option<Asked>,
    /// The issuer of a failover list (`issuer = [..]`) the renewal in progress uses, and
    /// since when it has been failing; cleared by an install (the next renewal starts with
    /// the first issuer again).
    #[serde(default)]
    pub(crate) failover: Option<IssuerInUse>,
}

/// The issuer a renewal in progress uses (`Journal::failover`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct IssuerInUse {
    /// Its configured name.
    pub(crate) issuer: String,
    /// When its first failure in a row happened (`None`: it has not failed).
    #[serde(default)]
    pub(crate) failing_since: Option<Timestamp>,
    /// The last failure, for the log line that moves on.
    #[serde(default)]
    pub(crate) last_error: Option<String>,
}

impl Journal {
    /// The configured issuer of the certificate with `serial` when it is the one certagent
    /// installed last.
    pub(crate) fn issued_by(&self, serial: Option<&str>) -> Option<String> {
        let ours = serial.is_some() && self.installed_serial.as_deref() == serial;
        self.installed_issuer
            .as_ref()
            .filter(|_| ours)?
            .name
            .clone()
    }

    /// The reason to log for the attempt in progress (or the one that just ended): the
    /// operator's words when an operator asked (`superseded`), else `reason`.
    pub(crate) fn said(&self, reason: Reason) -> &'static str {
        self.asked
            .as_ref()
            .or_else(|| self.last.as_ref()?.asked.as_ref())
            .and_then(|a| a.requested)
            .map_or(reason.as_str(), |r| r.as_str())
    }

    /// Record the outcome of one re-issue attempt in `last` and in the tally.
    pub(crate) fn record_outcome(&mut self, mut outcome: Outcome) {
        if outcome.result == OutcomeKind::Pending {
            outcome.asked = outcome.asked.or_else(|| self.asked.clone());
        } else {
            outcome.asked = outcome.asked.or_else(|| self.asked.take());
        }
        *self
            .tally
            .entry(outcome.reason)
            .or_default()
            .entry(outcome.result)
            .or_default() += 1;
        if matches!(
            outcome.result,
            OutcomeKind::Installed | OutcomeKind::InstalledNotLoaded
        ) {
            self.last_success = Some(outcome.at);
            self.installed_serial = outcome.serial.clone();
        }
        self.last = Some(outcome);
    }
}

/// Which CA issued the certificate certagent last installed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct InstalledIssuer {
    /// The configured issuer it came from (`config::Issuer::identity`).
    pub(crate) identity: String,
    /// The leaf's issuer distinguished name.
    pub(crate) dn: String,
    /// The configured name of that issuer (`None` in journals written before it was).
    #[serde(default)]
    pub(crate) name: Option<String>,
}

/// The ACME profile of the certificate certagent last installed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct InstalledProfile {
    /// What the configuration asked for when it was ordered (`None`: none). `check`
    /// compares the configured profile with this (`profile-changed`).
    pub(crate) asked: Option<String>,
    /// What the CA issued it under (`None`: its default, e.g. because it does not offer the
    /// profile asked for).
    pub(crate) issued: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Refresh {
    pub(crate) serial: String,
    pub(crate) checked_at: Timestamp,
    pub(crate) next_at: Option<Timestamp>,
    /// The last fetch failed (the text says why); retried at `next_at`.
    #[serde(default)]
    pub(crate) error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Revoked {
    pub(crate) serial: String,
    /// RFC 5280 reason code, when the CRL gives one (1 = keyCompromise).
    pub(crate) reason: Option<u8>,
    pub(crate) seen_at: Timestamp,
    pub(crate) source: String,
}

/// What is left to do about a compromised predecessor once its successor serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PostActions {
    pub(crate) old_spki_sha256: String,
    /// The old leaf, base64 DER, to revoke; `None` once revoked (or nothing to revoke).
    pub(crate) revoke: Option<String>,
    pub(crate) revoke_attempts: u32,
    pub(crate) purged: bool,
    /// The configured issuer of the old leaf (`CompromiseWork::issuer`).
    #[serde(default)]
    pub(crate) issuer: Option<String>,
}

/// The CA's suggested renewal window and the point certagent picked inside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ari {
    pub(crate) serial: String,
    pub(crate) window_start: Timestamp,
    pub(crate) window_end: Timestamp,
    /// Uniformly random point in the window, chosen once per window (RFC 9773 §4.2).
    pub(crate) renew_at: Timestamp,
    /// When to ask again (the server's Retry-After, clamped to 1 min .. 12 h).
    pub(crate) next_fetch: Timestamp,
    pub(crate) explanation_url: Option<String>,
}

/// An in-flight re-issue: created (with its key on disk) before the CA is contacted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) reason: Reason,
    pub(crate) started_at: Timestamp,
    pub(crate) issuer: String,
    pub(crate) key_spec: KeySpec,
    pub(crate) key_spki_sha256: String,
    pub(crate) names: Vec<String>,
    pub(crate) attempts: u32,
    /// ACME order URL, journalled as soon as the order exists.
    pub(crate) order_url: Option<String>,
    /// True once the issued chain is saved in `pending.pem`.
    #[serde(default)]
    pub(crate) issued: bool,
    /// Set when this re-issue answers a compromised key.
    #[serde(default)]
    pub(crate) compromise: Option<CompromiseWork>,
    /// Reminders sent while waiting for a human (manual CA).
    #[serde(default)]
    pub(crate) reminders: u32,
    /// When the daemon looks at it again after an attempt that ended pending: the next
    /// reminder (manual CA) or the CA's Retry-After. Cleared at start.
    #[serde(default)]
    pub(crate) next_look: Option<Timestamp>,
    /// The reason the operator gave when an operator started it, in their words.
    #[serde(default)]
    pub(crate) requested: Option<Requested>,
    /// The ACME profile the configuration asked for when it started (`None`: none).
    #[serde(default)]
    pub(crate) profile_asked: Option<String>,
    /// The ACME profile the CA issued it under, once issued (`None`: none).
    #[serde(default)]
    pub(crate) profile: Option<String>,
}

/// The compromised key being replaced, captured before anything else happens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CompromiseWork {
    pub(crate) old_spki_sha256: String,
    /// The leaf in service when the compromise was handled (base64 DER), to revoke.
    pub(crate) old_leaf: Option<String>,
    /// Revoked before replacing (`revoke_first`).
    #[serde(default)]
    pub(crate) revoked_first: bool,
    /// The configured issuer of that leaf, when certagent installed it (of a failover list,
    /// the one that issued it): the CA it is revoked at.
    #[serde(default)]
    pub(crate) issuer: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Flip {
    pub(crate) from: Option<u64>,
    pub(crate) to: u64,
    pub(crate) reason: Reason,
    /// How far the install got: what `status` shows while the new generation is not yet
    /// proven served.
    #[serde(default)]
    pub(crate) phase: FlipPhase,
}

/// The steps between the flip and the proof, journalled as they start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FlipPhase {
    /// The files point at the new generation; the server has not been told.
    #[default]
    Flipped,
    /// The server's config test and reload run.
    Reloading,
    /// Reloaded; waiting for every endpoint to serve the new certificate.
    Verifying,
}

impl FlipPhase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FlipPhase::Flipped => "flipped",
            FlipPhase::Reloading => "reloading",
            FlipPhase::Verifying => "verifying",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Outcome {
    pub(crate) at: Timestamp,
    pub(crate) result: OutcomeKind,
    pub(crate) reason: Reason,
    pub(crate) message: String,
    pub(crate) serial: Option<String>,
    pub(crate) generation: Option<u64>,
    /// What the operator asked for and what was observed when the attempt started (`None`
    /// in journals written before it was recorded).
    #[serde(default)]
    pub(crate) asked: Option<Asked>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OutcomeKind {
    Pending,
    Installed,
    InstalledNotLoaded,
    Failed,
    RolledBack,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Requested;

    fn outcome(result: OutcomeKind) -> Outcome {
        Outcome {
            at: 100,
            result,
            reason: Reason::Forced,
            message: String::new(),
            serial: None,
            generation: None,
            asked: None,
        }
    }

    #[test]
    fn the_outcome_that_ends_an_attempt_carries_what_was_asked_and_observed() {
        let asked = Asked {
            requested: Some(Requested::KeyLost),
            observed: vec![Reason::KeyMissing],
        };
        let mut j = Journal {
            asked: Some(asked.clone()),
            ..Journal::default()
        };
        assert_eq!(j.said(Reason::KeyMissing), "key-lost");
        // Pending is no end: the attempt resumes, still the operator's.
        j.record_outcome(outcome(OutcomeKind::Pending));
        assert_eq!(j.last.as_ref().unwrap().asked.as_ref(), Some(&asked));
        assert_eq!(j.asked.as_ref(), Some(&asked));
        j.record_outcome(outcome(OutcomeKind::Installed));
        assert_eq!(j.last.as_ref().unwrap().asked.as_ref(), Some(&asked));
        assert!(j.asked.is_none());
        // Just after the end the log lines still say the operator's word.
        assert_eq!(j.said(Reason::KeyMissing), "key-lost");
        let text = serde_json::to_string(&j.last).unwrap();
        assert!(
            text.contains(r#""asked":{"requested":"key-lost","observed":["key-missing"]}"#),
            "{text}"
        );
    }

    #[test]
    fn a_journal_without_asked_or_phase_still_reads() {
        let j: Journal = serde_json::from_str(
            r#"{"schema":1,"current":1,"next_generation":2,"pending":null,
                "flip":{"from":0,"to":1,"reason":"forced"},
                "last":{"at":1,"result":"failed","reason":"forced","message":"x","serial":null,"generation":null}}"#,
        )
        .unwrap();
        assert_eq!(j.flip.unwrap().phase, FlipPhase::Flipped);
        assert!(j.last.unwrap().asked.is_none());
        assert!(j.asked.is_none());
    }

    #[test]
    fn a_journal_from_before_failover_still_reads_and_names_no_issuer() {
        let j: Journal = serde_json::from_str(
            r#"{"schema":1,"current":1,"next_generation":2,"pending":null,"flip":null,"last":null,
                "installed_serial":"1a","installed_issuer":{"identity":"acme https://le/dir","dn":"CN=R11"}}"#,
        )
        .unwrap();
        assert!(j.failover.is_none());
        assert_eq!(j.issued_by(Some("1a")), None);
        let mut j = j;
        if let Some(i) = j.installed_issuer.as_mut() {
            i.name = Some("le".into());
        }
        assert_eq!(j.issued_by(Some("1a")).as_deref(), Some("le"));
        // Another serial in service: not the one certagent installed.
        assert_eq!(j.issued_by(Some("2b")), None);
        assert_eq!(j.issued_by(None), None);
    }
}
