//! Self-test of the ARI/CRL test front in `tests/common/front.rs`: the RFC 9773 CertID, an
//! ACME order through the front against a real Pebble 2.4.0, renewalInfo, `replaces` with
//! `alreadyReplaced`, and CRL publication.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{
    Account, BodyWrapper, BytesResponse, CertificateIdentifier, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use common::*;

/// RFC 9773 Appendix A: the example certificate and its CertID.
const RFC9773_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBQzCB66ADAgECAgUAh2VDITAKBggqhkjOPQQDAjAVMRMwEQYDVQQDEwpFeGFt
cGxlIENBMCIYDzAwMDEwMTAxMDAwMDAwWhgPMDAwMTAxMDEwMDAwMDBaMBYxFDAS
BgNVBAMTC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeBZu
7cbpAYNXZLbbh8rNIzuOoqOOtmxA1v7cRm//AwyMwWxyHz4zfwmBhcSrf47NUAFf
qzLQ2PPQxdTXREYEnKMjMCEwHwYDVR0jBBgwFoAUaYhba4dGQEHhs3uEe6CuLN4B
yNQwCgYIKoZIzj0EAwIDRwAwRAIge09+S5TZAlw5tgtiVvuERV6cT4mfutXIlwTb
+FYN/8oCIClDsqBklhB9KAelFiYt9+6FDj3z4KGVelYM5MdsO3pK
-----END CERTIFICATE-----
";
const RFC9773_CERT_ID: &str = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE";

#[test]
fn cert_id_matches_rfc9773_appendix_a() {
    assert_eq!(cert_id(&pem_to_der(RFC9773_CERT)), RFC9773_CERT_ID);
}

/// instant-acme over reqwest, trusting one PEM bundle (the main crate builds instant-acme
/// without its hyper client, so `Account::builder_with_root` is not available).
struct ReqwestHttp(reqwest::Client);

impl ReqwestHttp {
    fn new(ca_bundle: &std::path::Path) -> ReqwestHttp {
        let pem = std::fs::read(ca_bundle).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        ReqwestHttp(client)
    }
}

impl HttpClient for ReqwestHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let other = |e: String| instant_acme::Error::Other(e.into());
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map_err(|e| other(format!("{e:?}")))?;
            let req = reqwest::Request::try_from(http::Request::from_parts(parts, body.to_bytes()))
                .map_err(|e| other(e.to_string()))?;
            let rsp = client
                .execute(req)
                .await
                .map_err(|e| other(format!("{e:?}")))?;
            let mut builder = http::Response::builder().status(rsp.status());
            *builder.headers_mut().unwrap() = rsp.headers().clone();
            let body = rsp.bytes().await.map_err(|e| other(format!("{e:?}")))?;
            Ok(BytesResponse::from(builder.body(Full::new(body)).unwrap()))
        })
    }
}

/// Status, headers and body of a GET (HTTPS trusting `ca`, or plain HTTP).
async fn get(url: &str, ca: Option<&std::path::Path>) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
    }
    let rsp = builder.build().unwrap().get(url).send().await.unwrap();
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    (status, headers, rsp.bytes().await.unwrap().to_vec())
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Runs one order for `a.test` to completion (Pebble validates everything) and returns the
/// DER leaf and the order's `replaces` as last fetched, or the error of `new_order`.
async fn order(
    account: &Account,
    new: &NewOrder<'_>,
) -> Result<(Vec<u8>, Option<String>), instant_acme::Error> {
    order_with_profile(account, new)
        .await
        .map(|(leaf, replaces, _)| (leaf, replaces))
}

/// `order`, also returning the order's `profile` as last fetched.
async fn order_with_profile(
    account: &Account,
    new: &NewOrder<'_>,
) -> Result<(Vec<u8>, Option<String>, Option<String>), instant_acme::Error> {
    let mut order = account.new_order(new).await?;
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.unwrap();
        let mut challenge = authz.challenge(ChallengeType::Http01).unwrap();
        challenge.set_ready().await.unwrap();
    }
    let retry = RetryPolicy::new().timeout(Duration::from_secs(20));
    assert_eq!(order.poll_ready(&retry).await.unwrap(), OrderStatus::Ready);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap();
    order.finalize_csr(csr.der()).await.unwrap();
    let chain = order.poll_certificate(&retry).await.unwrap();
    let replaces = order.state().replaces.as_ref().map(|c| c.to_string());
    let profile = order.state().profile.clone();
    Ok((pem_to_der(&chain), replaces, profile))
}

#[test]
fn ari_and_replaces_through_the_front_with_pebble() {
    let started = std::time::Instant::now();
    let pebble = Pebble::start(PebbleOpts {
        always_valid: true,
        ..PebbleOpts::default()
    });
    // 2023-11-14T22:13:20Z .. 2023-11-15T22:13:20Z
    let window = (1_700_000_000, 1_700_086_400);
    let front = Front::start(
        &pebble,
        FrontOpts {
            window: Some(window),
            retry_after: 4321,
            already_replaced: 2,
            ..FrontOpts::default()
        },
    );
    let origin = front.directory_url().trim_end_matches("/dir").to_owned();
    let ca = front.ca_bundle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The directory points at the front only (Host preserved → Pebble's URLs are ours).
        let (status, _, body) = get(&front.directory_url(), Some(&ca)).await;
        assert_eq!(status, 200, "{}", front.log());
        let dir = json(&body);
        assert_eq!(
            dir["renewalInfo"],
            format!("{origin}/renewal-info"),
            "{dir}"
        );
        for k in [
            "newAccount",
            "newNonce",
            "newOrder",
            "revokeCert",
            "keyChange",
        ] {
            let url = dir[k].as_str().unwrap();
            assert!(url.starts_with(&format!("{origin}/")), "{k} = {url}");
        }

        let (account, _) = Account::builder_with_http(Box::new(ReqwestHttp::new(&ca)))
            .create(
                &NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                front.directory_url(),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("account: {e}\n{}", front.log()));
        assert!(
            account.id().starts_with(&format!("{origin}/")),
            "{}",
            account.id()
        );

        let ids = [Identifier::Dns("a.test".to_owned())];
        let (leaf, _) = order(&account, &NewOrder::new(&ids))
            .await
            .unwrap_or_else(|e| panic!("first order: {e}\n{}", front.log()));
        assert_eq!(san_dns_names(&leaf), ["a.test"]);

        // The CertID of a Pebble leaf: the intermediate's SKI, the raw serial.
        let cid = cert_id(&leaf);
        let (aki, serial) = cid.split_once('.').unwrap();
        let inter_der = pem_to_der(&pebble.intermediate_pem());
        let (_, inter) = x509_parser::parse_x509_certificate(&inter_der).unwrap();
        let ski = inter
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(aki).unwrap(), ski);
        let serial = URL_SAFE_NO_PAD.decode(serial).unwrap();
        assert_eq!(
            hex::encode(serial).trim_start_matches('0'),
            cert_serial_hex(&leaf)
        );

        // renewalInfo: the configured window, Retry-After, the CertID recorded.
        let (status, headers, body) = get(&format!("{origin}/renewal-info/{cid}"), Some(&ca)).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["retry-after"], "4321");
        let ri = json(&body);
        assert_eq!(
            ri["suggestedWindow"]["start"], "2023-11-14T22:13:20Z",
            "{ri}"
        );
        assert_eq!(ri["suggestedWindow"]["end"], "2023-11-15T22:13:20Z", "{ri}");
        assert_eq!(front.renewal_info_requests(), std::slice::from_ref(&cid));

        // Switched off at runtime: gone from the directory, 404; back on again.
        front.set_window(None);
        let (_, _, body) = get(&front.directory_url(), Some(&ca)).await;
        assert!(json(&body).get("renewalInfo").is_none());
        let (status, _, _) = get(&format!("{origin}/renewal-info/{cid}"), Some(&ca)).await;
        assert_eq!(status, 404);
        front.set_window(Some(window));

        let (_, _, body) = get(&front.directory_url(), Some(&ca)).await;
        assert!(json(&body).get("renewalInfo").is_some());

        // alreadyReplaced comes from the front (no signature check), with a fresh nonce.
        let orders_before = pebble.orders_created();
        let payload = URL_SAFE_NO_PAD.encode(br#"{"identifiers":[],"replaces":"x.y"}"#);
        let rsp = reqwest::Client::builder()
            .tls_certs_only(
                reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca).unwrap()).unwrap(),
            )
            .build()
            .unwrap()
            .post(dir["newOrder"].as_str().unwrap())
            .header("content-type", "application/jose+json")
            .body(format!(
                r#"{{"protected":"e30","payload":"{payload}","signature":"AA"}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 409);
        assert_eq!(rsp.headers()["content-type"], "application/problem+json");
        assert!(!rsp.headers()["replay-nonce"].is_empty());
        let problem = json(&rsp.bytes().await.unwrap());
        assert_eq!(
            problem["type"],
            "urn:ietf:params:acme:error:alreadyReplaced"
        );
        assert_eq!(problem["status"], 409);

        let quoted = format!("\"{cid}\"");
        let replaces: CertificateIdentifier<'_> = serde_json::from_str(&quoted).unwrap();
        let err = order(&account, &NewOrder::new(&ids).replaces(replaces.clone()))
            .await
            .expect_err("first replacement must be refused");
        match err {
            instant_acme::Error::Api(p) => {
                assert_eq!(
                    p.r#type.as_deref(),
                    Some("urn:ietf:params:acme:error:alreadyReplaced")
                );
                assert_eq!(p.status, Some(409));
            }
            e => panic!("expected alreadyReplaced, got {e}\n{}", front.log()),
        }
        assert_eq!(
            pebble.orders_created(),
            orders_before,
            "409 must not reach Pebble"
        );
        // Budget used up: forwarded, `replaces` echoed (instant-acme checks), issued.
        let (leaf2, echoed) = order(&account, &NewOrder::new(&ids).replaces(replaces))
            .await
            .unwrap_or_else(|e| panic!("second replacement: {e}\n{}", front.log()));
        assert_ne!(cert_id(&leaf2), cid);
        assert_eq!(echoed.as_deref(), Some(cid.as_str()), "echo after refresh");
        assert_eq!(pebble.orders_created(), orders_before + 1);
        assert_eq!(
            front.replaces_seen(),
            [
                None,
                Some("x.y".to_owned()),
                Some(cid.clone()),
                Some(cid.clone())
            ]
        );
    });
    eprintln!("ARI self-test took {:?}", started.elapsed());
}

/// A new account at the front.
async fn account_at(front: &Front) -> Account {
    Account::builder_with_http(Box::new(ReqwestHttp::new(&front.ca_bundle())))
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            front.directory_url(),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("account: {e}\n{}", front.log()))
        .0
}

fn lifetime_secs(leaf: &[u8]) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

#[test]
fn profiles_are_advertised_checked_recorded_and_echoed() {
    const DAYS_45: u64 = 45 * 86_400;
    let pebble = Pebble::start(PebbleOpts {
        always_valid: true,
        validity_period_secs: Some(DAYS_45),
        ..PebbleOpts::default()
    });
    let front = Front::start(
        &pebble,
        FrontOpts {
            profiles: FrontProfile::lets_encrypt(),
            ..FrontOpts::default()
        },
    );
    let bare = Front::start(&pebble, FrontOpts::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_, _, body) = get(&front.directory_url(), Some(&front.ca_bundle())).await;
        let dir = json(&body);
        assert_eq!(
            dir["meta"]["profiles"]["tlsserver"], "45-day certificates without a common name",
            "{dir}"
        );
        let (_, _, body) = get(&bare.directory_url(), Some(&bare.ca_bundle())).await;
        assert!(json(&body)["meta"].get("profiles").is_none());

        let account = account_at(&front).await;
        let mut offered: Vec<&str> = account.profiles().map(|p| p.name).collect();
        offered.sort();
        assert_eq!(offered, ["classic", "shortlived", "tlsserver"]);
        let ids = [Identifier::Dns("a.test".to_owned())];

        // Offered, and the lifetime of the Pebble behind: issued, echoed, 45 days.
        let before = pebble.orders_created();
        let (leaf, _, profile) =
            order_with_profile(&account, &NewOrder::new(&ids).profile("tlsserver"))
                .await
                .unwrap_or_else(|e| panic!("tlsserver: {e}\n{}", front.log()));
        assert_eq!(profile.as_deref(), Some("tlsserver"), "{}", front.log());
        assert!(
            (lifetime_secs(&leaf) - DAYS_45 as i64).abs() <= 60,
            "{}",
            lifetime_secs(&leaf)
        );
        assert_eq!(pebble.orders_created(), before + 1);

        // Not offered, or offered with another lifetime than Pebble's: invalidProfile, 400,
        // nothing reaches Pebble.
        for (name, detail) in [
            ("bogus", "profile \"bogus\" is not offered"),
            (
                "classic",
                "profile \"classic\" issues 7776000-second certificates",
            ),
        ] {
            let err = account
                .new_order(&NewOrder::new(&ids).profile(name))
                .await
                .map(|_| ())
                .expect_err(name);
            match err {
                instant_acme::Error::Api(p) => {
                    assert_eq!(
                        p.r#type.as_deref(),
                        Some("urn:ietf:params:acme:error:invalidProfile")
                    );
                    assert_eq!(p.status, Some(400));
                    assert!(p.detail.as_deref().unwrap().starts_with(detail), "{p:?}");
                }
                e => panic!("expected invalidProfile, got {e}\n{}", front.log()),
            }
        }
        assert_eq!(pebble.orders_created(), before + 1, "{}", front.log());
        // Without a profile: Pebble's default, no echo.
        let (_, _, profile) = order_with_profile(&account, &NewOrder::new(&ids))
            .await
            .unwrap();
        assert_eq!(profile, None);
        assert_eq!(
            front.profiles_seen(),
            [
                Some("tlsserver".to_owned()),
                Some("bogus".to_owned()),
                Some("classic".to_owned()),
                None
            ]
        );
        // A front without profiles refuses any.
        let account = account_at(&bare).await;
        assert_eq!(account.profiles().count(), 0);
        let err = account
            .new_order(&NewOrder::new(&ids).profile("tlsserver"))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("invalidProfile"), "{err}");
    });
}

#[test]
fn crl_is_served_and_fetches_are_counted() {
    let pebble = Pebble::start(PebbleOpts::default());
    let front = Front::start(&pebble, FrontOpts::default());

    // A CRL issuer and one revoked serial.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "front CRL test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let issuer = rcgen::Issuer::new(params, key);
    let now = time::OffsetDateTime::now_utc();
    let serial = [0x01, 0x23, 0x45, 0x67, 0x89];
    let crl = |number: u64| {
        rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::from_secs(86_400),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap()
        .der()
        .to_vec()
    };

    let url = front.crl_url("test-ca");
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/test-ca.crl"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(get(&url, None).await.0, 404, "nothing published yet");
        front.set_crl("test-ca", crl(1));
        let (status, headers, body) = get(&url, None).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/pkix-crl");
        let (_, parsed) = x509_parser::parse_x509_crl(&body).unwrap();
        let revoked: Vec<_> = parsed.iter_revoked_certificates().collect();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].raw_serial(), serial);
        assert_eq!(
            revoked[0].reason_code().map(|(_, r)| r.0),
            Some(1),
            "keyCompromise"
        );
        assert_eq!(parsed.crl_number().map(|n| n.to_string()), Some("1".into()));

        // Replaced: the new CRL is served.
        front.set_crl("test-ca", crl(2));
        let (_, _, body) = get(&url, None).await;
        let (_, parsed) = x509_parser::parse_x509_crl(&body).unwrap();
        assert_eq!(parsed.crl_number().map(|n| n.to_string()), Some("2".into()));

        assert_eq!(get(&front.crl_url("other"), None).await.0, 404);
    });
    assert_eq!(front.crl_fetches("test-ca"), 3);
    assert_eq!(front.crl_fetches("other"), 1);
    assert_eq!(front.crl_fetches("never"), 0);

    // Dropping the front closes its listeners.
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    drop(front);
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "{addr} still open"
    );
}
