//! `certagent discover`: find the certificates a host already serves, by reading the nginx
//! and Apache configurations the way the servers do (includes, globs, relative paths), and
//! describe each as a ready-to-use `[certificate.NAME]` table. Reads only; never writes,
//! never starts or signals a server.

mod apache;
mod lineage;
mod nginx;

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::config::{ServerKind, probe_sni};
use crate::core::{DomainName, KeySpec, LeafFacts};
use crate::keys::{self, Chain};
use crate::output::{SCHEMA, rfc3339};

/// Config files larger than this are not configs.
const MAX_CONFIG_BYTES: usize = 8 << 20;

/// Where a directive is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) file: PathBuf,
    pub(crate) line: usize,
}

impl Source {
    fn new(file: &Path, line: usize) -> Source {
        Source {
            file: file.to_path_buf(),
            line,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One TLS site as configured: a server block or virtual host with one certificate/key pair.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    /// The certificate directive (or, until one is seen, the server block or virtual host).
    pub(crate) directive: Source,
    pub(crate) server_names: Vec<String>,
    /// Addresses to probe it at (loopback for wildcard listens).
    pub(crate) addresses: Vec<String>,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) problems: Vec<String>,
}

impl Site {
    fn new(source: Source) -> Site {
        Site {
            directive: source,
            server_names: Vec::new(),
            addresses: Vec::new(),
            cert_file: PathBuf::new(),
            key_file: None,
            problems: Vec::new(),
        }
    }
}

/// What reading one server's configuration found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub(crate) sites: Vec<Site>,
    /// Every file read, in order.
    pub(crate) files: Vec<PathBuf>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) problems: Vec<String>,
    /// The canonical paths of the files being read, outermost first: a file that includes
    /// one of these is an include cycle.
    including: Vec<PathBuf>,
}

impl Scan {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// Note that `file` is about to be read, or `Err` with the cycle when it is being read
    /// already (a file that includes itself, directly or through others). Call `leave` after.
    fn enter(&mut self, file: &Path) -> Result<(), String> {
        let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        if let Some(i) = self.including.iter().position(|f| *f == canonical) {
            let chain: Vec<String> = self.including[i..]
                .iter()
                .chain([&canonical])
                .map(|f| format!("{:?}", f.display().to_string()))
                .collect();
            return Err(format!(
                "include cycle {}; not followed",
                chain.join(" -> ")
            ));
        }
        self.including.push(canonical);
        Ok(())
    }

    fn leave(&mut self) {
        self.including.pop();
    }
}

/// Which configurations to read.
#[derive(Debug, Default, Clone)]
pub(crate) struct Targets {
    pub(crate) nginx_conf: Option<PathBuf>,
    /// Apache ServerRoot and main file.
    pub(crate) apache: Option<(PathBuf, PathBuf)>,
    /// The configurations were named on the command line (not found at default places):
    /// the server tables then carry test commands for exactly these files.
    pub(crate) explicit: bool,
}

impl Targets {
    /// The default places, those that exist: nginx's compiled-in conf path (else
    /// /etc/nginx/nginx.conf), Debian's /etc/apache2/apache2.conf, RHEL's
    /// /etc/httpd/conf/httpd.conf.
    pub(crate) fn defaults() -> Targets {
        let nginx = nginx::default_conf()
            .into_iter()
            .chain([PathBuf::from("/etc/nginx/nginx.conf")])
            .find(|p| p.is_file());
        let apache = [
            ("/etc/apache2", "/etc/apache2/apache2.conf"),
            ("/etc/httpd", "/etc/httpd/conf/httpd.conf"),
        ]
        .into_iter()
        .map(|(r, c)| (PathBuf::from(r), PathBuf::from(c)))
        .find(|(_, c)| c.is_file());
        Targets {
            nginx_conf: nginx,
            apache,
            explicit: false,
        }
    }

    /// Apache's main file under `root`: apache2.conf (Debian), conf/httpd.conf (RHEL) or
    /// httpd.conf.
    pub(crate) fn apache_conf_in(root: &Path) -> PathBuf {
        ["apache2.conf", "conf/httpd.conf", "httpd.conf"]
            .iter()
            .map(|c| root.join(c))
            .find(|p| p.is_file())
            .unwrap_or_else(|| root.join("apache2.conf"))
    }
}

/// The `--json` document of `discover`.
#[derive(Serialize, Debug)]
pub(crate) struct DiscoverDoc {
    pub(crate) schema: u32,
    pub(crate) changed: bool,
    pub(crate) servers: Vec<ServerReport>,
    pub(crate) certificates: Vec<CertificateFound>,
    /// The `[issuer.*]` tables the certificates point at: the CA each was issued by.
    pub(crate) issuers: Vec<lineage::IssuerFound>,
    /// Problems that concern no single certificate (unreadable files, parse errors).
    pub(crate) problems: Vec<String>,
}

#[derive(Serialize, Debug)]
pub(crate) struct ServerReport {
    /// The name of its `[server.NAME]` table.
    pub(crate) name: String,
    pub(crate) kind: String,
    /// The main configuration file read.
    pub(crate) config: String,
    /// Every configuration file read, includes too.
    pub(crate) files: Vec<String>,
    pub(crate) pid_file: Option<String>,
    pub(crate) test_command: Option<Vec<String>>,
    pub(crate) verify: Vec<EndpointReport>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointReport {
    pub(crate) address: String,
    pub(crate) sni: String,
}

#[derive(Serialize, Debug)]
pub(crate) struct CertificateFound {
    /// The name of its `[certificate.NAME]` table.
    pub(crate) name: String,
    pub(crate) server: String,
    /// The certificate's DNS names (subject alternative names).
    pub(crate) names: Vec<String>,
    /// The names the server configuration gives its sites.
    pub(crate) server_names: Vec<String>,
    pub(crate) cert_file: String,
    pub(crate) key_file: Option<String>,
    pub(crate) key_type: Option<String>,
    pub(crate) serial: Option<String>,
    pub(crate) not_after: Option<String>,
    pub(crate) issuer: Option<String>,
    /// The `[issuer.NAME]` it is to be re-issued by: the CA that issued it. `None` for a
    /// self-signed certificate (the embedded local CA replaces it) and for a CA discover
    /// cannot name (`config validate` then asks for one).
    pub(crate) issuer_table: Option<String>,
    /// The certbot lineage (`…/live/NAME`) it belongs to: taken over as a whole.
    pub(crate) certbot_lineage: Option<String>,
    pub(crate) chain_file: Option<String>,
    pub(crate) leaf_file: Option<String>,
    /// "file:line" of each directive that names the certificate.
    pub(crate) sources: Vec<String>,
    pub(crate) endpoints: Vec<EndpointReport>,
    /// Whether the TOML carries it as a table (false: only as a comment, see problems).
    pub(crate) usable: bool,
    pub(crate) problems: Vec<String>,
}

/// One server configuration read: its table name, kind, how to test it, what was found.
struct ServerScan {
    name: &'static str,
    kind: ServerKind,
    conf: PathBuf,
    test_command: Option<Vec<String>>,
    scan: Scan,
}

/// Read every target and describe what is served.
pub(crate) fn discover(targets: &Targets) -> DiscoverDoc {
    let mut doc = DiscoverDoc {
        schema: SCHEMA,
        changed: false,
        servers: Vec::new(),
        certificates: Vec::new(),
        issuers: Vec::new(),
        problems: Vec::new(),
    };
    let mut taken_names = BTreeSet::new();
    let mut taken_files = BTreeSet::new();
    let scans = [scan_nginx(targets), scan_apache(targets)];
    for s in scans.into_iter().flatten() {
        doc.problems.extend(s.scan.problems.iter().cloned());
        let mut verify: Vec<EndpointReport> = Vec::new();
        for group in group_sites(&s.scan.sites) {
            let (found, issuer) = describe(s.name, &group, &mut taken_names, &mut taken_files);
            if found.usable {
                if let Some(i) = issuer
                    && !doc.issuers.iter().any(|x| x.name == i.name)
                {
                    doc.issuers.push(i);
                }
                for e in &found.endpoints {
                    if !verify.contains(e) {
                        verify.push(e.clone());
                    }
                }
            }
            doc.certificates.push(found);
        }
        doc.servers.push(server_report(s, targets.explicit, verify));
    }
    doc
}

/// The nginx configuration, when it is a target.
fn scan_nginx(targets: &Targets) -> Option<ServerScan> {
    let conf = targets.nginx_conf.as_ref()?;
    let mut scan = Scan::default();
    nginx::scan(conf, &mut scan);
    let test_command = targets.explicit.then(|| {
        ["nginx", "-t", "-q", "-c"]
            .iter()
            .map(|a| a.to_string())
            .chain([conf.display().to_string()])
            .collect()
    });
    Some(ServerScan {
        name: "nginx",
        kind: ServerKind::Nginx,
        conf: conf.clone(),
        test_command,
        scan,
    })
}

/// The Apache configuration, when it is a target.
fn scan_apache(targets: &Targets) -> Option<ServerScan> {
    let (root, conf) = targets.apache.as_ref()?;
    let mut scan = Scan::default();
    apache::scan(root, conf, &mut scan);
    // For a configuration named on the command line, the server binary itself: the ctl
    // wrappers read the distribution's envvars, which belong to the default instance.
    let binary = match crate::config::ApacheLayout::detect() {
        crate::config::ApacheLayout::Debian => "apache2",
        crate::config::ApacheLayout::Rhel => "httpd",
    };
    let test_command = targets.explicit.then(|| {
        vec![
            binary.to_string(),
            "-d".into(),
            root.display().to_string(),
            "-f".into(),
            conf.display().to_string(),
            "-t".into(),
        ]
    });
    Some(ServerScan {
        name: "apache",
        kind: ServerKind::Apache,
        conf: conf.clone(),
        test_command,
        scan,
    })
}

/// The `[server.NAME]` a scan proposes, verified at `verify`.
fn server_report(s: ServerScan, explicit: bool, verify: Vec<EndpointReport>) -> ServerReport {
    ServerReport {
        name: s.name.to_string(),
        kind: s.kind.as_str().to_string(),
        config: s.conf.display().to_string(),
        files: s
            .scan
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        // For the default configuration the server's own defaults apply (and under
        // systemd, `systemctl reload`, which a pid_file would turn off).
        pid_file: s
            .scan
            .pid_file
            .as_ref()
            .filter(|_| explicit)
            .map(|p| p.display().to_string()),
        test_command: s.test_command,
        verify,
    }
}

/// Sites that use the same certificate and key are one certificate to manage.
fn group_sites(sites: &[Site]) -> Vec<Vec<Site>> {
    let mut groups: Vec<Vec<Site>> = Vec::new();
    for s in sites {
        match groups
            .iter_mut()
            .find(|g| g[0].cert_file == s.cert_file && g[0].key_file == s.key_file)
        {
            Some(g) => g.push(s.clone()),
            None => groups.push(vec![s.clone()]),
        }
    }
    groups
}

/// Read the certificate of a group of sites and describe it as a certificate to manage.
fn describe(
    server: &str,
    sites: &[Site],
    taken_names: &mut BTreeSet<String>,
    taken_files: &mut BTreeSet<PathBuf>,
) -> (CertificateFound, Option<lineage::IssuerFound>) {
    let first = &sites[0];
    let mut problems = unique(sites.iter().flat_map(|s| s.problems.iter()));
    let server_names = unique(sites.iter().flat_map(|s| s.server_names.iter()));
    // A site problem (variables in the path, no key file) means certagent cannot manage it.
    let blocked = !problems.is_empty();
    let (leaf, names, key_spec) = read_facts(&first.cert_file, &server_names, &mut problems);
    let endpoints = endpoints_of(sites, &names);
    let name = table_name(
        names.first().map(|n| n.as_str()).unwrap_or("site"),
        taken_names,
    );
    let mut usable = check_usable(
        leaf.is_some() && first.key_file.is_some(),
        blocked,
        &names,
        &endpoints,
        &mut problems,
    );
    usable &= claim_files(first, taken_files, &mut problems);
    let leaf_issuer = leaf.as_ref().and_then(|(_, i)| i.as_ref());
    let issuer_dn = leaf_issuer.map(|(dn, _)| dn.clone());
    let self_signed = leaf_issuer.is_some_and(|(_, s)| *s);
    let (issuer, lineage) = issuer_and_lineage(
        issuer_dn.as_ref(),
        self_signed,
        &first.cert_file,
        &mut problems,
    );
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
fn read_facts(
    cert_file: &Path,
    server_names: &[String],
    problems: &mut Vec<String>,
) -> (Option<Leaf>, Vec<DomainName>, Option<KeySpec>) {
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
fn check_usable(
    complete: bool,
    blocked: bool,
    names: &[DomainName],
    endpoints: &[EndpointReport],
    problems: &mut Vec<String>,
) -> bool {
    let mut usable = complete && !names.is_empty();
    usable &= !blocked;
    if names.is_empty() {
        problems
            .push("no DNS names: neither the certificate nor the configuration names one".into());
    }
    if endpoints.is_empty() {
        problems.push("no TLS listen address to verify it at".into());
        usable = false;
    }
    usable
}

/// The items in order, each once.
fn unique<'a>(items: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

/// The leaf certificate in `cert_file`, with its issuer; a problem when it cannot be read.
fn read_leaf(cert_file: &Path, problems: &mut Vec<String>) -> Option<Leaf> {
    let read = crate::store::fsutil::read_capped(cert_file, keys::MAX_PEM_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.ok_or_else(|| format!("{:?} does not exist", cert_file.display().to_string()))
        });
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

/// The certificate's DNS names, or when it has none the configuration's server names.
fn names_of(
    leaf: Option<&LeafFacts>,
    server_names: &[String],
    problems: &mut Vec<String>,
) -> Vec<DomainName> {
    let mut names: Vec<DomainName> = Vec::new();
    if let Some(facts) = leaf {
        for n in &facts.names {
            match n.parse::<DomainName>() {
                Ok(d) if !names.contains(&d) => names.push(d),
                Ok(_) => {}
                Err(e) => problems.push(format!("left out of names: {e}")),
            }
        }
    }
    if names.is_empty() {
        names = server_names
            .iter()
            .filter_map(|n| n.parse::<DomainName>().ok())
            .collect();
    }
    names
}

/// Each place the certificate is served, probed with a name the site answers to and the
/// certificate carries (so the endpoint applies to this certificate and no other).
fn endpoints_of(sites: &[Site], names: &[DomainName]) -> Vec<EndpointReport> {
    let mut endpoints: Vec<EndpointReport> = Vec::new();
    for s in sites {
        let sni = s
            .server_names
            .iter()
            .find(|h| {
                !h.starts_with("*.")
                    && names
                        .iter()
                        .any(|n| crate::config::name_covers(n.as_str(), h))
            })
            .cloned()
            .or_else(|| names.first().map(|n| probe_sni(n.as_str())));
        if let Some(sni) = sni {
            for a in &s.addresses {
                let e = EndpointReport {
                    address: a.clone(),
                    sni: sni.clone(),
                };
                if !endpoints.contains(&e) {
                    endpoints.push(e);
                }
            }
        }
    }
    endpoints
}

/// Take the site's certificate and key files for this certificate; false (with a problem
/// each) when another certificate already has one.
fn claim_files(
    first: &Site,
    taken_files: &mut BTreeSet<PathBuf>,
    problems: &mut Vec<String>,
) -> bool {
    let mut free = true;
    for f in [Some(&first.cert_file), first.key_file.as_ref()]
        .into_iter()
        .flatten()
    {
        if !taken_files.insert(f.clone()) {
            problems.push(format!(
                "{:?} is also used by another certificate with a different pair",
                f.display().to_string()
            ));
            free = false;
        }
    }
    free
}

/// The `[issuer.NAME]` for the CA that issued it and the certbot lineage it belongs to,
/// with a problem for each that stands in the way of taking it over.
fn issuer_and_lineage(
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
            "a certbot lineage ({}): stop certbot renewing it before certagent takes over (systemctl disable --now certbot.timer, or certbot delete --cert-name {} once certagent has re-issued it); certagent then replaces all of its links",
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
fn issuer_of(der: &[u8]) -> Option<(String, bool)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((
        cert.issuer().to_string(),
        cert.issuer().as_raw() == cert.subject().as_raw(),
    ))
}

/// A `[certificate.NAME]` name from a DNS name: `shop.example.com` -> `shop-example-com`,
/// `*.example.com` -> `wildcard-example-com`; `-2`, `-3`... when taken.
fn table_name(dns: &str, taken: &mut BTreeSet<String>) -> String {
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
fn render_server(t: &mut String, s: &ServerReport) {
    let _ = writeln!(t);
    let _ = writeln!(t, "# {} configuration: {}", s.kind, s.config);
    let _ = writeln!(t, "[server.{}]", s.name);
    let _ = writeln!(t, "kind = {:?}", s.kind);
    let _ = writeln!(t, "verify = [");
    for e in &s.verify {
        let _ = writeln!(t, "  {{ address = {:?}, sni = {:?} }},", e.address, e.sni);
    }
    let _ = writeln!(t, "]");
    if let Some(cmd) = &s.test_command {
        let _ = writeln!(t, "test_command = {}", toml_array(cmd));
    }
    if let Some(p) = &s.pid_file {
        let _ = writeln!(t, "pid_file = {p:?}");
    }
}

/// An `[issuer.NAME]` table, with the http-01 choices as comments when none is known.
fn render_issuer(t: &mut String, i: &lineage::IssuerFound) {
    let _ = writeln!(t);
    let _ = writeln!(t, "# The CA that issued certificates below ({}).", i.from);
    let _ = writeln!(t, "[issuer.{}]", i.name);
    let _ = writeln!(t, "kind = {:?}", i.kind);
    let _ = writeln!(t, "directory = {:?}", i.directory);
    let _ = writeln!(t, "# contact = [\"mailto:you@example.com\"]");
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
fn render_certificate(t: &mut String, c: &CertificateFound) {
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
}

/// The comments above a certificate table: its sources, facts and problems.
fn render_certificate_notes(t: &mut String, c: &CertificateFound) {
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

fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Read a configuration file (capped), with an error that names it.
fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let shown = path.display().to_string();
    let f = crate::store::fsutil::open_regular(path)
        .map_err(|e| format!("failed to read {shown:?}: {e}"))?;
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("failed to read {shown:?}: {e}"))?;
    if text.len() > MAX_CONFIG_BYTES {
        return Err(format!("failed to read {shown:?}: larger than 8 MiB"));
    }
    Ok(text)
}

/// `a/./b/../c` -> `a/c`, lexically (what the servers do with a joined relative path).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn has_glob(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?', '['])
}

/// Expand a glob pattern (`*`, `?`, `[...]` in any component) to the existing paths it
/// matches, sorted like glob(3). A pattern without wildcards is returned if it exists.
fn expand_glob(pattern: &Path) -> Vec<PathBuf> {
    let mut current = vec![PathBuf::new()];
    for c in pattern.components() {
        let part = c.as_os_str().to_string_lossy().into_owned();
        let mut next = Vec::new();
        if !matches!(c, Component::Normal(_)) || !part.contains(['*', '?', '[']) {
            for base in current {
                next.push(base.join(c.as_os_str()));
            }
        } else {
            for base in current {
                let Ok(entries) = std::fs::read_dir(&base) else {
                    continue;
                };
                let mut found: Vec<PathBuf> = entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let hidden_ok = !name.starts_with('.') || part.starts_with('.');
                        (hidden_ok && fnmatch(&part, &name)).then(|| base.join(name))
                    })
                    .collect();
                found.sort();
                next.extend(found);
            }
        }
        current = next;
    }
    current.into_iter().filter(|p| p.exists()).collect()
}

/// Files in a directory and its subdirectories, sorted (Apache's `Include DIR`).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Shell-style match of one file name: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
fn fnmatch(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some(('[', rest)) => {
                let Some(close) = rest.iter().skip(1).position(|&c| c == ']').map(|i| i + 1) else {
                    return n.first() == Some(&'[') && go(rest, &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let (negate, set) = match rest[..close].split_first() {
                    Some(('!' | '^', set)) => (true, set),
                    _ => (false, &rest[..close]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&rest[close + 1..], &n[1..])
            }
            Some((&c, rest)) => n.first() == Some(&c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// The address to probe a listen address at: `443`, `*:443`, `0.0.0.0:443` and
/// `_default_:443` become `127.0.0.1:443`, `[::]:443` becomes `[::1]:443`, an IP is kept, a
/// host name becomes loopback; unix sockets and addresses without a port give `None`.
fn probe_address(listen: &str, default_port: u16) -> Option<String> {
    if listen.starts_with("unix:") {
        return None;
    }
    if let Ok(port) = listen.parse::<u16>() {
        return Some(format!("127.0.0.1:{port}"));
    }
    if let Ok(a) = listen.parse::<SocketAddr>() {
        let ip = match a.ip() {
            ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        return Some(format!("{ip}:{}", a.port()));
    }
    if let Ok(ip) = listen.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return probe_address(&SocketAddr::new(ip, default_port).to_string(), default_port);
    }
    let (host, port) = listen.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    match host {
        "*" | "_default_" | "" => Some(format!("127.0.0.1:{port}")),
        _ => Some(format!("127.0.0.1:{port}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_become_probe_addresses() {
        let cases = [
            ("443", Some("127.0.0.1:443")),
            ("*:8443", Some("127.0.0.1:8443")),
            ("_default_:443", Some("127.0.0.1:443")),
            ("0.0.0.0:443", Some("127.0.0.1:443")),
            ("[::]:443", Some("[::1]:443")),
            ("10.1.2.3:443", Some("10.1.2.3:443")),
            ("www.example.com:443", Some("127.0.0.1:443")),
            ("unix:/run/nginx.sock", None),
            ("10.1.2.3", Some("10.1.2.3:443")),
        ];
        for (listen, want) in cases {
            assert_eq!(probe_address(listen, 443).as_deref(), want, "{listen}");
        }
    }

    #[test]
    fn globs_match_like_the_shell() {
        assert!(fnmatch("*.conf", "shop.conf"));
        assert!(!fnmatch("*.conf", "shop.conf.bak"));
        assert!(fnmatch("site-?.conf", "site-1.conf"));
        assert!(fnmatch("[a-c]*", "blog"));
        assert!(!fnmatch("[!a-c]*", "blog"));
        assert!(fnmatch("*", "x"));
        let tmp = tempfile::tempdir().unwrap();
        for f in ["b.conf", "a.conf", "c.txt", ".hidden.conf"] {
            std::fs::write(tmp.path().join(f), "").unwrap();
        }
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::fs::write(tmp.path().join("sub/d.conf"), "").unwrap();
        let got = expand_glob(&tmp.path().join("*.conf"));
        assert_eq!(got, [tmp.path().join("a.conf"), tmp.path().join("b.conf")]);
        let got = expand_glob(&tmp.path().join("s*/*.conf"));
        assert_eq!(got, [tmp.path().join("sub/d.conf")]);
        assert!(expand_glob(&tmp.path().join("none.conf")).is_empty());
        assert_eq!(
            files_under(tmp.path()).len(),
            5,
            "{:?}",
            files_under(tmp.path())
        );
    }

    #[test]
    fn table_names_are_valid_and_unique() {
        let mut taken = BTreeSet::new();
        assert_eq!(
            table_name("shop.example.com", &mut taken),
            "shop-example-com"
        );
        assert_eq!(
            table_name("shop.example.com", &mut taken),
            "shop-example-com-2"
        );
        assert_eq!(
            table_name("*.example.com", &mut taken),
            "wildcard-example-com"
        );
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(
            normalize(Path::new("/etc/nginx/./ssl/../certs/a.pem")),
            Path::new("/etc/nginx/certs/a.pem")
        );
    }
}
