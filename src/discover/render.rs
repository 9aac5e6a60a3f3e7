//! The discovered certificates as certagent configuration: `[server.*]`, `[issuer.*]` and
//! `[certificate.*]` tables, with what was found as comments an operator reads before adopting.

use std::fmt::Write;

use super::*;

/// The document as TOML for `conf.d/`: the server tables, then one table per certificate;
/// certificates that cannot be managed as they are appear as comments saying why.
pub(crate) fn render_toml(doc: &DiscoverDoc) -> String {
    let mut t = String::new();
    let usable = doc.certificates.iter().filter(|c| c.usable).count();
    let _ = writeln!(
        t,
        "# Found by `certagent discover`: {} certificate(s), {usable} ready to manage.",
        doc.certificates.len()
    );
    let _ = writeln!(
        t,
        "# Review, save as /etc/certagent/conf.d/discovered.toml, run `certagent config validate`."
    );
    let _ = writeln!(
        t,
        "# At the first re-issue certagent keeps the files as generation 0 and replaces them with"
    );
    let _ = writeln!(t, "# symlinks into its state directory.");
    if let Some(c) = &doc.certbot {
        let _ = writeln!(t, "#");
        let _ = writeln!(
            t,
            "# certbot renews {} of these certificates:",
            c.lineages.len()
        );
        for l in &c.lineages {
            let _ = writeln!(t, "#   {l}");
        }
        let _ = writeln!(t, "# Before adopting them, stop certbot's renewal:");
        let _ = writeln!(t, "#   {}", c.stop);
        let _ = writeln!(
            t,
            "# (and remove /etc/cron.d/certbot where it exists), or certbot and certagent will"
        );
        let _ = writeln!(
            t,
            "# both renew them, each replacing the other's certificate."
        );
    }
    for p in &doc.problems {
        let _ = writeln!(t, "# problem: {p}");
    }
    for s in &doc.servers {
        if doc
            .certificates
            .iter()
            .any(|c| c.usable && c.server == s.name)
        {
            render_server(&mut t, s);
        }
    }
    for i in &doc.issuers {
        render_issuer(&mut t, i);
    }
    for c in &doc.certificates {
        render_certificate(&mut t, c);
    }
    t
}

/// A `[server.NAME]` table.
pub(super) fn render_server(t: &mut String, s: &ServerReport) {
    let _ = writeln!(t);
    let _ = writeln!(t, "# {} configuration: {}", s.name, s.config);
    let _ = writeln!(t, "[server.{}]", s.name);
    let _ = writeln!(t, "kind = {:?}", s.kind);
    let _ = writeln!(t, "verify = [");
    for e in &s.verify {
        match &e.starttls {
            Some(p) => {
                let _ = writeln!(
                    t,
                    "  {{ address = {:?}, sni = {:?}, starttls = {p:?} }},",
                    e.address, e.sni
                );
            }
            None => {
                let _ = writeln!(t, "  {{ address = {:?}, sni = {:?} }},", e.address, e.sni);
            }
        }
    }
    let _ = writeln!(t, "]");
    if let Some(cmd) = &s.test_command {
        let _ = writeln!(t, "test_command = {}", toml_array(cmd));
    }
    if let Some(cmd) = &s.reload_command {
        let _ = writeln!(t, "reload_command = {}", toml_array(cmd));
    }
    if let Some(p) = &s.runtime_socket {
        let _ = writeln!(t, "runtime_socket = {p:?}");
    }
    if let Some(p) = &s.pid_file {
        let _ = writeln!(t, "pid_file = {p:?}");
    }
}

/// An `[issuer.NAME]` table, with the http-01 choices as comments when none is known.
pub(super) fn render_issuer(t: &mut String, i: &lineage::IssuerFound) {
    let _ = writeln!(t);
    let _ = writeln!(t, "# The CA that issued certificates below ({}).", i.from);
    let _ = writeln!(t, "[issuer.{}]", i.name);
    let _ = writeln!(t, "kind = {:?}", i.kind);
    let _ = writeln!(t, "directory = {:?}", i.directory);
    let _ = writeln!(t, "# contact = [\"mailto:you@example.com\"]");
    match (&i.account_from_certbot, &i.account_note) {
        (Some(dir), _) => {
            let _ = writeln!(
                t,
                "# certbot's account {}: taken over at the first re-issue (same account, same rate limits)",
                i.account.as_deref().unwrap_or("?")
            );
            let _ = writeln!(t, "account_from_certbot = {dir:?}");
        }
        (None, Some(note)) => {
            let _ = writeln!(t, "# note: {note}");
        }
        (None, None) => {}
    }
    match &i.webroot {
        Some(w) => {
            let _ = writeln!(t, "webroot = {w:?}");
        }
        None => {
            let _ = writeln!(
                t,
                "# http-01: how the CA reaches this host; config validate asks for one of:"
            );
            let _ = writeln!(
                t,
                "# webroot = \"/var/www/html\"   # the server serves /.well-known/acme-challenge/ from it"
            );
            let _ = writeln!(
                t,
                "# listen = \"127.0.0.1:80\"     # or certagent answers on a port the server forwards to"
            );
        }
    }
}

/// A `[certificate.NAME]` table after comments on where it was found and what it is;
/// all commented out when it is not usable.
pub(super) fn render_certificate(t: &mut String, c: &CertificateFound) {
    let _ = writeln!(t);
    render_certificate_notes(t, c);
    let comment = if c.usable { "" } else { "# " };
    let _ = writeln!(t, "{comment}[certificate.{}]", c.name);
    let _ = writeln!(t, "{comment}names = {}", toml_array(&c.names));
    if let Some(i) = &c.issuer_table {
        let _ = writeln!(t, "{comment}issuer = {i:?}");
    }
    let _ = writeln!(t, "{comment}server = {:?}", c.server);
    let _ = writeln!(
        t,
        "{comment}key_type = {:?}",
        c.key_type.as_deref().unwrap_or("ecdsa-p256")
    );
    let _ = writeln!(t, "{comment}cert_file = {:?}", c.cert_file);
    match &c.key_file {
        Some(k) => {
            let _ = writeln!(t, "{comment}key_file = {k:?}");
        }
        None => {
            let _ = writeln!(t, "{comment}key_file = \"\"");
        }
    }
    if let Some(f) = &c.chain_file {
        let _ = writeln!(t, "{comment}chain_file = {f:?}");
    }
    if let Some(f) = &c.leaf_file {
        let _ = writeln!(t, "{comment}leaf_file = {f:?}");
    }
    if let Some(f) = &c.bundle_file {
        let _ = writeln!(t, "{comment}bundle_file = {f:?}");
    }
}

/// The comments above a certificate table: its sources, facts and problems.
pub(super) fn render_certificate_notes(t: &mut String, c: &CertificateFound) {
    for src in &c.sources {
        let _ = writeln!(t, "# {} {src}", c.server);
    }
    let mut facts = Vec::new();
    if !c.server_names.is_empty() {
        facts.push(format!("serves {}", c.server_names.join(" ")));
    }
    if let Some(na) = &c.not_after {
        facts.push(format!("expires {na}"));
    }
    if let Some(s) = &c.serial {
        facts.push(format!("serial {s}"));
    }
    if let Some(i) = &c.issuer {
        facts.push(format!("issuer {i}"));
    }
    if !facts.is_empty() {
        let _ = writeln!(t, "# {}", facts.join(", "));
    }
    for p in &c.problems {
        let _ = writeln!(t, "# problem: {p}");
    }
    if !c.usable {
        let _ = writeln!(t, "# not ready to manage as it is:");
    }
}

pub(super) fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}
