//! `reissue --dry-run`: each certificate issued and checked by the executor, then discarded;
//! the results as `reissue` documents (`changed` false, `dry_run` true, the CA's problem
//! document when it refused).

use crate::config::Certificate;
use crate::core::Reason;
use crate::error::{Error, Problem, exit};
use crate::executor::Executor;
use crate::output::{ProblemReport, ReissueDoc, ReissueResult, SubproblemReport, rfc3339};

/// Dry-run each certificate in turn; exit 0 when every one would have worked, else 2.
pub(crate) async fn dry_run(executor: &Executor, certs: &[&Certificate]) -> (ReissueDoc, u8) {
    let mut results = Vec::new();
    for cert in certs {
        log::info!(cert = cert.name.as_str(); "dry run: issuing a certificate to discard");
        let mut r = ReissueResult::new(&cert.name, "issued", Reason::Forced.as_str());
        r.dry_run = true;
        match executor.dry_run(cert).await {
            Ok(d) => {
                r.serial = Some(d.serial);
                r.not_after = Some(rfc3339(d.not_after));
                r.profile = d.profile;
                r.hint = d
                    .directory
                    .map(|dir| format!("ordered from {dir}; discarded"));
            }
            Err(e) => {
                r.result = "failed".into();
                r.problem = e.problem().map(problem_report);
                r.error = Some(e.to_string());
                r.hint = e.hint().map(str::to_string);
            }
        }
        results.push(r);
    }
    let (mut doc, code) = super::reissue_doc(results);
    doc.dry_run = true;
    doc.changed = false;
    let code = if code == exit::OK { code } else { exit::ERROR };
    (doc, code)
}

/// Refuse, before anything is ordered, certificates whose issuer has nothing to rehearse.
pub(crate) fn check_supported(
    config: &crate::config::Config,
    certs: &[&Certificate],
) -> Result<(), Error> {
    certs
        .iter()
        .try_for_each(|c| crate::executor::dry_run_supported(config, c))
}

pub(crate) fn problem_report(p: &Problem) -> ProblemReport {
    // `Problem` keeps ACME's types without their prefix; other types are whole.
    let urn = |kind: &str| match kind.contains(':') {
        true => kind.to_string(),
        false => format!("urn:ietf:params:acme:error:{kind}"),
    };
    ProblemReport {
        kind: urn(&p.kind),
        detail: p.detail.clone(),
        status: p.status,
        subproblems: p
            .subproblems
            .iter()
            .map(|s| SubproblemReport {
                identifier: s.identifier.clone(),
                kind: urn(&s.kind),
                detail: s.detail.clone(),
            })
            .collect(),
    }
}
