//! ACME (RFC 8555) through instant-acme, driven over our reqwest client.
//!
//! The order URL is handed to the caller to journal the moment the order exists, and a
//! journalled order is resumed rather than re-ordered (a crash never costs a second order).
//! Everything the CA sends is treated as hostile input: tokens are checked before they name a
//! file, bodies are size-capped, and the chain is validated by the executor before use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, Order, OrderStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clock::Clock;
use crate::config::{AcmeIssuer, Challenge, Http01};
use crate::core::CertName;
use crate::error::{Context, Error, Problem, Result, Subproblem};
use crate::http::Http;
use crate::keys::Chain;
use crate::store::{Perms, fsutil};

pub(crate) mod certbot;
mod poll;
mod profile;
mod responder;

// Fleets check the tokens they relay with the same rule.
#[cfg(feature = "fleet")]
pub(crate) use responder::check_token;
mod revoke;

use responder::Responder;

pub(crate) struct Acme {
    name: String,
    cfg: AcmeIssuer,
    dir: PathBuf,
    clock: Clock,
}

/// The ACME error type without its URN prefix.
fn problem_kind(kind: Option<&str>) -> String {
    kind.unwrap_or("problem")
        .trim_start_matches("urn:ietf:params:acme:error:")
        .to_string()
}

/// The CA's problem document as data.
fn problem(p: instant_acme::Problem) -> Problem {
    Problem {
        kind: problem_kind(p.r#type.as_deref()),
        detail: p.detail,
        status: p.status,
        subproblems: p
            .subproblems
            .into_iter()
            .map(|s| Subproblem {
                identifier: s.identifier.map(|i| match i {
                    Identifier::Dns(name) => name,
                    Identifier::Ip(ip) => ip.to_string(),
                    other => format!("{other:?}"),
                }),
                kind: problem_kind(s.r#type.as_deref()),
                detail: s.detail,
            })
            .collect(),
    }
}

/// `context: <what went wrong>`, keeping the CA's problem document as data.
fn failed(context: impl Into<String>, e: instant_acme::Error) -> Error {
    let context = context.into();
    match e {
        instant_acme::Error::Api(p) => Error::Acme {
            context,
            problem: Box::new(problem(p)),
            hint: None,
        },
        other => Error::msg(format!("{context}: {other}")),
    }
}

/// Render an instant-acme error for humans (a log line), keeping the CA's problem document.
fn describe(e: instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem(p).to_string(),
        other => other.to_string(),
    }
}

impl Acme {
    pub(crate) fn new(name: &str, cfg: &AcmeIssuer, dir: &Path, clock: Clock) -> Acme {
        Acme {
            name: name.to_string(),
            cfg: cfg.clone(),
            dir: dir.to_path_buf(),
            clock,
        }
    }

    /// The stored account for this issuer, registering one on first use. The credentials
    /// (with the account's private key) are stored 0600.
    async fn account(&self, http: &Http) -> Result<Account> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Stored {
            directory: String,
            credentials: AccountCredentials,
        }
        let path = self.dir.join("account.json");
        if let Some(bytes) = fsutil::read_capped(&path, 64 << 10)? {
            let stored: Stored =
                serde_json::from_slice(&bytes).context("failed to read ACME account file")?;
            if stored.directory == self.cfg.directory {
                return Account::builder_with_http(Box::new(http.clone()))
                    .from_credentials(stored.credentials)
                    .await
                    .map_err(|e| failed("failed to load ACME account", e));
            }
            if self.cfg.account_from_certbot.is_none() {
                log::info!(issuer = self.name.as_str(); "directory changed, registering a new ACME account");
            }
        }
        if let Some(dir) = &self.cfg.account_from_certbot {
            return self.take_over_certbot_account(http, dir, &path).await;
        }
        let eab = match &self.cfg.eab {
            Some(eab) => {
                let path = crate::systemd::secret_path(&eab.hmac_key_file);
                let raw = fsutil::read_capped(&path, 4096)?.ok_or_else(|| {
                    Error::msg(format!(
                        "failed to read eab_hmac_key_file {:?}: no such file",
                        path.display().to_string()
                    ))
                })?;
                let text = String::from_utf8_lossy(&raw);
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text.trim().trim_end_matches('='))
                    .map_err(|_| Error::msg("failed to read the EAB MAC key: not base64url"))?;
                Some(ExternalAccountKey::new(eab.kid.clone(), &key))
            }
            None => None,
        };
        let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = Account::builder_with_http(Box::new(http.clone()))
            .create(&new, self.cfg.directory.clone(), eab.as_ref())
            .await
            .map_err(|e| {
                failed(
                    format!(
                        "failed to register ACME account at {:?}",
                        self.cfg.directory
                    ),
                    e,
                )
            })?;
        let stored = Stored {
            directory: self.cfg.directory.clone(),
            credentials,
        };
        let data = serde_json::to_vec(&stored).context("failed to encode ACME account")?;
        fsutil::replace_file(&path, &data, Perms::mode(0o600))?;
        log::info!(issuer = self.name.as_str(), account = account.id(); "registered ACME account");
        Ok(account)
    }

    /// The account certbot registered (`account_from_certbot`), stored as certagent's own so
    /// that it is read once: later runs use the stored copy even when certbot is gone. A
    /// failure is an error, never a new registration: the operator asked for this account.
    async fn take_over_certbot_account(
        &self,
        http: &Http,
        certbot_dir: &Path,
        path: &Path,
    ) -> Result<Account> {
        let shown = certbot_dir.display().to_string();
        let refused = |why: String| {
            Error::msg(format!(
                "failed to take over certbot's ACME account {shown:?}: {why}"
            ))
            .with_hint(
                "fix the account files, or remove account_from_certbot to register a new account",
            )
        };
        let credentials =
            certbot::credentials(certbot_dir, &self.cfg.directory).map_err(refused)?;
        let data = serde_json::to_vec(&serde_json::json!({
            "directory": self.cfg.directory,
            "credentials": credentials,
        }))
        .context("failed to encode ACME account")?;
        let data = zeroize::Zeroizing::new(data);
        let account = Account::builder_with_http(Box::new(http.clone()))
            .from_credentials(credentials)
            .await
            .map_err(|e| {
                failed(
                    format!("failed to load certbot's ACME account {shown:?}"),
                    e,
                )
            })?;
        fsutil::replace_file(path, &data, Perms::mode(0o600))?;
        log::info!(issuer = self.name.as_str(), account = account.id(), from = shown.as_str(); "took over certbot's ACME account");
        Ok(account)
    }

    /// Obtain a chain for `req.csr_der`, and the ACME profile it was issued under.
    /// `req.resume_order` is a journalled order URL; `on_order` must make a new order URL
    /// durable before this function goes on.
    pub(crate) async fn issue(
        &self,
        req: &crate::issuer::IssueRequest<'_>,
        on_order: &mut (dyn FnMut(&str) -> Result<()> + Send),
    ) -> Result<(Chain, Option<String>)> {
        let http = Http::new(self.cfg.ca_bundle.as_deref(), self.clock)?;
        let throttle = http.retry_after.clone();
        let result = self.issue_with(&http, req, on_order).await;
        // A 429/503 on the way carries the server's wish for when to come back.
        let retry_after = throttle.lock().ok().and_then(|slot| *slot);
        result.map_err(|e| self.trust_hint(&http, e.with_retry_after(retry_after)))
    }

    /// `e` with a hint at this issuer's `ca_bundle` when the CA's HTTPS certificate was not
    /// trusted on the way (a private or test CA, or the wrong file).
    fn trust_hint(&self, http: &Http, e: Error) -> Error {
        if !http
            .untrusted_server
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return e;
        }
        let table = format!("[issuer.{}]", crate::error::shown(&self.name));
        e.with_hint(match &self.cfg.ca_bundle {
            None => format!(
                "the CA's HTTPS certificate is not signed by a CA this host trusts; if it is a private CA (or a test one), set ca_bundle = \"/path/to/its-root.pem\" in {table}"
            ),
            Some(bundle) => format!(
                "the CA's HTTPS certificate is not signed by a CA in ca_bundle {:?} of {table}: put the root certificate of the CA's HTTPS server in that file",
                bundle.display().to_string()
            ),
        })
    }

    async fn issue_with(
        &self,
        http: &Http,
        req: &crate::issuer::IssueRequest<'_>,
        on_order: &mut (dyn FnMut(&str) -> Result<()> + Send),
    ) -> Result<(Chain, Option<String>)> {
        let account = self.account(http).await?;
        let offered: Vec<&str> = account.profiles().map(|p| p.name).collect();
        let profile = match profile::choose(req.profile, &offered, &self.name)? {
            profile::Choice::Default => None,
            profile::Choice::Use(p) => Some(p),
            profile::Choice::NotOffered { wanted, offered } => {
                log::warn!(issuer = self.name.as_str(), cert = req.cert_name, profile = wanted, event = "profile-not-offered"; "the CA {offered}: ordering under its default profile instead of {wanted:?} (profile_required = true makes this an error)");
                None
            }
        };
        let resume = req.resume_order;
        let mut order = match resume {
            Some(url) => match account.order(url.to_string()).await.map(|mut o| {
                let invalid = o.state().status == OrderStatus::Invalid;
                (o, invalid)
            }) {
                Ok((o, false)) => {
                    log::info!(issuer = self.name.as_str(), order = url; "resuming ACME order");
                    Some(o)
                }
                Ok(_) => {
                    log::warn!(issuer = self.name.as_str(), order = url; "journalled ACME order is invalid, placing a new one");
                    None
                }
                Err(e) => {
                    log::warn!(issuer = self.name.as_str(), order = url; "cannot resume ACME order ({}), placing a new one", describe(e));
                    None
                }
            },
            None => None,
        };
        let mut order = match order.take() {
            Some(o) => o,
            None => {
                // An IP address is an `ip` identifier (RFC 8738 §3): a CA refuses a `dns`
                // identifier whose value is an address.
                let ids: Vec<Identifier> = req
                    .names
                    .iter()
                    .map(|n| match n {
                        CertName::Dns(d) => Identifier::Dns(d.to_string()),
                        CertName::Ip(ip) => Identifier::Ip(*ip),
                    })
                    .collect();
                let o = self
                    .new_order(&account, &ids, req.replaces, profile)
                    .await?;
                on_order(o.url())?;
                crate::failpoint_async!("after-order-created");
                match profile {
                    Some(p) => {
                        log::info!(issuer = self.name.as_str(), order = o.url(), profile = p, event = "ordered"; "created ACME order")
                    }
                    None => {
                        log::info!(issuer = self.name.as_str(), order = o.url(), event = "ordered"; "created ACME order")
                    }
                }
                o
            }
        };
        // The order's own word on its profile (a resumed order was placed with the same
        // configuration: a changed profile discards the pending re-issue).
        let issued_under = order
            .state()
            .profile
            .clone()
            .or(profile.map(str::to_string));
        let timeout = Duration::from_secs(self.cfg.timeout.0.max(1) as u64);
        if order.state().status == OrderStatus::Pending {
            self.solve(&mut order, http, timeout, req.relay).await?;
        }
        if order.state().status == OrderStatus::Ready {
            order
                .finalize_csr(req.csr_der)
                .await
                .map_err(|e| failed("failed to finalize ACME order", e))?;
        }
        poll::poll(&mut order, http, poll::Until::Valid, timeout)
            .await
            .map_err(|e| failed("failed waiting for the certificate", e))?;
        let pem = order
            .certificate()
            .await
            .map_err(|e| failed("failed to download certificate", e))?
            .ok_or_else(|| Error::msg("the ACME order did not become valid"))?;
        let chain = Chain::from_pem(pem.as_bytes())
            .map_err(|e| Error::msg(format!("the CA sent an unusable chain: {e}")))?;
        Ok((chain, issued_under))
    }

    /// Place an order (under `profile`, if any), naming the certificate it replaces when
    /// there is one; a CA that says that certificate was already replaced gets the order
    /// again without it (RFC 9773 §5).
    async fn new_order(
        &self,
        account: &Account,
        ids: &[Identifier],
        replaces: Option<&str>,
        profile: Option<&str>,
    ) -> Result<Order> {
        let fail = |e| failed("failed to create ACME order", e);
        let plain = || match profile {
            Some(p) => NewOrder::new(ids).profile(p),
            None => NewOrder::new(ids),
        };
        let Some(cid) = replaces else {
            return account.new_order(&plain()).await.map_err(fail);
        };
        let b64 = |part: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()
        };
        let (Some(aki), Some(serial)) = cid
            .split_once('.')
            .map_or((None, None), |(a, s)| (b64(a), b64(s)))
        else {
            return Err(Error::msg(format!("invalid CertID {cid:?}")));
        };
        let id = instant_acme::CertificateIdentifier::new(
            rustls::pki_types::Der::from(aki),
            rustls::pki_types::Der::from(serial),
        );
        match account.new_order(&plain().replaces(id)).await {
            Ok(o) => {
                log::info!(issuer = self.name.as_str(), replaces = cid; "ordered as the replacement of the certificate in service");
                Ok(o)
            }
            Err(instant_acme::Error::Api(p))
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":alreadyReplaced")) =>
            {
                log::info!(issuer = self.name.as_str(), replaces = cid; "the CA says that certificate was already replaced; ordering without replaces");
                account.new_order(&plain()).await.map_err(fail)
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                account.new_order(&plain()).await.map_err(fail)
            }
            Err(e) => Err(fail(e)),
        }
    }

    /// Answer every pending authorization with http-01 and wait for the order to be ready.
    async fn solve(
        &self,
        order: &mut Order,
        http: &Http,
        timeout: Duration,
        relay: Option<&dyn crate::issuer::Relay>,
    ) -> Result<()> {
        let mut responder = Responder::start(&self.cfg.challenge, self.clock).await?;
        let kind = responder.challenge_type();
        let mut result = Ok(());
        {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = match authz {
                    Ok(a) => a,
                    Err(e) => {
                        result = Err(failed("failed to fetch authorization", e));
                        break;
                    }
                };
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                // `AuthorizedIdentifier` displays a wildcard as "*.name"; the DNS record is
                // for the base name either way.
                let ident = authz.identifier().to_string();
                let Some(mut challenge) = authz.challenge(kind.clone()) else {
                    result = Err(Error::msg(format!(
                        "the CA offers no {kind:?} challenge for {ident:?}"
                    )));
                    break;
                };
                let token = challenge.token.clone();
                let key_auth = challenge.key_authorization();
                let (auth, dns_value) = (key_auth.as_str().to_string(), key_auth.dns_value());
                if let Err(e) = responder.add(&ident, &token, &auth, &dns_value).await {
                    result = Err(e);
                    break;
                }
                if let Some(relay) = relay.filter(|_| kind == ChallengeType::Http01)
                    && let Err(e) = relay.add(&token, &auth).await
                {
                    result = Err(e);
                    break;
                }
                if let Err(e) = challenge.set_ready().await {
                    result = Err(failed(
                        format!("failed to start validation of {ident:?}"),
                        e,
                    ));
                    break;
                }
            }
        }
        if result.is_ok() {
            result = match poll::poll(order, http, poll::Until::Ready, timeout).await {
                Ok(OrderStatus::Ready) => Ok(()),
                Ok(status) => {
                    let why = order
                        .state()
                        .error
                        .as_ref()
                        .and_then(|p| p.detail.clone())
                        .unwrap_or_default();
                    Err(Error::msg(format!("ACME order became {status:?} instead of ready: {why}")).with_hint(match kind {
                        ChallengeType::Dns01 => "check that the zone is served by the DNS provider (DNSimple, or the rfc2136 dns_server and its secondaries) and dns_zone names it",
                        _ => "check that the names resolve to this host and the http-01 responder is reachable on port 80",
                    }))
                }
                Err(e) => Err(failed("failed waiting for validation", e)),
            };
        }
        responder.cleanup().await;
        if let Some(relay) = relay {
            relay.clear().await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::responder::*;
    use super::*;

    /// RFC 8555 §6.7.1, the example of a problem with subproblems.
    #[test]
    fn the_cas_problem_document_stays_data_until_displayed() {
        let doc = r#"{
            "type": "urn:ietf:params:acme:error:malformed",
            "detail": "Some of the identifiers requested were rejected",
            "subproblems": [
                {
                    "type": "urn:ietf:params:acme:error:malformed",
                    "detail": "Invalid underscore in DNS name \"_example.org\"",
                    "identifier": { "type": "dns", "value": "_example.org" }
                },
                {
                    "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                    "detail": "This CA will not issue for \"example.net\"",
                    "identifier": { "type": "dns", "value": "example.net" }
                }
            ]
        }"#;
        let p: instant_acme::Problem = serde_json::from_str(doc).unwrap();
        let e = failed("failed to create ACME order", instant_acme::Error::Api(p))
            .context("failed to obtain a certificate for \"site\" from issuer \"le\"");
        assert_eq!(
            e.to_string(),
            "failed to obtain a certificate for \"site\" from issuer \"le\": failed to create ACME order: the CA answered malformed: Some of the identifiers requested were rejected"
        );
        let Error::Acme { problem, .. } = &e else {
            panic!("not kept as a problem: {e:?}");
        };
        assert_eq!(problem.kind, "malformed");
        let sub: Vec<(Option<&str>, &str)> = problem
            .subproblems
            .iter()
            .map(|s| (s.identifier.as_deref(), s.kind.as_str()))
            .collect();
        assert_eq!(
            sub,
            vec![
                (Some("_example.org"), "malformed"),
                (Some("example.net"), "rejectedIdentifier")
            ]
        );
        assert_eq!(e.exit_code(), crate::error::exit::ERROR);
        assert_eq!(e.with_hint("h").hint(), Some("h"));
    }

    #[test]
    fn tokens_that_could_name_other_files_are_refused() {
        assert!(check_token("aGVsbG8-_x").is_ok());
        for bad in [
            "",
            "../../etc/passwd",
            "a/b",
            "a.b",
            "a b",
            &"x".repeat(300),
        ] {
            assert_eq!(
                check_token(bad).unwrap_err().to_string(),
                "the CA sent an invalid challenge token",
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn built_in_responder_answers_known_tokens_only() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut r = Responder::start(&Challenge::Http01(Http01::Listen(addr)), Clock::new())
            .await
            .unwrap();
        r.add("a.test", "tok", "tok.thumb", "unused").await.unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/.well-known/acme-challenge/tok").await;
        assert!(
            ok.starts_with("HTTP/1.1 200 OK") && ok.ends_with("\r\n\r\ntok.thumb"),
            "{ok}"
        );
        let missing = get("/.well-known/acme-challenge/other").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        r.cleanup().await;
    }
}
