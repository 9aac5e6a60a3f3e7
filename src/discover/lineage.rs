//! Who issued a discovered certificate, and whether certbot manages it: so that `discover`
//! points the certificate at the CA that issued it (never silently at the embedded local
//! CA), and takes over a certbot lineage as a whole.
//!
//! A certbot lineage is `ROOT/live/NAME/{cert,chain,fullchain,privkey}.pem`, symlinks into
//! `ROOT/archive/NAME/`, renewed according to `ROOT/renewal/NAME.conf` (configobj: `key =
//! value` lines, `[renewalparams]` with `server` and `webroot_path`).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Let's Encrypt's production ACME directory.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// An `[issuer.NAME]` table discover proposes.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuerFound {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) directory: String,
    /// http-01 webroot, when certbot's renewal configuration names one.
    pub(crate) webroot: Option<String>,
    /// Why this table: "certbot renewal configuration FILE" or the issuer's name.
    pub(crate) from: String,
}

/// A certbot lineage a discovered certificate belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Lineage {
    pub(crate) live: PathBuf,
    pub(crate) renewal: Option<PathBuf>,
    /// `cert.pem` and `chain.pem` of the lineage, taken over with the rest (as `leaf_file`
    /// and `chain_file`) so that no link of the lineage is left pointing into `archive/`.
    pub(crate) leaf_file: Option<PathBuf>,
    pub(crate) chain_file: Option<PathBuf>,
}

/// The lineage `cert_file` is part of, if it is `ROOT/live/NAME/*.pem` of a certbot tree.
pub(crate) fn certbot_lineage(cert_file: &Path) -> Option<Lineage> {
    let live = cert_file.parent()?;
    let name = live.file_name()?;
    let live_root = live.parent()?;
    if live_root.file_name()? != "live" {
        return None;
    }
    let root = live_root.parent()?;
    let renewal = root
        .join("renewal")
        .join(format!("{}.conf", name.to_str()?));
    let archive = root.join("archive").join(name);
    if !renewal.is_file() && !archive.is_dir() {
        return None;
    }
    let present = |f: &str| {
        let p = live.join(f);
        (p.exists() && p != cert_file).then_some(p)
    };
    Some(Lineage {
        live: live.to_path_buf(),
        renewal: renewal.is_file().then_some(renewal),
        leaf_file: present("cert.pem"),
        chain_file: present("chain.pem"),
    })
}

/// The issuer table for a certificate issued by `issuer_dn` (`None` when the local CA is fine:
/// self-signed), from certbot's renewal configuration when there is one.
pub(crate) fn issuer_for(issuer_dn: &str, lineage: Option<&Lineage>) -> Option<IssuerFound> {
    if let Some(conf) = lineage.and_then(|l| l.renewal.as_ref())
        && let Ok(text) = std::fs::read_to_string(conf)
    {
        let server = value(&text, "server");
        let webroot = value(&text, "webroot_path").map(|w| {
            w.split(',')
                .map(str::trim)
                .find(|s| !s.is_empty())
                .unwrap_or_default()
                .to_string()
        });
        if let Some(directory) = server {
            return Some(IssuerFound {
                name: issuer_name(&directory),
                kind: "acme".into(),
                directory,
                webroot: webroot.filter(|w| !w.is_empty()),
                from: format!("certbot renewal configuration {}", conf.display()),
            });
        }
    }
    issuer_dn.contains("Let's Encrypt").then(|| IssuerFound {
        name: "letsencrypt".into(),
        kind: "acme".into(),
        directory: LETS_ENCRYPT.into(),
        webroot: None,
        from: format!("issued by {issuer_dn}"),
    })
}

fn issuer_name(directory: &str) -> String {
    match directory {
        LETS_ENCRYPT => "letsencrypt".into(),
        LETS_ENCRYPT_STAGING => "letsencrypt-staging".into(),
        _ => "acme".into(),
    }
}

/// `key = value` from a configobj file (the first occurrence, any section).
fn value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certbots_renewal_configuration_names_the_directory_and_webroot() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live/shop.test");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(dir.path().join("renewal")).unwrap();
        for f in ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"] {
            std::fs::write(live.join(f), "").unwrap();
        }
        std::fs::write(
            dir.path().join("renewal/shop.test.conf"),
            "version = 2.1.0\ncert = x\n\n[renewalparams]\nauthenticator = webroot\nwebroot_path = /var/www/shop,\nserver = https://acme-staging-v02.api.letsencrypt.org/directory\n",
        )
        .unwrap();
        let lineage = certbot_lineage(&live.join("fullchain.pem")).unwrap();
        assert_eq!(lineage.leaf_file, Some(live.join("cert.pem")));
        assert_eq!(lineage.chain_file, Some(live.join("chain.pem")));
        let found = issuer_for("C=US, O=Let's Encrypt, CN=R11", Some(&lineage)).unwrap();
        assert_eq!(found.name, "letsencrypt-staging");
        assert_eq!(found.directory, LETS_ENCRYPT_STAGING);
        assert_eq!(found.webroot.as_deref(), Some("/var/www/shop"));
        assert!(certbot_lineage(&dir.path().join("elsewhere/fullchain.pem")).is_none());
        assert!(issuer_for("CN=Corp CA", None).is_none());
        assert_eq!(
            issuer_for("C=US, O=Let's Encrypt, CN=R11", None)
                .unwrap()
                .directory,
            LETS_ENCRYPT
        );
    }
}
