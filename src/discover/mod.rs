//! `certagent discover`: find the certificates a host already serves, by reading the nginx,
//! Apache, HAProxy, Postfix and Dovecot configurations the way the servers do (includes,
//! globs, relative paths), and
//! describe each as a ready-to-use `[certificate.NAME]` table. Reads only; never writes,
//! never starts or signals a server.

mod apache;
mod describe;
mod dovecot;
mod haproxy;
mod lineage;
mod nginx;
mod paths;
mod postfix;
mod render;

use describe::describe;

use paths::{expand_glob, files_under, has_glob, normalize, probe_address, read_text};
pub(crate) use render::render_toml;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::config::{ServerKind, Starttls, probe_sni};
use crate::core::{CertName, KeySpec, LeafFacts};
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
    /// Plain-text addresses to probe after the protocol's STARTTLS (address, protocol).
    pub(crate) starttls: Vec<(String, Starttls)>,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: Option<PathBuf>,
    /// The file the server actually reads when it is one file with key, leaf and chain
    /// (HAProxy's `crt`, a one-file `smtpd_tls_chain_files`): the certificate is read from it.
    pub(crate) bundle_file: Option<PathBuf>,
    pub(crate) problems: Vec<String>,
}

impl Site {
    fn new(source: Source) -> Site {
        Site {
            directive: source,
            server_names: Vec::new(),
            addresses: Vec::new(),
            starttls: Vec::new(),
            cert_file: PathBuf::new(),
            key_file: None,
            bundle_file: None,
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
    /// HAProxy's runtime API socket (`stats socket PATH level admin`).
    pub(crate) runtime_socket: Option<PathBuf>,
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
    pub(crate) haproxy_conf: Option<PathBuf>,
    /// Postfix's main.cf (master.cf is read beside it).
    pub(crate) postfix_conf: Option<PathBuf>,
    pub(crate) dovecot_conf: Option<PathBuf>,
    /// The configurations were named on the command line (not found at default places):
    /// the server tables then carry test commands for exactly these files.
    pub(crate) explicit: bool,
}

impl Targets {
    /// The default places, those that exist: nginx's compiled-in conf path (else
    /// /etc/nginx/nginx.conf), Debian's /etc/apache2/apache2.conf, RHEL's
    /// /etc/httpd/conf/httpd.conf, /etc/haproxy/haproxy.cfg, /etc/postfix/main.cf,
    /// /etc/dovecot/dovecot.conf.
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
        let existing = |p: &str| Some(PathBuf::from(p)).filter(|p| p.is_file());
        Targets {
            nginx_conf: nginx,
            apache,
            haproxy_conf: existing("/etc/haproxy/haproxy.cfg"),
            postfix_conf: existing("/etc/postfix/main.cf"),
            dovecot_conf: existing("/etc/dovecot/dovecot.conf"),
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
    /// certbot renews some of the certificates: what must be stopped before adopting them.
    pub(crate) certbot: Option<CertbotTakeover>,
}

/// certbot lineages among the certificates found, and what to do about certbot.
#[derive(Serialize, Debug)]
pub(crate) struct CertbotTakeover {
    /// The lineages (`…/live/NAME`) the certificates take over.
    pub(crate) lineages: Vec<String>,
    /// The command that stops certbot's renewal.
    pub(crate) stop: String,
    /// Why, for humans.
    pub(crate) why: String,
}

/// The command that stops certbot renewing (its packages' systemd timer).
pub(crate) const STOP_CERTBOT: &str = "systemctl disable --now certbot.timer";

impl CertbotTakeover {
    fn of(certificates: &[CertificateFound]) -> Option<CertbotTakeover> {
        let lineages: Vec<String> = certificates
            .iter()
            .filter_map(|c| c.certbot_lineage.clone())
            .collect();
        (!lineages.is_empty()).then(|| CertbotTakeover {
            lineages,
            stop: STOP_CERTBOT.into(),
            why: "certbot renews these certificates: stop it before adopting them (and remove a cron job, /etc/cron.d/certbot, where there is one), or certbot and certagent will both renew them, each replacing the other's certificate".into(),
        })
    }
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
    /// The argv that reloads it (`kind = "command"` servers: Postfix, Dovecot).
    pub(crate) reload_command: Option<Vec<String>>,
    /// HAProxy's runtime API socket, when haproxy.cfg has one at `level admin`.
    pub(crate) runtime_socket: Option<String>,
    pub(crate) verify: Vec<EndpointReport>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointReport {
    pub(crate) address: String,
    pub(crate) sni: String,
    /// The mail protocol spoken before the handshake ("smtp", "imap", "pop3"); absent for
    /// TLS from the first byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) starttls: Option<String>,
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
    /// The one file with key, leaf and chain the server reads (HAProxy's `crt`).
    pub(crate) bundle_file: Option<String>,
    /// "file:line" of each directive that names the certificate.
    pub(crate) sources: Vec<String>,
    pub(crate) endpoints: Vec<EndpointReport>,
    /// Whether the TOML carries it as a table (false: only as a comment, see problems).
    pub(crate) usable: bool,
    pub(crate) problems: Vec<String>,
}

/// One server configuration read: its table name, kind, how to test and reload it, what
/// was found.
pub(crate) struct ServerScan {
    name: &'static str,
    kind: ServerKind,
    conf: PathBuf,
    test_command: Option<Vec<String>>,
    reload_command: Option<Vec<String>>,
    scan: Scan,
}

/// An argv from string slices and a path or two.
fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|a| a.to_string()).collect()
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
        certbot: None,
    };
    let mut taken_names = BTreeSet::new();
    let mut taken_files = describe::Taken::new();
    let scans = [
        scan_nginx(targets),
        scan_apache(targets),
        haproxy::server_scan(targets),
        postfix::server_scan(targets),
        dovecot::server_scan(targets),
    ];
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
    doc.certbot = CertbotTakeover::of(&doc.certificates);
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
        reload_command: None,
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
        reload_command: None,
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
        reload_command: s.reload_command,
        runtime_socket: s
            .scan
            .runtime_socket
            .as_ref()
            .map(|p| p.display().to_string()),
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

#[cfg(test)]
mod tests {
    use super::describe::table_name;
    use super::paths::fnmatch;
    use super::*;

    #[test]
    fn literal_addresses_in_server_names_and_ip_sans_are_ip_names() {
        let server_names: Vec<String> = ["127.0.0.1", "[2001:db8::1]", "a.test", "~^re$"]
            .map(String::from)
            .into();
        let mut problems = Vec::new();
        let names = describe::names_of(None, &server_names, &mut problems);
        let text: Vec<String> = names.iter().map(CertName::to_string).collect();
        assert_eq!(text, ["127.0.0.1", "2001:db8::1", "a.test"]);
        assert!(names[0].is_ip() && names[1].is_ip());
        // The certificate's SANs come first; an iPAddress SAN reads as its address.
        let leaf = LeafFacts {
            names: ["0:0::1".to_string(), "b.test".into()].into(),
            not_before: 0,
            not_after: 1,
            serial: "1".into(),
            key_spec: None,
            spki_sha256: String::new(),
            crl_urls: Vec::new(),
            cert_id: None,
            issuer_dn: String::new(),
        };
        let names = describe::names_of(Some(&leaf), &server_names, &mut problems);
        let text: Vec<String> = names.iter().map(CertName::to_string).collect();
        assert_eq!(text, ["::1", "b.test"]);
        assert!(problems.is_empty(), "{problems:?}");
    }

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
