//! One discovered certificate described: its names, files, endpoints, who issued it and
//! whether certbot manages it, and why it cannot be managed when it cannot.

use super::*;

/// Read the certificate of a group of sites and describe it as a certificate to manage.
pub(super) fn describe(
    server: &str,
    sites: &[Site],
    taken_names: &mut BTreeSet<String>,
    taken_files: &mut Taken,
) -> (CertificateFound, Option<lineage::IssuerFound>) {
    let first = &sites[0];
    let mut problems = unique(sites.iter().flat_map(|s| s.problems.iter()));
    let server_names = unique(sites.iter().flat_map(|s| s.server_names.iter()));
    // A site problem (variables in the path, no key file) means certagent cannot manage it.
    let blocked = !problems.is_empty();
    let served = first.bundle_file.as_ref().unwrap_or(&first.cert_file);
    let (leaf, names, key_spec) = read_facts(served, &server_names, &mut problems);
    let endpoints = endpoints_of(sites, &names);
    let name = table_name(
        &names
            .first()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "site".into()),
        taken_names,
    );
    let mut usable = check_usable(
        leaf.is_some() && first.key_file.is_some(),
        blocked,
        &names,
        &endpoints,
        &mut problems,
    );
    usable &= claim_files(first, server, taken_files, &mut problems);
    let leaf_issuer = leaf.as_ref().and_then(|(_, i)| i.as_ref());
    let issuer_dn = leaf_issuer.map(|(dn, _)| dn.clone());
    let self_signed = leaf_issuer.is_some_and(|(_, s)| *s);
    let (issuer, lineage) =
        issuer_and_lineage(issuer_dn.as_ref(), self_signed, served, &mut problems);
    let found = CertificateFound {
        issuer_table: issuer.as_ref().map(|i| i.name.clone()),
        certbot_lineage: lineage.as_ref().map(|l| l.live.display().to_string()),
        chain_file: lineage
            .as_ref()
            .and_then(|l| l.chain_file.as_ref())
            .map(|p| p.display().to_string()),
        leaf_file: lineage
            .as_ref()
            .and_then(|l| l.leaf_file.as_ref())
            .map(|p| p.display().to_string()),
        bundle_file: first.bundle_file.as_ref().map(|p| p.display().to_string()),
        name,
        server: server.to_string(),
        names: names.iter().map(|n| n.to_string()).collect(),
        server_names,
        cert_file: first.cert_file.display().to_string(),
        key_file: first.key_file.as_ref().map(|k| k.display().to_string()),
        key_type: key_spec.map(|k| k.as_str().to_string()),
        serial: leaf.as_ref().map(|(f, _)| f.serial.clone()),
        not_after: leaf.as_ref().map(|(f, _)| rfc3339(f.not_after)),
        issuer: issuer_dn,
        sources: sites.iter().map(|s| s.directive.to_string()).collect(),
        endpoints,
        usable,
        problems,
    };
    (found, issuer)
}

/// A leaf certificate's facts, with its issuer's name and whether it is self-signed.
type Leaf = (LeafFacts, Option<(String, bool)>);

/// The leaf certificate in `cert_file` with its issuer, its names, and its key type when it
/// is one certagent issues; a problem for each that is missing.
pub(super) fn read_facts(
    cert_file: &Path,
    server_names: &[String],
    problems: &mut Vec<String>,
) -> (Option<Leaf>, Vec<CertName>, Option<KeySpec>) {
    let leaf = read_leaf(cert_file, problems);
    let names = names_of(leaf.as_ref().map(|(f, _)| f), server_names, problems);
    let key_spec = leaf.as_ref().and_then(|(f, _)| f.key_spec);
    if leaf.is_some() && key_spec.is_none() {
        problems.push(format!(
            "the certificate's key is not one certagent issues ({}); the first re-issue replaces it with key_type = \"ecdsa-p256\"",
            KeySpec::ALL.map(|k| k.as_str()).join(", ")
        ));
    }
    (leaf, names, key_spec)
}

/// Whether a certificate with a leaf and key file (`complete`) and no site problem
/// (`blocked`) can be managed: it needs names and an endpoint; a problem when either is
/// missing.
pub(super) fn check_usable(
    complete: bool,
    blocked: bool,
    names: &[CertName],
    endpoints: &[EndpointReport],
    problems: &mut Vec<String>,
) -> bool {
    let mut usable = complete && !names.is_empty();
    usable &= !blocked;
    if names.is_empty() {
        problems.push(
            "no names: neither the certificate nor the configuration names a host or an IP address"
                .into(),
        );
    }
    if endpoints.is_empty() {
        problems.push("no TLS listen address to verify it at".into());
        usable = false;
    }
    usable
}

/// The items in order, each once.
pub(super) fn unique<'a>(items: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

/// The leaf certificate in `cert_file`, with its issuer; a problem when it cannot be read.
pub(super) fn read_leaf(cert_file: &Path, problems: &mut Vec<String>) -> Option<Leaf> {
    let read = crate::store::fsutil::read_capped(cert_file, keys::MAX_PEM_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.ok_or_else(|| format!("{:?} does not exist", cert_file.display().to_string()))
        })
        .map(|b| without_private_keys(zeroize::Zeroizing::new(b)));
    let leaf = read.and_then(|bytes| {
        Chain::from_pem(&bytes).and_then(|c| {
            let facts = c.leaf()?;
            Ok((facts, issuer_of(c.leaf_der())))
        })
    });
    match leaf {
        Ok(l) => Some(l),
        Err(e) => {
            problems.push(format!("certificate: {e}"));
            None
        }
    }
}

/// The PEM without its private key blocks (a bundle's key is neither read nor kept).
fn without_private_keys(pem: zeroize::Zeroizing<Vec<u8>>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&pem);
    let mut out = String::new();
    let mut in_key = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("-----BEGIN") && l.contains("PRIVATE KEY") {
            in_key = true;
        } else if in_key && l.starts_with("-----END") {
            in_key = false;
        } else if !in_key {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// The certificate's names (DNS names and IP addresses), or when it has none the
/// configuration's server names (a literal IP address there is an IP name).
pub(super) fn names_of(
    leaf: Option<&LeafFacts>,
    server_names: &[String],
    problems: &mut Vec<String>,
) -> Vec<CertName> {
    let mut names: Vec<CertName> = Vec::new();
    if let Some(facts) = leaf {
        for n in &facts.names {
            match n.parse::<CertName>() {
                Ok(d) if !names.contains(&d) => names.push(d),
                Ok(_) => {}
                Err(e) => problems.push(format!("left out of names: {e}")),
            }
        }
    }
    if names.is_empty() {
        // A literal address is an IP name; nginx writes IPv6 ones in brackets.
        names = server_names
            .iter()
            .map(
                |n| match n.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
                    Some(inner) if inner.parse::<std::net::Ipv6Addr>().is_ok() => inner,
                    _ => n.as_str(),
                },
            )
            .filter_map(|n| n.parse::<CertName>().ok())
            .collect();
    }
    names
}

/// Each place the certificate is served, probed with a name the site answers to and the
/// certificate carries (so the endpoint applies to this certificate and no other).
pub(super) fn endpoints_of(sites: &[Site], names: &[CertName]) -> Vec<EndpointReport> {
    let mut endpoints: Vec<EndpointReport> = Vec::new();
    for s in sites {
        let sni = s
            .server_names
            .iter()
            .find(|h| {
                !h.starts_with("*.")
                    && names
                        .iter()
                        .any(|n| crate::config::name_covers(&n.to_string(), h))
            })
            .cloned()
            .or_else(|| names.first().map(|n| probe_sni(&n.to_string())));
        if let Some(sni) = sni {
            let plain = s.addresses.iter().map(|a| (a, None));
            let upgraded = s.starttls.iter().map(|(a, p)| (a, Some(p.as_str())));
            for (a, starttls) in upgraded.chain(plain) {
                let e = EndpointReport {
                    address: a.clone(),
                    sni: sni.clone(),
                    starttls: starttls.map(String::from),
                };
                if !endpoints.contains(&e) {
                    endpoints.push(e);
                }
            }
        }
    }
    endpoints
}

/// Files claimed by a certificate already, with the server that serves them.
pub(super) type Taken = std::collections::BTreeMap<PathBuf, String>;

/// Take the site's certificate and key files for this certificate; false (with a problem
/// each) when another certificate already has one.
pub(super) fn claim_files(
    first: &Site,
    server: &str,
    taken_files: &mut Taken,
    problems: &mut Vec<String>,
) -> bool {
    let mut free = true;
    for f in [
        Some(&first.cert_file),
        first.key_file.as_ref(),
        first.bundle_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        match taken_files.get(f) {
            None => {
                taken_files.insert(f.clone(), server.to_string());
            }
            Some(other) if other != server => {
                let reload = match server {
                    "postfix" => "[\"postfix\", \"reload\"]",
                    "dovecot" => "[\"doveadm\", \"reload\"]",
                    "haproxy" => "[\"systemctl\", \"reload\", \"haproxy\"]",
                    "apache" => "[\"apachectl\", \"graceful\"]",
                    _ => "[\"systemctl\", \"reload\", \"nginx\"]",
                };
                problems.push(format!(
                    "{:?} is also served by {other}, whose certificate manages it: a certificate reloads one server; reload {server} too with post_install = {reload} in that certificate",
                    f.display().to_string()
                ));
                free = false;
            }
            Some(_) => {
                problems.push(format!(
                    "{:?} is also used by another certificate with a different pair",
                    f.display().to_string()
                ));
                free = false;
            }
        }
    }
    free
}

/// The `[issuer.NAME]` for the CA that issued it and the certbot lineage it belongs to,
/// with a problem for each that stands in the way of taking it over.
pub(super) fn issuer_and_lineage(
    issuer_dn: Option<&String>,
    self_signed: bool,
    cert_file: &Path,
    problems: &mut Vec<String>,
) -> (Option<lineage::IssuerFound>, Option<lineage::Lineage>) {
    let lineage = lineage::certbot_lineage(cert_file);
    let issuer = match (issuer_dn, self_signed) {
        (Some(dn), false) => lineage::issuer_for(dn, lineage.as_ref()),
        _ => None,
    };
    if let Some(l) = &lineage {
        problems.push(format!(
            "a certbot lineage ({}): stop certbot renewing it before certagent takes over (systemctl disable --now certbot.timer, or certbot delete --cert-name {} once certagent has re-issued it), or certbot and certagent will both renew it; certagent then replaces all of its links",
            l.live.display(),
            l.live.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
    }
    if let (Some(dn), None, false) = (issuer_dn, &issuer, self_signed) {
        problems.push(format!(
            "issued by {dn}: name the CA that issues it with issuer = \"NAME\" and an [issuer.NAME] table; without one, config validate refuses it (the embedded local CA would replace a trusted certificate)"
        ));
    }
    (issuer, lineage)
}

/// The issuer's name, and whether the certificate is self-signed (issuer = subject).
pub(super) fn issuer_of(der: &[u8]) -> Option<(String, bool)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((
        cert.issuer().to_string(),
        cert.issuer().as_raw() == cert.subject().as_raw(),
    ))
}

/// A `[certificate.NAME]` name from a DNS name: `shop.example.com` -> `shop-example-com`,
/// `*.example.com` -> `wildcard-example-com`; `-2`, `-3`... when taken.
pub(super) fn table_name(dns: &str, taken: &mut BTreeSet<String>) -> String {
    let base: String = dns
        .replace("*.", "wildcard.")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(58)
        .collect();
    let base = base.trim_matches('-').to_string();
    let base = if base.is_empty() { "site".into() } else { base };
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}
