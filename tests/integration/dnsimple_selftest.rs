//! Self-test of the fake DNSimple API in `tests/common/dnsimple.rs`: whoami and
//! authentication, the Let's Encrypt purchase → issue → poll → download/private_key flow
//! (chain, key match, SAN rules, key formats), renewals, 412/428/429/502 and other injected
//! errors, zone records with pagination and distribution, and the TXT mirror into a real
//! pebble-challtestsrv answered over DNS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::net::UdpSocket;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};

use common::*;

// ---------------------------------------------------------------------------------------------
// A small blocking client

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("HTTP {}: not JSON ({e}): {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

struct Api {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    token: String,
    account: u64,
    domain: String,
}

impl Api {
    fn new(fake: &FakeDnsimple) -> Api {
        Api {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base: fake.base_url(),
            token: fake.token().to_owned(),
            account: fake.account_id(),
            domain: fake.domain().to_owned(),
        }
    }

    /// `method` `base + path` with the fake's token.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.call_as(Some(&self.token.clone()), method, path, body)
    }

    fn call_as(&self, token: Option<&str>, method: &str, path: &str, body: Option<Value>) -> Resp {
        let url = format!("{}{path}", self.base);
        let mut b = self
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                &url,
            )
            .header("Accept", "application/json");
        if let Some(t) = token {
            b = b.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(v) = body {
            b = b
                .header("Content-Type", "application/json")
                .body(v.to_string());
        }
        self.rt.block_on(async {
            let rsp = b
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
            Resp {
                status: rsp.status().as_u16(),
                headers: rsp.headers().clone(),
                body: rsp.text().await.unwrap(),
            }
        })
    }

    fn certs(&self, rest: &str) -> String {
        format!(
            "/{}/domains/{}/certificates{rest}",
            self.account, self.domain
        )
    }

    fn records(&self, rest: &str) -> String {
        format!("/{}/zones/{}/records{rest}", self.account, self.domain)
    }

    /// Purchase with `body`, issue, poll until not `requesting`: (id, polls answered requesting).
    fn purchase_and_issue(&self, body: Value) -> (u64, usize) {
        let r = self.call("POST", &self.certs("/letsencrypt"), Some(body));
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.json()["data"]["certificate_id"].as_u64().unwrap();
        let r = self.call(
            "POST",
            &self.certs(&format!("/letsencrypt/{id}/issue")),
            None,
        );
        assert_eq!(r.status, 202, "{}", r.body);
        (id, self.poll(id))
    }

    /// Polls certificate `id` until its state is not `requesting`; returns the number of
    /// `requesting` answers.
    fn poll(&self, id: u64) -> usize {
        for n in 0..50 {
            let r = self.call("GET", &self.certs(&format!("/{id}")), None);
            assert_eq!(r.status, 200, "{}", r.body);
            if r.json()["data"]["state"] != "requesting" {
                assert_eq!(r.json()["data"]["state"], "issued", "{}", r.body);
                return n;
            }
        }
        panic!("certificate {id} still requesting after 50 polls");
    }

    /// (server PEM, chain PEMs, private key PEM) of an issued certificate.
    fn download(&self, id: u64) -> (String, Vec<String>, String) {
        let r = self.call("GET", &self.certs(&format!("/{id}/download")), None);
        assert_eq!(r.status, 200, "{}", r.body);
        let d = r.json()["data"].clone();
        assert_eq!(d["root"], Value::Null, "{d}");
        let chain = d["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        let k = self.call("GET", &self.certs(&format!("/{id}/private_key")), None);
        assert_eq!(k.status, 200, "{}", k.body);
        (
            d["server"].as_str().unwrap().to_owned(),
            chain,
            k.json()["data"]["private_key"].as_str().unwrap().to_owned(),
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fake(opts: FakeDnsimpleOpts) -> (FakeDnsimple, Api) {
    let fake = FakeDnsimple::start(opts);
    let api = Api::new(&fake);
    (fake, api)
}

/// Asserts `child` (PEM) is signed by `issuer` (PEM).
fn assert_signed_by(child: &str, issuer: &str) {
    let child_der = pem_to_der(child);
    let issuer_der = pem_to_der(issuer);
    let (_, c) = X509Certificate::from_der(&child_der).unwrap();
    let (_, i) = X509Certificate::from_der(&issuer_der).unwrap();
    assert_eq!(c.issuer(), i.subject());
    c.verify_signature(Some(i.public_key()))
        .unwrap_or_else(|e| panic!("{} not signed by {}: {e}", c.subject(), i.subject()));
}

fn common_name(der: &[u8]) -> String {
    let (_, c) = X509Certificate::from_der(der).unwrap();
    c.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn assert_rate_limit_headers(r: &Resp) {
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        let v = r
            .header(h)
            .unwrap_or_else(|| panic!("no {h} on {}", r.status));
        v.parse::<u64>().unwrap_or_else(|_| panic!("{h}: {v}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn whoami_authentication_and_rate_limit_headers() {
    let (fake, api) = fake(FakeDnsimpleOpts {
        account_id: 4242,
        ..FakeDnsimpleOpts::default()
    });
    let r1 = api.call("GET", "/whoami", None);
    assert_eq!(r1.status, 200, "{}", r1.body);
    assert_eq!(
        r1.header("content-type").unwrap(),
        "application/json; charset=utf-8"
    );
    let d = r1.json()["data"].clone();
    assert_eq!(d["user"], Value::Null);
    assert_eq!(d["account"]["id"], 4242);
    assert_eq!(d["account"]["plan_identifier"], "teams-v1-monthly");
    assert_rate_limit_headers(&r1);
    let r2 = api.call("GET", "/whoami", None);
    let remaining = |r: &Resp| {
        r.header("x-ratelimit-remaining")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(
        remaining(&r2),
        remaining(&r1) - 1,
        "X-RateLimit-Remaining decrements"
    );
    let reset: u64 = r1.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > unix_now(), "reset {reset} is in the future");

    let wrong = api.call_as(Some("not-the-token"), "GET", "/whoami", None);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.message(), "Authentication failed");
    assert_rate_limit_headers(&wrong);
    let none = api.call_as(None, "GET", "/whoami", None);
    assert_eq!(none.status, 401);
    let other_account = api.call("GET", "/1/zones/a.test/records", None);
    assert_eq!(other_account.status, 404, "{}", other_account.body);
    let other_domain = api.call("GET", "/4242/domains/b.test/certificates/1", None);
    assert_eq!(other_domain.status, 404, "{}", other_domain.body);
    assert_eq!(other_domain.message(), "Domain `b.test` not found");

    assert_eq!(
        fake.requests(),
        vec![
            "GET /v2/whoami -> 200",
            "GET /v2/whoami -> 200",
            "GET /v2/whoami -> 401",
            "GET /v2/whoami -> 401",
            "GET /v2/1/zones/a.test/records -> 404",
            "GET /v2/4242/domains/b.test/certificates/1 -> 404",
        ]
    );
    let rec = fake.recorded();
    assert_eq!(
        rec[0].header("authorization"),
        Some(format!("Bearer {}", fake.token()).as_str())
    );
}

#[test]
fn purchase_issue_poll_download_www() {
    let (fake, api) = fake(FakeDnsimpleOpts {
        polls_until_issued: 3,
        ..FakeDnsimpleOpts::default()
    });
    let r = api.call("POST", &api.certs("/letsencrypt"), Some(json!({})));
    assert_eq!(r.status, 201, "{}", r.body);
    let p = r.json()["data"].clone();
    assert_eq!(p["id"], 101967);
    assert_eq!(p["certificate_id"], 101967);
    assert_eq!(p["state"], "new");
    assert_eq!(p["auto_renew"], false);
    assert!(p["created_at"].as_str().unwrap().ends_with('Z'), "{p}");

    // Not issued yet: 428 on both.
    let d = api.call("GET", &api.certs("/101967/download"), None);
    assert_eq!(
        (d.status, d.message().as_str()),
        (428, "Certificate not issued")
    );
    let k = api.call("GET", &api.certs("/101967/private_key"), None);
    assert_eq!(
        (k.status, k.message().as_str()),
        (428, "Private key not present")
    );
    let g = api.call("GET", &api.certs("/101967"), None);
    assert_eq!(g.json()["data"]["state"], "new");

    // Issue (the dnsimple crate sends the JSON body `null`).
    let r = api.call(
        "POST",
        &api.certs("/letsencrypt/101967/issue"),
        Some(Value::Null),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let c = r.json()["data"].clone();
    assert_eq!(c["state"], "requesting");
    assert_eq!(c["csr"], Value::Null);
    assert_eq!(c["expires_at"], Value::Null);
    assert_eq!(c["expires_on"], Value::Null);
    assert_eq!(c["name"], "www");
    assert_eq!(c["common_name"], "www.a.test");
    assert_eq!(c["alternate_names"], json!([]));
    assert_eq!(c["authority_identifier"], "letsencrypt");
    assert_eq!(c["domain_id"], DNSIMPLE_DOMAIN_ID);
    let again = api.call("POST", &api.certs("/letsencrypt/101967/issue"), None);
    assert_eq!(again.status, 400, "issuing twice: {}", again.body);

    for _ in 0..3 {
        let g = api.call("GET", &api.certs("/101967"), None);
        assert_eq!(g.json()["data"]["state"], "requesting", "{}", g.body);
        let d = api.call("GET", &api.certs("/101967/download"), None);
        assert_eq!(d.status, 428, "download does not advance the state");
    }
    assert!(fake.issued().is_empty());
    let g = api.call("GET", &api.certs("/101967"), None);
    let c = g.json()["data"].clone();
    assert_eq!(c["state"], "issued", "{c}");
    assert!(
        c["csr"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
    );
    let expires_at = c["expires_at"].as_str().unwrap().to_owned();
    assert!(
        expires_at.starts_with(c["expires_on"].as_str().unwrap()),
        "{c}"
    );

    let (server, chain, key) = api.download(101967);
    let leaf_der = pem_to_der(&server);
    assert_eq!(
        spki_of_cert_der(&leaf_der),
        spki_of_key_pem(&key),
        "leaf matches key"
    );
    assert_eq!(san_dns_names(&leaf_der), vec!["a.test", "www.a.test"]);
    assert_eq!(common_name(&leaf_der), "www.a.test");
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0], fake.intermediate_pem());
    assert_signed_by(&server, &chain[0]);
    assert_signed_by(&chain[0], &fake.ca());
    assert_signed_by(&fake.ca(), &fake.ca());

    // Validity: 90 days from a backdated notBefore; expires_at = notAfter.
    let (nb, na) = cert_validity(&leaf_der);
    assert_eq!(
        na.duration_since(nb).unwrap(),
        Duration::from_secs(90 * 86400)
    );
    let issued = fake.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].id, 101967);
    assert_eq!(issued[0].names, vec!["a.test", "www.a.test"]);
    assert_eq!(issued[0].cert_pem, server);
    assert_eq!(issued[0].key_pem, key);
    assert_eq!(issued[0].not_after, na);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    assert_eq!(
        time::OffsetDateTime::from(na).format(&fmt).unwrap(),
        expires_at
    );

    // Stays issued; list shows it; unknown ids are 404 with DNSimple's message.
    let g = api.call("GET", &api.certs("/101967"), None);
    assert_eq!(g.json()["data"]["state"], "issued");
    let l = api.call("GET", &api.certs(""), None);
    assert_eq!(l.json()["data"][0]["id"], 101967, "{}", l.body);
    assert_eq!(l.json()["pagination"]["total_entries"], 1);
    let by_id = api.call(
        "GET",
        &format!(
            "/{}/domains/{}/certificates/101967",
            api.account, DNSIMPLE_DOMAIN_ID
        ),
        None,
    );
    assert_eq!(by_id.status, 200, "domain id in place of the name");
    for path in ["/999", "/999/download", "/999/private_key"] {
        let r = api.call("GET", &api.certs(path), None);
        assert_eq!(
            (r.status, r.message().as_str()),
            (404, "Certificate `999` not found")
        );
    }
    let r = api.call("POST", &api.certs("/letsencrypt/999/issue"), None);
    assert_eq!(
        (r.status, r.message().as_str()),
        (404, "Certificate `999` not found")
    );

    fake.remove_private_key(101967);
    let k = api.call("GET", &api.certs("/101967/private_key"), None);
    assert_eq!(
        (k.status, k.message().as_str()),
        (428, "Private key not present")
    );
}

#[test]
fn names_wildcard_rsa_and_key_formats() {
    let (fake, api) = fake(FakeDnsimpleOpts {
        polls_until_issued: 0,
        ..FakeDnsimpleOpts::default()
    });
    // Wildcard + apex, RSA: PKCS#1 key of 2048 bits.
    let (id, polls) = api.purchase_and_issue(json!({
        "name": "*", "alternate_names": ["a.test"], "signature_algorithm": "RSA", "auto_renew": false
    }));
    assert_eq!(polls, 0, "polls_until_issued = 0: the first poll is issued");
    let (server, _, key) = api.download(id);
    let der = pem_to_der(&server);
    assert_eq!(san_dns_names(&der), vec!["*.a.test", "a.test"]);
    assert_eq!(common_name(&der), "*.a.test");
    assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{key}");
    assert_eq!(spki_of_cert_der(&der), spki_of_key_pem(&key));
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    match cert.public_key().parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
        other => panic!("not RSA: {other:?}"),
    }
    let c = api.call("GET", &api.certs(&format!("/{id}")), None).json()["data"].clone();
    assert_eq!(c["common_name"], "*.a.test");
    assert_eq!(c["alternate_names"], json!(["a.test"]));

    // A custom name plus alternate names (full names), ECDSA P-256.
    let (id2, _) = api.purchase_and_issue(json!({
        "name": "api", "alternate_names": ["b.a.test", "api.a.test"]
    }));
    assert_eq!(id2, id + 1, "ids increment");
    let (server, _, key) = api.download(id2);
    let der = pem_to_der(&server);
    assert_eq!(san_dns_names(&der), vec!["api.a.test", "b.a.test"]);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(matches!(
        cert.public_key().parsed().unwrap(),
        x509_parser::public_key::PublicKey::EC(_)
    ));
    assert_eq!(spki_of_cert_der(&der), spki_of_key_pem(&key));

    // Names outside the domain and unknown algorithms are validation errors.
    let r = api.call(
        "POST",
        &api.certs("/letsencrypt"),
        Some(json!({"alternate_names": ["www.other.test"]})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.message(), "Validation failed");
    assert!(
        r.json()["errors"]["alternate_names"].is_array(),
        "{}",
        r.body
    );
    let r = api.call(
        "POST",
        &api.certs("/letsencrypt"),
        Some(json!({"signature_algorithm": "DSA"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(fake.issued().len(), 2);

    // PKCS#8 on request.
    let f8 = FakeDnsimple::start(FakeDnsimpleOpts {
        polls_until_issued: 0,
        key_format: KeyFormat::Pkcs8,
        ..FakeDnsimpleOpts::default()
    });
    let a8 = Api::new(&f8);
    for sig in ["ECDSA", "RSA"] {
        let (id, _) = a8.purchase_and_issue(json!({"signature_algorithm": sig}));
        let (server, _, key) = a8.download(id);
        assert!(
            key.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{sig}: {key}"
        );
        assert_eq!(
            spki_of_cert_der(&pem_to_der(&server)),
            spki_of_key_pem(&key)
        );
    }
}

#[test]
fn renewal_creates_a_new_certificate_and_key() {
    let (fake, api) = fake(FakeDnsimpleOpts {
        polls_until_issued: 1,
        ..FakeDnsimpleOpts::default()
    });
    let (old, polls) = api.purchase_and_issue(json!({"name": "www"}));
    assert_eq!(polls, 1);
    let (old_server, _, old_key) = api.download(old);

    let r = api.call(
        "POST",
        &api.certs(&format!("/letsencrypt/{old}/renewals")),
        Some(json!({"auto_renew": false})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let ren = r.json()["data"].clone();
    assert_eq!(ren["id"], 65082);
    assert_eq!(ren["old_certificate_id"], old);
    assert_eq!(ren["state"], "new");
    let new = ren["new_certificate_id"].as_u64().unwrap();
    assert_eq!(new, old + 1);

    let wrong = api.call(
        "POST",
        &api.certs(&format!("/letsencrypt/{old}/renewals/99/issue")),
        None,
    );
    assert_eq!(wrong.status, 404, "{}", wrong.body);
    let r = api.call(
        "POST",
        &api.certs(&format!("/letsencrypt/{old}/renewals/65082/issue")),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let c = r.json()["data"].clone();
    assert_eq!(c["id"], new);
    assert_eq!(c["state"], "requesting");
    assert_eq!(c["common_name"], "www.a.test");
    assert_eq!(api.poll(new), 1);
    let (new_server, _, new_key) = api.download(new);
    assert_ne!(new_server, old_server);
    assert_ne!(
        spki_of_key_pem(&new_key),
        spki_of_key_pem(&old_key),
        "a fresh key"
    );
    assert_eq!(
        spki_of_cert_der(&pem_to_der(&new_server)),
        spki_of_key_pem(&new_key)
    );
    assert_eq!(
        san_dns_names(&pem_to_der(&new_server)),
        vec!["a.test", "www.a.test"]
    );
    // The old one is still there.
    assert_eq!(api.download(old).0, old_server);
    assert_eq!(
        fake.issued().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![old, new]
    );

    // A renewal of a certificate that is not issued is refused.
    let r = api.call("POST", &api.certs("/letsencrypt"), None);
    let pending = r.json()["data"]["id"].as_u64().unwrap();
    let r = api.call(
        "POST",
        &api.certs(&format!("/letsencrypt/{pending}/renewals")),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn final_state_failed() {
    let (fake, api) = fake(FakeDnsimpleOpts {
        polls_until_issued: 1,
        ..FakeDnsimpleOpts::default()
    });
    fake.set_final_state("failed");
    let r = api.call("POST", &api.certs("/letsencrypt"), None);
    let id = r.json()["data"]["id"].as_u64().unwrap();
    api.call(
        "POST",
        &api.certs(&format!("/letsencrypt/{id}/issue")),
        None,
    );
    let states: Vec<Value> = (0..3)
        .map(|_| {
            api.call("GET", &api.certs(&format!("/{id}")), None).json()["data"]["state"].clone()
        })
        .collect();
    assert_eq!(states, vec!["requesting", "failed", "failed"]);
    assert_eq!(fake.certificate_state(id).as_deref(), Some("failed"));
    let d = api.call("GET", &api.certs(&format!("/{id}/download")), None);
    assert_eq!(d.status, 428);
    assert!(fake.issued().is_empty());
}

#[test]
fn letsencrypt_disabled_is_412() {
    let (fake, api) = fake(FakeDnsimpleOpts {
        letsencrypt_enabled: false,
        ..FakeDnsimpleOpts::default()
    });
    let r = api.call(
        "POST",
        &api.certs("/letsencrypt"),
        Some(json!({"name": "www"})),
    );
    assert_eq!(r.status, 412, "{}", r.body);
    assert!(
        r.message()
            .starts_with("Let's Encrypt feature is not enabled for the account "),
        "{}",
        r.body
    );
    assert_rate_limit_headers(&r);
    let r = api.call("POST", &api.certs("/letsencrypt/101967/issue"), None);
    assert_eq!(r.status, 412, "{}", r.body);
    // Reads still work; switching the feature on lets the purchase through.
    assert_eq!(api.call("GET", "/whoami", None).status, 200);
    fake.set_letsencrypt_enabled(true);
    let r = api.call("POST", &api.certs("/letsencrypt"), None);
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn injected_errors() {
    let (fake, api) = fake(FakeDnsimpleOpts::default());

    // 429: rate-limit headers with Remaining 0 and Reset = now + 2; no side effects.
    fake.fail_next(429, 1);
    let before = unix_now();
    let r = api.call("POST", &api.certs("/letsencrypt"), None);
    assert_eq!(r.status, 429);
    assert_eq!(r.message(), "quota exceeded");
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some("2400"));
    let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(
        (before + 1..=unix_now() + 2).contains(&reset),
        "reset {reset}, now {before}"
    );
    let r = api.call("POST", &api.certs("/letsencrypt"), None);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.json()["data"]["id"],
        101967,
        "the 429'd purchase created nothing"
    );

    // 502: nginx's HTML page, twice, then normal again.
    fake.fail_next(502, 2);
    for _ in 0..2 {
        let r = api.call("GET", "/whoami", None);
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-type").as_deref(), Some("text/html"));
        assert!(
            r.body.contains("<title>502 Bad Gateway</title>"),
            "{}",
            r.body
        );
        assert!(r.header("x-ratelimit-remaining").is_none());
    }
    assert_eq!(api.call("GET", "/whoami", None).status, 200);

    // The documented JSON bodies.
    for (status, message) in [
        (401, "Authentication failed"),
        (404, "Not Found"),
        (428, "Certificate not issued"),
        (504, "Could not query zone, connection timed out"),
    ] {
        fake.fail_next(status, 1);
        let r = api.call("GET", "/whoami", None);
        assert_eq!((r.status, r.message().as_str()), (status, message));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json; charset=utf-8")
        );
        assert_rate_limit_headers(&r);
    }
    fake.fail_next(412, 1);
    let r = api.call("GET", "/whoami", None);
    assert_eq!(r.status, 412);
    assert!(
        r.message()
            .starts_with("Let's Encrypt feature is not enabled"),
        "{}",
        r.body
    );

    // fail_matching hits only matching requests.
    fake.fail_matching("GET", "/download", 502, 1);
    assert_eq!(api.call("GET", "/whoami", None).status, 200);
    let r = api.call("GET", &api.certs("/101967/download"), None);
    assert_eq!(r.status, 502);
    let r = api.call("GET", &api.certs("/101967/download"), None);
    assert_eq!(r.status, 428, "{}", r.body);

    let injected: Vec<u16> = fake
        .recorded()
        .iter()
        .filter(|r| r.injected)
        .map(|r| r.status)
        .collect();
    assert_eq!(injected, vec![429, 502, 502, 401, 404, 428, 504, 412, 502]);
    assert!(
        fake.requests()[0]
            .starts_with("POST /v2/1010/domains/a.test/certificates/letsencrypt -> 429")
    );
}

#[test]
fn zone_records_crud_pagination_distribution() {
    let (fake, api) = fake(FakeDnsimpleOpts::default());
    let r = api.call(
        "POST",
        &api.records(""),
        Some(json!({"name": "_acme-challenge", "type": "TXT", "content": "token-1", "ttl": 60})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let rec = r.json()["data"].clone();
    let id = rec["id"].as_u64().unwrap();
    assert_eq!(rec["zone_id"], "a.test");
    assert_eq!(rec["parent_id"], Value::Null);
    assert_eq!(rec["name"], "_acme-challenge");
    assert_eq!(rec["content"], "token-1");
    assert_eq!(rec["ttl"], 60);
    assert_eq!(rec["priority"], Value::Null);
    assert_eq!(rec["type"], "TXT");
    assert_eq!(rec["regions"], json!(["global"]));
    assert_eq!(rec["system_record"], false);
    let r2 = api.call(
        "POST",
        &api.records(""),
        Some(json!({"name": "_acme-challenge.www", "type": "TXT", "content": "token-2"})),
    );
    assert_eq!(r2.json()["data"]["ttl"], 3600, "default TTL");
    let id2 = r2.json()["data"]["id"].as_u64().unwrap();
    assert!(id2 > id);
    let bad = api.call(
        "POST",
        &api.records(""),
        Some(json!({"type": "TXT", "content": "x"})),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Filters.
    let l = api.call("GET", &api.records("?name=_acme-challenge&type=TXT"), None);
    assert_eq!(l.status, 200);
    let data = l.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 1, "{}", l.body);
    assert_eq!(data[0]["id"], id);
    assert_eq!(l.json()["pagination"]["total_entries"], 1);
    let l = api.call("GET", &api.records("?name_like=acme"), None);
    assert_eq!(l.json()["data"].as_array().unwrap().len(), 2);
    // Unfiltered: the 5 system records + 2, paginated.
    let l = api.call("GET", &api.records(""), None);
    assert_eq!(
        l.json()["pagination"],
        json!({"current_page": 1, "per_page": 30, "total_entries": 7, "total_pages": 1})
    );
    assert_eq!(l.json()["data"][0]["type"], "SOA");
    assert_eq!(l.json()["data"][0]["system_record"], true);
    let l = api.call("GET", &api.records("?page=3&per_page=3"), None);
    let data = l.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], id2);
    assert_eq!(l.json()["pagination"]["total_pages"], 3);

    // Get, distribution.
    let g = api.call("GET", &api.records(&format!("/{id}")), None);
    assert_eq!(g.json()["data"]["content"], "token-1");
    fake.set_undistributed(2);
    let dist: Vec<Value> = (0..3)
        .map(|_| {
            api.call("GET", &api.records(&format!("/{id}/distribution")), None)
                .json()["data"]["distributed"]
                .clone()
        })
        .collect();
    assert_eq!(dist, vec![json!(false), json!(false), json!(true)]);
    assert_eq!(
        fake.txt_records(),
        vec![
            ("_acme-challenge".to_owned(), "token-1".to_owned()),
            ("_acme-challenge.www".to_owned(), "token-2".to_owned()),
        ]
    );

    // Delete.
    let d = api.call("DELETE", &api.records(&format!("/{id}")), None);
    assert_eq!(d.status, 204);
    assert!(d.body.is_empty());
    assert!(d.header("content-type").is_none());
    assert_rate_limit_headers(&d);
    let d = api.call("DELETE", &api.records(&format!("/{id}")), None);
    assert_eq!(
        (d.status, d.message()),
        (404, format!("Record `{id}` not found"))
    );
    let d = api.call("GET", &api.records(&format!("/{id}/distribution")), None);
    assert_eq!(d.status, 404);
    let d = api.call("DELETE", &api.records("/1"), None);
    assert_eq!(d.status, 400, "system records stay: {}", d.body);
    assert_eq!(
        fake.txt_records(),
        vec![("_acme-challenge.www".to_owned(), "token-2".to_owned())]
    );
    assert_eq!(fake.txt_history().len(), 2);
    let z = api.call(
        "GET",
        &format!("/{}/zones/other.test/records", api.account),
        None,
    );
    assert_eq!(
        (z.status, z.message().as_str()),
        (404, "Zone `other.test` not found")
    );
}

// ---------------------------------------------------------------------------------------------
// DNS (a minimal UDP client, enough for challtestsrv's TXT answers)

/// TXT values at `name` according to the DNS server at `server` (one string per record, the
/// record's character-strings concatenated).
fn dns_txt(server: &str, name: &str) -> Vec<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let id: u16 = rand::random();
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 16, 0, 1]); // root, TXT, IN
    let mut buf = [0u8; 4096];
    for _attempt in 0..5 {
        sock.send_to(&q, server).unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let m = &buf[..n];
        if n < 12 || m[0..2] != id.to_be_bytes() {
            continue;
        }
        assert!(m[2] & 0x80 != 0, "not a response");
        assert_eq!(m[3] & 0x0f, 0, "rcode {} for {name}", m[3] & 0x0f);
        let qd = u16::from_be_bytes([m[4], m[5]]);
        let an = u16::from_be_bytes([m[6], m[7]]);
        let mut p = 12;
        let skip_name = |mut p: usize| -> usize {
            loop {
                let l = m[p];
                if l & 0xc0 == 0xc0 {
                    return p + 2;
                }
                if l == 0 {
                    return p + 1;
                }
                p += 1 + usize::from(l);
            }
        };
        for _ in 0..qd {
            p = skip_name(p) + 4;
        }
        let mut out = Vec::new();
        for _ in 0..an {
            p = skip_name(p);
            let rtype = u16::from_be_bytes([m[p], m[p + 1]]);
            let rdlen = usize::from(u16::from_be_bytes([m[p + 8], m[p + 9]]));
            let rdata = &m[p + 10..p + 10 + rdlen];
            p += 10 + rdlen;
            if rtype != 16 {
                continue;
            }
            let mut value = Vec::new();
            let mut i = 0;
            while i < rdata.len() {
                let l = usize::from(rdata[i]);
                value.extend_from_slice(&rdata[i + 1..i + 1 + l]);
                i += 1 + l;
            }
            out.push(String::from_utf8(value).unwrap());
        }
        out.sort();
        return out;
    }
    panic!("no DNS answer from {server} for {name}");
}

#[test]
fn txt_records_are_mirrored_to_challtestsrv() {
    let pebble = Pebble::start(PebbleOpts::default());
    let (fake, api) = fake(FakeDnsimpleOpts {
        challtestsrv: Some(pebble.challtestsrv_url()),
        ..FakeDnsimpleOpts::default()
    });
    let dns = pebble.dns_addr();
    let host = "_acme-challenge.a.test.";
    assert!(dns_txt(&dns, host).is_empty());

    let create = |name: &str, content: &str| {
        let r = api.call(
            "POST",
            &api.records(""),
            Some(json!({"name": name, "type": "TXT", "content": content, "ttl": 60})),
        );
        assert_eq!(r.status, 201, "{}\n{}", r.body, fake.log());
        r.json()["data"]["id"].as_u64().unwrap()
    };
    let delete = |id: u64| {
        let r = api.call("DELETE", &api.records(&format!("/{id}")), None);
        assert_eq!(r.status, 204, "{}\n{}", r.body, fake.log());
    };

    // Wildcard + apex order: two values at the same name.
    let a = create("_acme-challenge", "value-apex");
    assert_eq!(dns_txt(&dns, host), vec!["value-apex"]);
    let b = create("_acme-challenge", "value-wildcard");
    assert_eq!(dns_txt(&dns, host), vec!["value-apex", "value-wildcard"]);
    // Apex name and a mixed-case name (challtestsrv's lookup is case-sensitive: mirrored
    // lower-case).
    let c = create("", "at-the-apex");
    assert_eq!(dns_txt(&dns, "a.test."), vec!["at-the-apex"]);
    let d = create("_ACME-challenge.WWW", "www-value");
    assert_eq!(
        dns_txt(&dns, "_acme-challenge.www.a.test."),
        vec!["www-value"]
    );
    // An A record is not mirrored as TXT.
    let r = api.call(
        "POST",
        &api.records(""),
        Some(json!({"name": "x", "type": "A", "content": "127.0.0.1"})),
    );
    assert_eq!(r.status, 201);

    delete(a);
    assert_eq!(
        dns_txt(&dns, host),
        vec!["value-wildcard"],
        "the other value stays"
    );
    let e = create("_acme-challenge", "value-again");
    assert_eq!(dns_txt(&dns, host), vec!["value-again", "value-wildcard"]);
    delete(b);
    delete(e);
    assert!(dns_txt(&dns, host).is_empty(), "gone after delete");
    delete(c);
    delete(d);
    assert!(dns_txt(&dns, "a.test.").is_empty());
    assert!(dns_txt(&dns, "_acme-challenge.www.a.test.").is_empty());
    assert!(fake.txt_records().is_empty());
    assert_eq!(fake.txt_history().len(), 5);

    // A challtestsrv that is gone makes the create fail loudly (500), not silently.
    drop(pebble);
    let r = api.call(
        "POST",
        &api.records(""),
        Some(json!({"name": "_acme-challenge", "type": "TXT", "content": "late"})),
    );
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.message().contains("challtestsrv"), "{}", r.body);
}
