//! Who issued a discovered certificate, and whether certbot manages it: so that `discover`
//! points the certificate at the CA that issued it (never silently at the embedded local
//! CA), and takes over a certbot lineage as a whole.
//!
//! A certbot lineage is `ROOT/live/NAME/{cert,chain,fullchain,privkey}.pem`, symlinks into
//! `ROOT/archive/NAME/`, renewed according to `ROOT/renewal/NAME.conf` (configobj: `key =
//! value` lines, `[renewalparams]` with `server`, `webroot_path` and `account`). The account
//! (`ROOT/accounts/SERVER/PATH/ID/`) is proposed for takeover (`account_from_certbot`) when
//! certagent can sign with its key; otherwise discover says a new one will be registered.

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
    /// certbot's account directory, to take over at first use (`account_from_certbot`):
    /// the same account, with its rate-limit history, instead of a new registration.
    pub(crate) account_from_certbot: Option<String>,
    /// The account URL of that account.
    pub(crate) account: Option<String>,
    /// Why certbot's account is not taken over (a new one is registered at first use).
    pub(crate) account_note: Option<String>,
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
            let mut found = IssuerFound {
                name: issuer_name(&directory),
                kind: "acme".into(),
                directory,
                webroot: webroot.filter(|w| !w.is_empty()),
                from: format!("certbot renewal configuration {}", conf.display()),
                account_from_certbot: None,
                account: None,
                account_note: None,
            };
            if let (Some(id), Some(l)) = (value(&text, "account"), lineage) {
                certbot_account(&mut found, l, &id);
            }
            return Some(found);
        }
    }
    issuer_dn.contains("Let's Encrypt").then(|| IssuerFound {
        name: "letsencrypt".into(),
        kind: "acme".into(),
        directory: LETS_ENCRYPT.into(),
        webroot: None,
        from: format!("issued by {issuer_dn}"),
        account_from_certbot: None,
        account: None,
        account_note: None,
    })
}

/// certbot's account `id` (its renewal configuration's `account`), taken over when certagent
/// can sign with its key; else a note saying why a new account will be registered.
fn certbot_account(found: &mut IssuerFound, lineage: &Lineage, id: &str) {
    let accounts = lineage
        .live
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("accounts"));
    let dir = accounts.as_deref().and_then(|a| find_dir(a, id, 5));
    let new = "certagent registers a new account at the first re-issue";
    match dir.map(|d| {
        (
            crate::issuer::acme::certbot::inspect(&d, &found.directory),
            d,
        )
    }) {
        Some((Ok(uri), d)) => {
            found.account_from_certbot = Some(d.display().to_string());
            found.account = Some(uri);
        }
        Some((Err(why), d)) => {
            found.account_note = Some(format!(
                "certbot's account {id} ({}) cannot be taken over: {why}; {new}",
                d.display()
            ))
        }
        None => {
            found.account_note = Some(format!(
                "certbot's account {id} is not under {}; {new}",
                accounts.unwrap_or_default().display()
            ))
        }
    }
}

/// The directory named `name` under `root` (certbot's `accounts/SERVER/PATH/ID`), at most
/// `depth` levels down; symbolic links are not followed.
fn find_dir(root: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(root).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in &entries {
        if e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() == name {
            return Some(e.path());
        }
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_dir(&e.path(), name, depth - 1))
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
