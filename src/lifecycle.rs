//! The shell half of the lifecycle: gather what `core::lifecycle::next_step` needs from the
//! disk (observation, journal, permissions, configuration) and ask it. The daemon schedules
//! by the answer, `check` and `status` report it: one decision, one place.

use crate::compromise::Blocked;
use crate::config::{Certificate, Config, IssuerKind};
use crate::core::lifecycle::{CaView, PendingView, Step, View, next_step};
use crate::core::{self, LeafFacts, Timestamp};
use crate::executor::{Observation, Signals, observe};
use crate::store::{Journal, Store};

/// A certificate's observation and its next step.
pub(crate) struct Next {
    pub(crate) observation: Observation,
    pub(crate) step: Step,
    /// Kept generations whose owner, group or modes differ from the configuration (or why
    /// that cannot be told), as an operator reads them.
    pub(crate) drift: Vec<String>,
}

/// The reason a certificate whose only trouble is its files' owner, group or modes is not
/// healthy (fixed in place, no re-issue).
pub(crate) const PERMISSIONS_CHANGED: &str = "permissions-changed";

impl Next {
    /// Why the certificate is not healthy (the most urgent reason), `None` when it is.
    pub(crate) fn unhealthy(&self) -> Option<&'static str> {
        match self.observation.decision.reason() {
            Some(reason) => Some(reason.as_str()),
            None => (!self.drift.is_empty()).then_some(PERMISSIONS_CHANGED),
        }
    }
}

/// Observe `cert` and decide its next step. `journal` is the certificate's journal as read
/// by the caller (it may have just tracked a compromise flag in it).
pub(crate) fn next(
    config: &Config,
    blocked: &Blocked,
    cert: &Certificate,
    journal: Option<&Journal>,
    now: Timestamp,
) -> Next {
    let observation = observe(
        cert,
        now,
        &Signals::for_cert(config, blocked, journal, &cert.name),
    );
    // An error (an owner that no longer exists) is for `check` to show; certagent cannot
    // fix it, so it is no step.
    let (drifted, drift) = match Store::at(&config.agent.state_dir).permission_drift(cert) {
        Ok(d) => (!d.is_empty(), d.iter().map(|d| d.describe()).collect()),
        Err(e) => (false, vec![e.to_string()]),
    };
    let view = view(config, cert, journal, &observation, drifted, now);
    let step = next_step(&view, &observation.decision, now);
    Next {
        observation,
        step,
        drift,
    }
}

/// The journal's view of a certificate, as the pure lifecycle reads it.
fn view(
    config: &Config,
    cert: &Certificate,
    journal: Option<&Journal>,
    observation: &Observation,
    permission_drift: bool,
    now: Timestamp,
) -> View {
    // The issuer of the pending order (of a failover list, the one it was placed with).
    let kind = |name: &str| config.issuers.get(name).map(|i| &i.kind);
    View {
        flip: journal.is_some_and(|j| j.flip.is_some()),
        post_compromise: journal.is_some_and(|j| j.post.is_some()),
        retry_at: journal.and_then(|j| j.retry_at),
        failed_with: journal.map(|j| j.retry_reasons.clone()).unwrap_or_default(),
        pending: journal
            .and_then(|j| j.pending.as_ref())
            .map(|p| PendingView {
                reason: p.reason,
                answers_compromise: p.compromise.is_some(),
                human: matches!(kind(&p.issuer), Some(IssuerKind::Manual(_))),
                next_look: p.next_look,
            }),
        compromise_problem: observation.compromise_problem.clone(),
        permission_drift,
        ca_view: observation
            .leaf
            .as_ref()
            .map_or(CaView::Nothing, |leaf| ca_view(config, cert, leaf, journal)),
        budget: core::reissue_budget(
            journal
                .map(|j| j.auto_reissues.as_slice())
                .unwrap_or_default(),
            config.agent.max_reissues_per_hour,
            now,
        ),
    }
}

/// Whether the CA's view of the serial in service is worth fetching, and when: it has a CRL
/// Distribution Point, or its issuer is an ACME CA (which may offer ARI).
fn ca_view(
    config: &Config,
    cert: &Certificate,
    leaf: &LeafFacts,
    journal: Option<&Journal>,
) -> CaView {
    // The issuer it came from (of a failover list, the one that issued it).
    let issuer = journal
        .and_then(|j| j.issued_by(Some(&leaf.serial)))
        .filter(|n| cert.issuers.contains(n))
        .unwrap_or_else(|| cert.issuer.clone());
    let acme = matches!(
        config.issuers.get(&issuer).map(|i| &i.kind),
        Some(IssuerKind::Acme(_))
    );
    if leaf.crl_urls.is_empty() && !acme {
        return CaView::Nothing;
    }
    match journal.and_then(|j| j.refresh.as_ref()) {
        Some(r) if r.serial == leaf.serial => r.next_at.map_or(CaView::Nothing, CaView::At),
        _ => CaView::Unknown,
    }
}
