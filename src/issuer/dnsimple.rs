//! DNSimple API v2: Let's Encrypt certificates bought and issued through DNSimple (which
//! generates the key: its API takes no CSR) and the zone-records calls for ACME dns-01.
//!
//! Answers are size-capped; error bodies may be HTML (502 from their proxy); rate limits are
//! read from `X-RateLimit-*` (there is no Retry-After). The token is read from a file or a
//! systemd credential, held in a zeroizing buffer, and never printed.

use std::time::Duration;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::config::{DnsimpleApi, DnsimpleIssuer};
use crate::core::{CertName, KeySpec};
use crate::error::{Error, Result};
use crate::http::{MAX_BODY_BYTES, Timeouts, describe_reqwest};
use crate::keys::{Chain, SecretPem};
use crate::store::fsutil;

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
    account: u64,
    /// "Now" to tell how long a used-up rate limit lasts.
    clock: Clock,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dnsimple::Client({}, account {}, token <redacted>)",
            self.base, self.account
        )
    }
}

/// Read the API token: an absolute path, or a systemd credential name.
fn read_token(api: &DnsimpleApi) -> Result<Zeroizing<String>> {
    let path = if api.token_file.starts_with('/') {
        std::path::PathBuf::from(&api.token_file)
    } else {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            Error::msg(format!(
                "failed to read the DNSimple token: credential {:?} needs $CREDENTIALS_DIRECTORY",
                api.token_file
            ))
            .with_hint(
                "run under systemd with LoadCredential=, or set token_file to an absolute path",
            )
        })?;
        std::path::Path::new(&dir).join(&api.token_file)
    };
    let raw = fsutil::read_capped(&path, 4096)?.ok_or_else(|| {
        Error::msg(format!(
            "failed to read the DNSimple token: {:?} does not exist",
            path.display().to_string()
        ))
    })?;
    let token = Zeroizing::new(String::from_utf8_lossy(&raw).trim().to_string());
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::msg(format!(
            "failed to read the DNSimple token: {:?} does not hold one token",
            path.display().to_string()
        )));
    }
    Ok(token)
}

impl Client {
    pub(crate) async fn connect(api: &DnsimpleApi, clock: Clock) -> Result<Client> {
        let token = read_token(api)?;
        let http = crate::http::client(Timeouts::API, None)?;
        let mut client = Client {
            http,
            base: api.base_url.clone(),
            token,
            account: api.account_id.unwrap_or(0),
            clock,
        };
        if api.account_id.is_none() {
            let who = client.call(reqwest::Method::GET, "/whoami", None).await?;
            client.account = who["data"]["account"]["id"].as_u64().ok_or_else(|| {
                Error::msg("DNSimple's /whoami named no account")
                    .with_hint("use an account token, or set account_id")
            })?;
        }
        Ok(client)
    }

    /// One API call. 2xx → the JSON body (Null for 204); everything else → an error that says
    /// what DNSimple said. 428 ("not ready") comes back as `Ok(None)` from `call_ready`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        match self.call_ready(method, path, body).await? {
            Some(v) => Ok(v),
            None => Err(Error::msg(format!("DNSimple says {path} is not ready yet"))),
        }
    }

    async fn call_ready(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.token.as_str())
            .header(http::header::ACCEPT, "application/json");
        if let Some(b) = body {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let what = format!("DNSimple {method} {path}");
        let rsp = req
            .send()
            .await
            .map_err(|e| Error::msg(format!("{what} failed: {}", describe_reqwest(&e))))?;
        let status = rsp.status();
        let reset = rsp
            .headers()
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok());
        let bytes = read_body(rsp, &what).await?;
        self.answer(&what, status.as_u16(), reset, &bytes)
    }

    /// What an answer with `status` and body `bytes` means: the JSON body, `None` for 428
    /// (not ready), or an error saying what DNSimple said. `reset` is when the rate limit
    /// resets.
    fn answer(
        &self,
        what: &str,
        status: u16,
        reset: Option<i64>,
        bytes: &[u8],
    ) -> Result<Option<Value>> {
        let json: Option<Value> = serde_json::from_slice(bytes).ok();
        let message = json
            .as_ref()
            .and_then(|j| j["message"].as_str())
            .map(str::to_string);
        match status {
            200..=299 => Ok(Some(json.unwrap_or(Value::Null))),
            428 => Ok(None),
            401 => Err(Error::msg(format!("{what}: DNSimple rejected the token ({})", message.unwrap_or_default()))
                .with_hint("check token_file: an account token for this account is needed")),
            412 => Err(Error::msg(format!("{what}: {}", message.unwrap_or_else(|| "a feature of the DNSimple plan is missing".into())))
                .with_hint("this needs a DNSimple plan feature (Let's Encrypt, custom names, wildcards or SANs)")),
            429 => {
                let now = self.clock.now();
                let wait = reset.map(|r| (r - now).max(1)).unwrap_or(60);
                Err(Error::msg(format!("{what}: DNSimple's rate limit is used up until {}", crate::core::rfc3339(now + wait)))
                    .with_retry_after(Some(wait)))
            }
            code => {
                let detail = match message {
                    Some(m) => m,
                    None if bytes.starts_with(b"<") => "an HTML error page".to_string(),
                    None => "no explanation".to_string(),
                };
                Err(Error::msg(format!("{what}: {code} {detail}")))
            }
        }
    }

    fn domain_path(&self, domain: &str) -> String {
        format!("/{}/domains/{domain}/certificates", self.account)
    }

    pub(crate) async fn create_txt(&self, zone: &str, name: &str, content: &str) -> Result<u64> {
        let body = json!({"name": name, "type": "TXT", "content": content, "ttl": 60});
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/{}/zones/{zone}/records", self.account),
                Some(body),
            )
            .await?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| Error::msg("DNSimple created a record without an id"))
    }

    pub(crate) async fn delete_record(&self, zone: &str, id: u64) -> Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/{}/zones/{zone}/records/{id}", self.account),
            None,
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn distributed(&self, zone: &str, id: u64) -> Result<bool> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/{}/zones/{zone}/records/{id}/distribution", self.account),
                None,
            )
            .await?;
        Ok(v["data"]["distributed"].as_bool().unwrap_or(false))
    }
}

/// The body of `rsp`, refused when larger than `MAX_BODY_BYTES`.
async fn read_body(mut rsp: reqwest::Response, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while let Some(chunk) = rsp
        .chunk()
        .await
        .map_err(|e| Error::msg(format!("{what} failed: {}", describe_reqwest(&e))))?
    {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Error::msg(format!(
                "{what}: answer larger than {} KiB",
                MAX_BODY_BYTES >> 10
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// DNSimple's certificate `name` and `alternate_names` for our names in `domain`: "www"
/// stands for the apex plus www; another name X for X.DOMAIN ("*" for the wildcard).
/// IP addresses are refused (config validation already does).
pub(crate) fn dnsimple_names(domain: &str, names: &[CertName]) -> Result<(String, Vec<String>)> {
    let mut rest = Vec::new();
    for n in names {
        match n {
            CertName::Dns(d) => rest.push(d.as_str()),
            CertName::Ip(ip) => {
                return Err(Error::msg(format!(
                    "DNSimple cannot issue for the IP address {:?}",
                    ip.to_string()
                )));
            }
        }
    }
    for n in &rest {
        if *n != domain && !n.ends_with(&format!(".{domain}")) {
            return Err(Error::msg(format!(
                "name {n:?} is not in the DNSimple domain {domain:?}"
            )));
        }
    }
    let www = format!("www.{domain}");
    if rest.contains(&domain) && rest.contains(&www.as_str()) {
        rest.retain(|n| *n != domain && *n != www);
        return Ok(("www".into(), rest.into_iter().map(str::to_string).collect()));
    }
    let first = rest.remove(0);
    let label = first.strip_suffix(&format!(".{domain}")).ok_or_else(|| {
        Error::msg(format!(
            "DNSimple cannot issue for the bare domain {domain:?} without www.{domain}"
        ))
        .with_hint(format!("list both {domain:?} and \"www.{domain}\""))
    })?;
    Ok((
        label.to_string(),
        rest.into_iter().map(str::to_string).collect(),
    ))
}

pub(crate) struct Dnsimple {
    cfg: DnsimpleIssuer,
    clock: Clock,
}

/// The order handle journalled for a DNSimple issuance (like an ACME order URL).
fn handle(id: u64) -> String {
    format!("dnsimple:certificate:{id}")
}

impl Dnsimple {
    pub(crate) fn new(cfg: &DnsimpleIssuer, clock: Clock) -> Dnsimple {
        Dnsimple {
            cfg: cfg.clone(),
            clock,
        }
    }

    /// Buy and issue (or resume the journalled purchase), wait up to `timeout` for
    /// `issued`, then download the chain and DNSimple's copy of the key. Still issuing after
    /// `timeout`: `Error::Pending` (the daemon checks again later; nothing is bought twice).
    pub(crate) async fn issue(
        &self,
        names: &[CertName],
        key_spec: KeySpec,
        resume: Option<&str>,
        on_order: &mut (dyn FnMut(&str) -> Result<()> + Send),
    ) -> Result<(Chain, SecretPem)> {
        let algorithm = signature_algorithm(key_spec)?;
        let client = Client::connect(&self.cfg.api, self.clock).await?;
        let base = client.domain_path(&self.cfg.domain);
        let resumed = resume
            .and_then(|r| r.strip_prefix("dnsimple:certificate:"))
            .and_then(|id| id.parse::<u64>().ok());
        let id = match resumed {
            Some(id) => {
                log::info!(issuer = "dnsimple", certificate = id; "resuming DNSimple certificate");
                id
            }
            None => self.buy(&client, &base, names, algorithm, on_order).await?,
        };
        self.wait_issued(&client, &base, id).await?;
        download(&client, &base, id).await
    }

    /// Buy a Let's Encrypt certificate for `names`, journal its id with `on_order`, and ask
    /// DNSimple to issue it.
    async fn buy(
        &self,
        client: &Client,
        base: &str,
        names: &[CertName],
        algorithm: &str,
        on_order: &mut (dyn FnMut(&str) -> Result<()> + Send),
    ) -> Result<u64> {
        let (name, alternate_names) = dnsimple_names(&self.cfg.domain, names)?;
        let body = json!({"name": name, "alternate_names": alternate_names, "signature_algorithm": algorithm, "auto_renew": false});
        let bought = client
            .call(
                reqwest::Method::POST,
                &format!("{base}/letsencrypt"),
                Some(body),
            )
            .await?;
        let id = bought["data"]["certificate_id"]
            .as_u64()
            .or_else(|| bought["data"]["id"].as_u64())
            .ok_or_else(|| Error::msg("DNSimple's purchase answer has no certificate id"))?;
        on_order(&handle(id))?;
        crate::failpoint_async!("after-order-created");
        client
            .call(
                reqwest::Method::POST,
                &format!("{base}/letsencrypt/{id}/issue"),
                None,
            )
            .await?;
        log::info!(issuer = "dnsimple", certificate = id, event = "ordered"; "bought and requested a Let's Encrypt certificate at DNSimple");
        Ok(id)
    }

    /// Poll certificate `id` with backoff until it is issued; `Error::Pending` when it is
    /// still issuing after the timeout.
    async fn wait_issued(&self, client: &Client, base: &str, id: u64) -> Result<()> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.cfg.timeout.0.max(1) as u64);
        let mut delay = Duration::from_millis(200);
        loop {
            let cert = client
                .call(reqwest::Method::GET, &format!("{base}/{id}"), None)
                .await?;
            let state = cert["data"]["state"]
                .as_str()
                .unwrap_or("unknown")
                .to_string();
            match state.as_str() {
                "issued" => return Ok(()),
                "failed" | "rejected" | "cancelled" | "refunded" => {
                    return Err(Error::msg(format!(
                        "DNSimple certificate {id} ended in state {state:?}"
                    ))
                    .with_hint("see the certificate in DNSimple's web interface"));
                }
                _ => {}
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(Error::Pending {
                    message: format!(
                        "DNSimple is still issuing certificate {id} (state {state:?})"
                    ),
                    retry_in: Some(300),
                    news: false,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

/// DNSimple's name for the key type; it issues only two.
fn signature_algorithm(key_spec: KeySpec) -> Result<&'static str> {
    match key_spec {
        KeySpec::EcdsaP256 => Ok("ECDSA"),
        KeySpec::Rsa2048 => Ok("RSA"),
        other => Err(Error::msg(format!(
            "DNSimple issues only ecdsa-p256 and rsa-2048 keys, not {other}"
        ))
        .with_hint("set key_type to \"ecdsa-p256\" or \"rsa-2048\"")),
    }
}

/// The issued chain of certificate `id` and DNSimple's copy of its key; `Error::Pending`
/// while DNSimple has not released them.
async fn download(client: &Client, base: &str, id: u64) -> Result<(Chain, SecretPem)> {
    let Some(download) = client
        .call_ready(reqwest::Method::GET, &format!("{base}/{id}/download"), None)
        .await?
    else {
        return Err(Error::Pending {
            message: format!("DNSimple has not released certificate {id} yet"),
            retry_in: Some(60),
            news: false,
        });
    };
    let Some(private) = client
        .call_ready(
            reqwest::Method::GET,
            &format!("{base}/{id}/private_key"),
            None,
        )
        .await?
    else {
        return Err(Error::Pending {
            message: format!("DNSimple has not released the key of certificate {id} yet"),
            retry_in: Some(60),
            news: false,
        });
    };
    let mut pem = download["data"]["server"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for c in download["data"]["chain"].as_array().into_iter().flatten() {
        pem.push_str(c.as_str().unwrap_or(""));
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
    }
    let chain = Chain::from_pem(pem.as_bytes())
        .map_err(|e| Error::msg(format!("DNSimple sent an unusable chain: {e}")))?;
    let key = SecretPem::new(
        private["data"]["private_key"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    );
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<CertName> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn names_map_to_dnsimple_name_and_alternates() {
        assert_eq!(
            dnsimple_names("a.test", &names(&["a.test", "www.a.test"])).unwrap(),
            ("www".into(), vec![])
        );
        assert_eq!(
            dnsimple_names("a.test", &names(&["www.a.test", "a.test", "api.a.test"])).unwrap(),
            ("www".into(), vec!["api.a.test".to_string()])
        );
        assert_eq!(
            dnsimple_names("a.test", &names(&["*.a.test"])).unwrap(),
            ("*".into(), vec![])
        );
        assert_eq!(
            dnsimple_names("a.test", &names(&["api.a.test"])).unwrap(),
            ("api".into(), vec![])
        );
        assert_eq!(
            dnsimple_names("a.test", &names(&["b.test"]))
                .unwrap_err()
                .to_string(),
            "name \"b.test\" is not in the DNSimple domain \"a.test\""
        );
        assert!(
            dnsimple_names("a.test", &names(&["a.test"]))
                .unwrap_err()
                .to_string()
                .contains("without www")
        );
    }
}
