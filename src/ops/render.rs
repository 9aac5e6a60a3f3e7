//! The text `check`, `status` and `reissue` print (the `--json` documents are in `output`).

use crate::core::{Timestamp, humanize};
use crate::output::{CertificateReport, CheckDoc, ReissueDoc};

fn relative(ts: &str, now: Timestamp) -> String {
    match time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339) {
        Ok(t) if t.unix_timestamp() > now => format!("in {}", humanize(t.unix_timestamp() - now)),
        Ok(_) => "now".into(),
        Err(_) => ts.to_string(),
    }
}

/// One line per `verify` endpoint that does not answer (`check` and `status`).
fn render_unanswered(r: &CertificateReport) {
    for v in r.verify.iter().filter(|v| !v.answered) {
        out!(
            "{}: verify endpoint {} (SNI {}) does not answer: {}; a re-issue cannot prove what it serves",
            r.name,
            v.endpoint,
            v.sni,
            v.error.as_deref().unwrap_or("no answer")
        );
    }
}

pub(crate) fn render_check(doc: &CheckDoc, now: Timestamp) {
    if doc.certificates.is_empty() {
        out!("no certificates configured");
    }
    for r in &doc.certificates {
        if r.healthy {
            let expiry = match (&r.not_after, &r.renew_at) {
                (Some(na), Some(ra)) => format!(", expires {na}, renews {}", relative(ra, now)),
                _ => String::new(),
            };
            out!(
                "{}: healthy (serial {}{expiry})",
                r.name,
                r.serial.as_deref().unwrap_or("?")
            );
            for p in r.problems.iter().filter(|_| !r.noted.is_empty()) {
                out!("{}: noted: {}: {p}", r.name, r.noted.join(", "));
            }
            render_unanswered(r);
            continue;
        }
        let what = match r.action.as_str() {
            "hold" => "unhealthy",
            "fix-permissions" => "needs its access fixed (no new key)",
            _ => "needs re-issue",
        };
        let mut line = format!("{}: {what}: {}", r.name, r.reasons.join(", "));
        if !r.problems.is_empty() {
            line.push_str(&format!(" ({})", r.problems.join("; ")));
        }
        if r.action == "hold" {
            line.push_str("; nothing is re-issued until the list can be read");
        }
        if r.action == "resume" {
            line.push_str("; a re-issue is pending and will be resumed");
        }
        out!("{line}");
        render_unanswered(r);
    }
}

pub(crate) fn render_status(doc: &CheckDoc, now: Timestamp) {
    match &doc.daemon {
        Some(d) if d.running => out!("daemon: running (this is its view)"),
        Some(_) => out!("daemon: not running (read from disk)"),
        None => {}
    }
    for r in &doc.certificates {
        out!("{}", r.name);
        out!("  names:       {}", r.names.join(", "));
        out!("  key type:    {}", r.key_type);
        out!(
            "  health:      {}",
            if r.healthy && r.noted.is_empty() {
                "healthy".to_string()
            } else if r.healthy {
                format!("healthy (noted: {})", r.noted.join(", "))
            } else {
                r.reasons.join(", ")
            }
        );
        for p in &r.problems {
            out!("  problem:     {p}");
        }
        for v in &r.verify {
            let how = match &v.starttls {
                Some(p) => format!("SNI {}, STARTTLS {p}", v.sni),
                None => format!("SNI {}", v.sni),
            };
            match &v.error {
                None => out!("  verify:      {} ({how}) answers", v.endpoint),
                Some(e) => out!("  verify:      {} ({how}) does not answer: {e}", v.endpoint),
            }
        }
        let generation = |g: Option<u64>| g.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
        match &r.installing {
            // Mid-install the files are the new generation's, the server may still serve the
            // old one: say both, and how far the install got.
            Some(i) => {
                out!(
                    "  in service:  generation {} until generation {} is proven served",
                    generation(i.from),
                    i.to
                );
                out!(
                    "  installing:  generation {} ({}): serial {}, expires {}",
                    i.to,
                    i.phase,
                    r.serial.as_deref().unwrap_or("-"),
                    r.not_after.as_deref().unwrap_or("-")
                );
            }
            None => out!(
                "  in service:  generation {}, serial {}, expires {}",
                generation(r.generation),
                r.serial.as_deref().unwrap_or("-"),
                r.not_after.as_deref().unwrap_or("-")
            ),
        }
        if let Some(profile) = &r.profile {
            out!("  profile:     {profile}");
        }
        if let Some(i) = &r.issuer {
            out!("  issued by:   issuer {i:?}");
        }
        if let Some(p) = &r.pending {
            out!(
                "  pending:     re-issue ({}) since {}, {} attempt(s){}",
                p.requested_reason.as_deref().unwrap_or(&p.reason),
                p.since,
                p.attempts,
                if p.issued {
                    ", certificate issued, not yet installed"
                } else {
                    ""
                }
            );
        }
        if r.failures > 0 {
            out!("  failures:    {} in a row", r.failures);
        }
        if let Some(v) = &r.revoked {
            let why = match v.reason {
                Some(1) => " for key compromise".to_string(),
                Some(c) => format!(" (reason {c})"),
                None => String::new(),
            };
            out!(
                "  revoked:     serial {} revoked{why}, seen {} on {}",
                v.serial,
                v.seen_at,
                v.source
            );
        }
        if let Some(a) = &r.ari {
            out!(
                "  ARI window:  {} .. {}, renewing at {}",
                a.window_start,
                a.window_end,
                a.renew_at
            );
            if let Some(u) = &a.explanation_url {
                out!("  ARI says:    {u}");
            }
        }
        if let Some(c) = &r.compromise {
            out!(
                "  compromised: key {}…: {}{}",
                &c.key_sha256[..16.min(c.key_sha256.len())],
                if c.revocation_pending {
                    format!("revocation pending ({} attempts)", c.revoke_attempts)
                } else {
                    "revoked".into()
                },
                if c.purged {
                    ", purged"
                } else {
                    ", purge pending"
                }
            );
        }
        if let Some(nc) = &r.next_check {
            out!("  next check:  {nc} ({})", relative(nc, now));
        }
        if let Some(l) = &r.last {
            let why = match &l.requested_reason {
                Some(asked) => format!(
                    "reason {asked}, observed: {}",
                    if l.observed.is_empty() {
                        "nothing wrong".to_string()
                    } else {
                        l.observed.join(", ")
                    }
                ),
                None => l.reason.clone(),
            };
            out!(
                "  last:        {} {} ({why}): {}",
                l.at,
                l.result,
                l.message
            );
        }
    }
}

pub(crate) fn render_reissue(doc: &ReissueDoc) {
    for r in &doc.certificates {
        let what = match r.result.as_str() {
            "started" => {
                out!("{}: re-issue started", r.name);
                None
            }
            "pending" => {
                out!("{}: pending: {}", r.name, r.hint.as_deref().unwrap_or(""));
                None
            }
            "issued" if r.dry_run => {
                out!(
                    "{}: dry run: issued serial {}, expires {}{}; checked and discarded, nothing changed{}",
                    r.name,
                    r.serial.as_deref().unwrap_or("?"),
                    r.not_after.as_deref().unwrap_or("?"),
                    r.profile
                        .as_ref()
                        .map(|p| format!(", profile {p}"))
                        .unwrap_or_default(),
                    r.hint
                        .as_ref()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default()
                );
                None
            }
            "installed" => Some("installed and verified in service:"),
            "installed-not-loaded" => Some("installed, not loaded (web server not running):"),
            _ => None,
        };
        if let Some(what) = what {
            out!(
                "{}: {what} serial {} (generation {}), expires {}{}",
                r.name,
                r.serial.as_deref().unwrap_or("?"),
                r.generation.unwrap_or_default(),
                r.not_after.as_deref().unwrap_or("?"),
                r.profile
                    .as_ref()
                    .map(|p| format!(", profile {p}"))
                    .unwrap_or_default()
            );
        }
        // Also after an install: a failed post_install hook is reported, not swallowed.
        if let Some(e) = &r.error {
            eprintln!("certagent: {}: {e}", r.name);
            if let Some(h) = &r.hint {
                eprintln!("  hint: {h}");
            }
        }
    }
}
