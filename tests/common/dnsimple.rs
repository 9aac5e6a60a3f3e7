//! A fake DNSimple API v2 server, in-process, for the DNSimple issuer and for ACME dns-01
//! through DNSimple's zone-records API.
//!
//! DNSimple's sandbox cannot issue certificates, so this fake answers the certificate and
//! zone-record endpoints in the shapes of DNSimple's own response fixtures
//! (`dnsimple/dnsimple-developer` `fixtures/v2/`): every body is `{"data": …}` (lists add
//! `pagination`), errors are `{"message": …}`, every answer except the 502 gateway page carries
//! `X-RateLimit-Limit` / `X-RateLimit-Remaining` (decrementing) / `X-RateLimit-Reset`, and
//! `Content-Type: application/json; charset=utf-8` except on 204 and 502.
//!
//! What it does ([`FakeDnsimpleOpts`] configures it):
//!
//! * Accepts only `Authorization: Bearer <token>` (else 401 `Authentication failed`), only its
//!   account id in paths (else 404), only its one domain / zone (name, or the domain id for
//!   certificates; else 404).
//! * **Certificates** (Let's Encrypt through DNSimple; DNSimple generates the key): purchase (201,
//!   state `new`) → issue (202, `requesting`) → `GET …/certificates/:id` answers `requesting` for
//!   [`FakeDnsimpleOpts::polls_until_issued`] polls, then `issued`: at that moment the fake
//!   generates the key (ECDSA P-256, or RSA-2048 for `signature_algorithm: "RSA"`), a CSR, and a
//!   leaf signed by its intermediate. Before that, `download` / `private_key` answer 428.
//!   Renewals (purchase + issue) create a new certificate id with the same names.
//!   Only `GET …/certificates/:id` advances a requesting certificate; downloads do not.
//! * **Names**: `name` `"www"` (the default) = apex + `www` (common name `www.DOMAIN`, SANs
//!   `[DOMAIN, www.DOMAIN]`); `""` = the apex alone; `"*"` = `*.DOMAIN`; any other `X` =
//!   `X.DOMAIN`. `alternate_names` are full names inside the domain, appended in order.
//! * **Chain**: leaf ← "Fake DNSimple LE Intermediate" ← "Fake DNSimple LE Root". `download`
//!   answers `{server: leaf, root: null, chain: [intermediate]}` like the fixture; the root (the
//!   trust anchor) is [`FakeDnsimple::ca`].
//! * **Zone records** of the one zone: list (filters `name`, `name_like`, `type`; pagination
//!   `page`/`per_page`, default 30, max 100; sorted by id), create (201), get, delete (204),
//!   distribution. The zone starts with DNSimple's system records (SOA and 4 NS at the apex,
//!   ids 1–5, not deletable: 400). Created record ids continue from 6.
//! * **challtestsrv mirror**: with [`FakeDnsimpleOpts::challtestsrv`] set, the set of TXT values
//!   at each name is mirrored to `pebble-challtestsrv` before the create/delete is answered, so
//!   Pebble's dns-01 validation sees exactly the fake's TXT records. challtestsrv 1.2.1's
//!   `/set-txt` **adds** a value (several values per name are answered, duplicates too) and
//!   `/clear-txt` removes all values of a name; its lookup is case-sensitive, so hosts are
//!   mirrored lower-cased as `<name>.<zone>.` (`<zone>.` for the apex). A create only adds; a
//!   delete clears the name and re-adds what remains.
//! * **Fault injection**: [`FakeDnsimple::fail_next`] / [`FakeDnsimple::fail_matching`] answer
//!   the next requests with an error status and DNSimple's documented body *instead of*
//!   handling them (no side effects); 429 comes with `X-RateLimit-Remaining: 0` and
//!   `X-RateLimit-Reset` = now + 2; 502 is nginx's `text/html` page and closes the connection.
//!   [`FakeDnsimple::set_undistributed`], [`FakeDnsimple::set_final_state`],
//!   [`FakeDnsimple::remove_private_key`] change other behaviour.
//!
//! Ids: certificates (= purchase ids) from 101967, renewals from 65082, like the fixtures.
//! Messages not documented by DNSimple (wrong account, bad state, system records, …) are the
//! fake's own; they are all `{"message": …}` with a status from DNSimple's documented set.
//!
//! Plain HTTP on a fresh `127.0.0.1` port, hand-written HTTP/1.1 shared with [`super::Front`] (request
//! line, headers, `Content-Length` bodies of at most 1 MiB, keep-alive). A tokio runtime on a
//! thread of its own; dropping the [`FakeDnsimple`] stops it. All methods are blocking and
//! usable from plain `#[test]`s and from inside a tokio runtime.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize,
};
use serde_json::{Value, json};

use super::http1::{self, Request, header};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;
/// `X-RateLimit-Limit` (DNSimple's documented hourly limit for authenticated requests).
pub const DNSIMPLE_RATE_LIMIT: u64 = 2400;
/// The domain id the fake reports (and accepts in place of the domain name).
pub const DNSIMPLE_DOMAIN_ID: u64 = 289333;
/// First certificate (and purchase) id, as in the fixtures.
pub const DNSIMPLE_FIRST_CERTIFICATE_ID: u64 = 101967;
/// First renewal id, as in the fixtures.
pub const DNSIMPLE_FIRST_RENEWAL_ID: u64 = 65082;
/// Number of system records (SOA + 4 NS, ids 1..=5) the zone starts with.
pub const DNSIMPLE_SYSTEM_RECORDS: u64 = 5;
/// The account's e-mail in `/whoami` and in the 412 message.
pub const DNSIMPLE_ACCOUNT_EMAIL: &str = "test-account@example.com";

/// nginx's 502 page, as in the `badgateway.http` fixture.
const BAD_GATEWAY_HTML: &str = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body bgcolor=\"white\">\n<center><h1>502 Bad Gateway</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n";

/// PEM encoding of the private key DNSimple hands out at `…/private_key`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyFormat {
    /// `RSA PRIVATE KEY` (PKCS#1, like the fixture) for RSA, `EC PRIVATE KEY` (SEC1 with the
    /// named curve, OpenSSL's traditional format) for ECDSA.
    #[default]
    Traditional,
    /// `PRIVATE KEY` (PKCS#8) for both.
    Pkcs8,
}

/// Options for [`FakeDnsimple::start`].
#[derive(Clone, Debug)]
pub struct FakeDnsimpleOpts {
    /// The only Bearer token accepted. Default `"test-dnsimple-token"`.
    pub token: String,
    /// The account id `/whoami` returns and paths must carry. Default 1010.
    pub account_id: u64,
    /// The one domain and zone the fake knows. Default `"a.test"`.
    pub domain: String,
    /// `GET …/certificates/:id` answers `requesting` this many times after `issue`, then
    /// `issued` . Default 2.
    pub polls_until_issued: usize,
    /// false: the Let's Encrypt POST endpoints answer 412. Default true.
    pub letsencrypt_enabled: bool,
    /// Base URL of pebble-challtestsrv's management API ([`super::Pebble::challtestsrv_url`]):
    /// TXT records are mirrored there. Default None.
    pub challtestsrv: Option<String>,
    /// Format of the private key PEM. Default [`KeyFormat::Traditional`].
    pub key_format: KeyFormat,
    /// Validity of issued leaves (notBefore is backdated one hour, like Let's Encrypt; notAfter
    /// = notBefore + validity). Default 90 days.
    pub validity: Duration,
}

impl Default for FakeDnsimpleOpts {
    fn default() -> Self {
        FakeDnsimpleOpts {
            token: "test-dnsimple-token".into(),
            account_id: 1010,
            domain: "a.test".into(),
            polls_until_issued: 2,
            letsencrypt_enabled: true,
            challtestsrv: None,
            key_format: KeyFormat::default(),
            validity: Duration::from_secs(90 * 86400),
        }
    }
}

/// A certificate the fake has issued.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// Certificate id.
    pub id: u64,
    /// DNS names in the subjectAltName, in order.
    pub names: Vec<String>,
    /// PEM of the leaf (`download`'s `server`).
    pub cert_pem: String,
    /// DER of the leaf.
    pub cert_der: Vec<u8>,
    /// PEM of the private key as `private_key` answers it.
    pub key_pem: String,
    /// `download`'s `chain` (the intermediate).
    pub chain_pem: Vec<String>,
    /// notAfter of the leaf (= `expires_at`).
    pub not_after: SystemTime,
}

/// One handled request, for [`FakeDnsimple::recorded`].
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query as sent, e.g. `/v2/1010/zones/a.test/records?name=_acme-challenge`.
    pub target: String,
    pub status: u16,
    /// Answered by [`FakeDnsimple::fail_next`] / [`FakeDnsimple::fail_matching`].
    pub injected: bool,
    /// Request headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RecordedRequest {
    /// First value of a request header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

struct Cert {
    id: u64,
    name: String,
    common_name: String,
    alternate_names: Vec<String>,
    /// SANs of the leaf, in order.
    san: Vec<String>,
    signature_algorithm: String,
    auto_renew: bool,
    state: String,
    polls_left: usize,
    csr: Option<String>,
    created_at: String,
    updated_at: String,
    /// Index into `State::issued` once issued.
    issued: Option<usize>,
    /// Private key removed by [`FakeDnsimple::remove_private_key`].
    key_removed: bool,
    /// Renewal that created this certificate.
    renewal: Option<u64>,
}

struct Renewal {
    id: u64,
    old_certificate_id: u64,
    new_certificate_id: u64,
    state: String,
    auto_renew: bool,
    created_at: String,
    updated_at: String,
}

#[derive(Clone)]
struct Record {
    id: u64,
    name: String,
    content: String,
    ttl: i64,
    priority: Option<i64>,
    rtype: String,
    regions: Value,
    system: bool,
    created_at: String,
    updated_at: String,
}

struct FailRule {
    method: Option<String>,
    path_contains: Option<String>,
    status: u16,
    left: usize,
}

struct State {
    next_certificate_id: u64,
    next_renewal_id: u64,
    next_record_id: u64,
    certs: BTreeMap<u64, Cert>,
    renewals: BTreeMap<u64, Renewal>,
    records: BTreeMap<u64, Record>,
    issued: Vec<IssuedCert>,
    txt_history: Vec<(String, String)>,
    fail_rules: Vec<FailRule>,
    undistributed_left: usize,
    polls_until_issued: usize,
    final_state: String,
    letsencrypt_enabled: bool,
    rate_remaining: u64,
    log: Vec<RecordedRequest>,
    /// Problems the server met (e.g. challtestsrv unreachable), for failure messages.
    errors: Vec<String>,
}

/// The fake's CA: root (trust anchor) and the intermediate that signs leaves.
struct Pki {
    root_pem: String,
    intermediate_pem: String,
    intermediate: Issuer<'static, KeyPair>,
}

struct Shared {
    state: Mutex<State>,
    token: String,
    account_id: u64,
    domain: String,
    key_format: KeyFormat,
    validity: Duration,
    /// `X-RateLimit-Reset` of normal answers: start + 1 hour.
    rate_reset: u64,
    pki: Pki,
    challtestsrv: Option<String>,
    /// What challtestsrv holds per host (absent: nothing; None: unknown after a failed
    /// update); the lock also serializes mirror updates.
    mirrored: tokio::sync::Mutex<HashMap<String, Option<Vec<String>>>>,
    client: reqwest::Client,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking server task must not hide what was recorded.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake DNSimple API (see the module docs). Dropping it stops the server.
pub struct FakeDnsimple {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn iso_time(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .expect("format timestamp")
}

fn iso_date(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .expect("format date")
}

fn now_iso() -> String {
    iso_time(SystemTime::now())
}

/// Whole seconds (X.509 times have no fractions).
fn truncate_secs(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}

fn unique_serial() -> rcgen::SerialNumber {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut serial = vec![0x01];
    serial.extend_from_slice(&rand::random::<[u8; 11]>());
    serial.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    rcgen::SerialNumber::from_slice(&serial)
}

impl Pki {
    fn new() -> Pki {
        let now = SystemTime::now();
        let ca_params = |cn: &str, path_len: Option<u8>| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.distinguished_name
                .push(DnType::OrganizationName, "certagent tests");
            p.is_ca = IsCa::Ca(match path_len {
                Some(n) => BasicConstraints::Constrained(n),
                None => BasicConstraints::Unconstrained,
            });
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.use_authority_key_identifier_extension = true;
            p.serial_number = Some(unique_serial());
            p.not_before = (truncate_secs(now) - Duration::from_secs(86400)).into();
            p.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
            p
        };
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("root key");
        let mut root_params = ca_params("Fake DNSimple LE Root", None);
        root_params.use_authority_key_identifier_extension = false;
        let root_cert = root_params.self_signed(&root_key).expect("self-sign root");
        let root = Issuer::new(root_params, root_key);

        let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("intermediate key");
        let int_params = ca_params("Fake DNSimple LE Intermediate", Some(0));
        let int_cert = int_params
            .signed_by(&int_key, &root)
            .expect("sign intermediate");
        Pki {
            root_pem: root_cert.pem(),
            intermediate_pem: int_cert.pem(),
            intermediate: Issuer::new(int_params, int_key),
        }
    }
}

impl FakeDnsimple {
    /// Starts the fake on a fresh `127.0.0.1` port. Blocking.
    pub fn start(opts: FakeDnsimpleOpts) -> FakeDnsimple {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake DNSimple");
        let addr = listener.local_addr().expect("fake DNSimple addr");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("challtestsrv client");

        let created = "2026-01-01T00:00:00Z".to_owned();
        let mut records = BTreeMap::new();
        let system = |id: u64, rtype: &str, content: String| Record {
            id,
            name: String::new(),
            content,
            ttl: 3600,
            priority: None,
            rtype: rtype.into(),
            regions: json!(["global"]),
            system: true,
            created_at: created.clone(),
            updated_at: created.clone(),
        };
        records.insert(
            1,
            system(
                1,
                "SOA",
                "ns1.dnsimple.com admin.dnsimple.com 1458642070 86400 7200 604800 300".into(),
            ),
        );
        for i in 1..DNSIMPLE_SYSTEM_RECORDS {
            records.insert(i + 1, system(i + 1, "NS", format!("ns{i}.dnsimple.com")));
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_certificate_id: DNSIMPLE_FIRST_CERTIFICATE_ID,
                next_renewal_id: DNSIMPLE_FIRST_RENEWAL_ID,
                next_record_id: DNSIMPLE_SYSTEM_RECORDS + 1,
                certs: BTreeMap::new(),
                renewals: BTreeMap::new(),
                records,
                issued: Vec::new(),
                txt_history: Vec::new(),
                fail_rules: Vec::new(),
                undistributed_left: 0,
                polls_until_issued: opts.polls_until_issued,
                final_state: "issued".into(),
                letsencrypt_enabled: opts.letsencrypt_enabled,
                rate_remaining: DNSIMPLE_RATE_LIMIT,
                log: Vec::new(),
                errors: Vec::new(),
            }),
            token: opts.token,
            account_id: opts.account_id,
            domain: opts.domain.trim_end_matches('.').to_ascii_lowercase(),
            key_format: opts.key_format,
            validity: opts.validity,
            rate_reset: unix_now() + 3600,
            pki: Pki::new(),
            challtestsrv: opts
                .challtestsrv
                .map(|u| u.trim_end_matches('/').to_owned()),
            mirrored: tokio::sync::Mutex::new(HashMap::new()),
            client,
        });

        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-dnsimple".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake DNSimple tokio runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::spawn(async move {
                        while let Ok((tcp, _)) = listener.accept().await {
                            let s = task_shared.clone();
                            tokio::spawn(async move { serve(&s, tcp).await });
                        }
                    });
                    let _ = shutdown_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("spawn fake DNSimple thread");

        FakeDnsimple {
            shared,
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/v2`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v2", self.addr)
    }

    /// The account id paths must carry.
    pub fn account_id(&self) -> u64 {
        self.shared.account_id
    }

    /// The accepted token.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The domain / zone (lower case, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.shared.domain
    }

    /// PEM of the root CA: the trust anchor of every issued leaf (leaf ← intermediate ← root).
    pub fn ca(&self) -> String {
        self.shared.pki.root_pem.clone()
    }

    /// PEM of the intermediate that signs the leaves (`download`'s `chain[0]`).
    pub fn intermediate_pem(&self) -> String {
        self.shared.pki.intermediate_pem.clone()
    }

    /// `"METHOD /target -> status"` for every request, in order (target = path and query as
    /// sent, e.g. `GET /v2/whoami -> 200`).
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .state()
            .log
            .iter()
            .map(|r| format!("{} {} -> {}", r.method, r.target, r.status))
            .collect()
    }

    /// Every request with headers and body, in order.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.shared.state().log.clone()
    }

    /// Certificates issued so far, in order.
    pub fn issued(&self) -> Vec<IssuedCert> {
        self.shared.state().issued.clone()
    }

    /// TXT records currently in the zone, `(name relative to the zone, content)`, by id.
    pub fn txt_records(&self) -> Vec<(String, String)> {
        self.shared
            .state()
            .records
            .values()
            .filter(|r| r.rtype == "TXT")
            .map(|r| (r.name.clone(), r.content.clone()))
            .collect()
    }

    /// Every TXT record ever created, `(name, content)`, in order.
    pub fn txt_history(&self) -> Vec<(String, String)> {
        self.shared.state().txt_history.clone()
    }

    /// The next `n` requests (any method and path) answer `status` with DNSimple's documented
    /// body instead of being handled. Rules queue up: this one applies after earlier ones.
    pub fn fail_next(&self, status: u16, n: usize) {
        self.push_rule(None, None, status, n);
    }

    /// Like [`FakeDnsimple::fail_next`] but only for requests whose method is `method` (any
    /// method if empty) and whose target contains `path_contains`; others are handled normally.
    pub fn fail_matching(&self, method: &str, path_contains: &str, status: u16, n: usize) {
        let method = (!method.is_empty()).then(|| method.to_ascii_uppercase());
        self.push_rule(method, Some(path_contains.to_owned()), status, n);
    }

    fn push_rule(&self, method: Option<String>, path: Option<String>, status: u16, n: usize) {
        assert!(
            (400..600).contains(&status),
            "fail_next: {status} is not an error status"
        );
        if n > 0 {
            self.shared.state().fail_rules.push(FailRule {
                method,
                path_contains: path,
                status,
                left: n,
            });
        }
    }

    /// `…/distribution` answers `{"distributed":false}` `n` more times before `true`.
    pub fn set_undistributed(&self, n: usize) {
        self.shared.state().undistributed_left = n;
    }

    /// State a requesting certificate ends in after its polls: `"issued"` (the default) or a
    /// failure state such as `"failed"`, `"rejected"` or `"cancelled"` (then nothing is issued,
    /// a renewal becomes `failed`, download/private_key stay 428).
    pub fn set_final_state(&self, state: &str) {
        self.shared.state().final_state = state.to_owned();
    }

    /// Switches the Let's Encrypt feature (412 on the Let's Encrypt POSTs when off).
    pub fn set_letsencrypt_enabled(&self, enabled: bool) {
        self.shared.state().letsencrypt_enabled = enabled;
    }

    /// Removes an issued certificate's private key (DNSimple's `certificate.remove_private_key`):
    /// `private_key` answers 428 `Private key not present` from now on.
    pub fn remove_private_key(&self, certificate_id: u64) {
        let mut state = self.shared.state();
        let cert = state
            .certs
            .get_mut(&certificate_id)
            .unwrap_or_else(|| panic!("no certificate {certificate_id}"));
        cert.key_removed = true;
    }

    /// `state` of a certificate, if it exists.
    pub fn certificate_state(&self, certificate_id: u64) -> Option<String> {
        let state = self.shared.state();
        state.certs.get(&certificate_id).map(|c| c.state.clone())
    }

    /// The request log (one line per request) plus any internal errors, for failure messages.
    pub fn log(&self) -> String {
        let lines = self.requests();
        let state = self.shared.state();
        let mut out = lines.join("\n");
        for e in &state.errors {
            out.push_str(&format!("\nerror: {e}"));
        }
        out
    }
}

impl Drop for FakeDnsimple {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

/// Query parameters of a request target, percent-decoded (`+` is a space).
fn query(req: &Request) -> HashMap<String, String> {
    let Some((_, q)) = req.target.split_once('?') else {
        return HashMap::new();
    };
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close the connection after this answer (the 502 page).
    close: bool,
    injected: bool,
}

impl Response {
    fn json(status: u16, v: &Value) -> Response {
        Response {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: serde_json::to_vec(v).expect("serialize JSON"),
            close: false,
            injected: false,
        }
    }

    fn data(status: u16, data: Value) -> Response {
        Response::json(status, &json!({ "data": data }))
    }

    fn message(status: u16, message: &str) -> Response {
        Response::json(status, &json!({ "message": message }))
    }

    fn validation(field: &str, problem: &str) -> Response {
        Response::json(
            400,
            &json!({"message": "Validation failed", "errors": {field: [problem]}}),
        )
    }

    fn no_content() -> Response {
        Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
            injected: false,
        }
    }

    fn bad_gateway() -> Response {
        Response {
            status: 502,
            headers: vec![
                ("Server".into(), "nginx".into()),
                ("Content-Type".into(), "text/html".into()),
            ],
            body: BAD_GATEWAY_HTML.as_bytes().to_vec(),
            close: true,
            injected: false,
        }
    }
}

/// One client connection: requests until either side closes.
async fn serve(shared: &Shared, s: tokio::net::TcpStream) {
    http1::serve(s, MAX_BODY, shared).await
}

impl http1::Handler for Shared {
    async fn answer(&self, req: Result<Request, String>) -> http1::Answer {
        let resp = match req {
            Ok(req) => handle(self, &req).await,
            Err(e) => {
                self.state().errors.push(format!("bad request: {e}"));
                let mut resp = Response::message(400, &format!("fake DNSimple: {e}"));
                resp.close = true;
                resp
            }
        };
        http1::Answer {
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
            close: resp.close,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The API

/// Handles one request: fault injection, the endpoint, the challtestsrv mirror, then the
/// rate-limit headers and the log entry.
async fn handle(shared: &Shared, req: &Request) -> Response {
    let injected = take_injected(shared, req);
    let mut resp = match injected {
        Some(resp) => resp,
        None => {
            let (mut resp, sync_host) = {
                let mut state = shared.state();
                route(shared, &mut state, req)
            };
            if let Some(host) = sync_host
                && let Err(e) = mirror(shared, &host).await
            {
                let msg = format!("fake DNSimple: mirroring TXT {host} to challtestsrv: {e}");
                shared.state().errors.push(msg.clone());
                resp = Response::message(500, &msg);
            }
            resp
        }
    };

    let mut state = shared.state();
    if resp.status != 502 {
        let (remaining, reset) = if resp.injected && resp.status == 429 {
            (0, unix_now() + 2)
        } else {
            state.rate_remaining = state.rate_remaining.saturating_sub(1);
            (state.rate_remaining, shared.rate_reset)
        };
        resp.headers.extend([
            ("X-RateLimit-Limit".into(), DNSIMPLE_RATE_LIMIT.to_string()),
            ("X-RateLimit-Remaining".into(), remaining.to_string()),
            ("X-RateLimit-Reset".into(), reset.to_string()),
        ]);
    }
    state.log.push(RecordedRequest {
        method: req.method.clone(),
        target: req.target.clone(),
        status: resp.status,
        injected: resp.injected,
        headers: req.headers.clone(),
        body: String::from_utf8_lossy(&req.body).into_owned(),
    });
    resp
}

/// The answer of the first fault-injection rule matching `req`, consuming one use of it.
fn take_injected(shared: &Shared, req: &Request) -> Option<Response> {
    let mut state = shared.state();
    let rule = state.fail_rules.iter_mut().find(|r| {
        r.left > 0
            && r.method.as_deref().is_none_or(|m| m == req.method)
            && r.path_contains
                .as_deref()
                .is_none_or(|p| req.target.contains(p))
    })?;
    rule.left -= 1;
    let status = rule.status;
    state.fail_rules.retain(|r| r.left > 0);
    drop(state);
    let mut resp = match status {
        400 => Response::json(400, &json!({"message": "Validation failed", "errors": {}})),
        401 => Response::message(401, "Authentication failed"),
        402 => Response::message(402, "Payment required"),
        403 => Response::message(
            403,
            "Permission Denied. Required Scope: certificates:*:write",
        ),
        404 => Response::message(404, "Not Found"),
        412 => Response::message(
            412,
            &format!(
                "Let's Encrypt feature is not enabled for the account {DNSIMPLE_ACCOUNT_EMAIL}"
            ),
        ),
        428 => Response::message(428, "Certificate not issued"),
        429 => Response::message(429, "quota exceeded"),
        502 => Response::bad_gateway(),
        504 => Response::message(504, "Could not query zone, connection timed out"),
        s => Response::message(
            s,
            http::StatusCode::from_u16(s)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("Error"),
        ),
    };
    resp.injected = true;
    Some(resp)
}

/// Parsed JSON body: `Ok(None)` when empty or `null`, `Err(400)` when not a JSON object.
fn json_body(req: &Request) -> Result<Option<serde_json::Map<String, Value>>, Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Null) => Ok(None),
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(Response::message(
            400,
            "The request body must be a JSON object",
        )),
        Err(e) => Err(Response::message(400, &format!("Invalid JSON: {e}"))),
    }
}

/// Routes an authenticated request. Returns the answer and, for TXT changes with a
/// challtestsrv configured, the host to mirror.
fn route(shared: &Shared, state: &mut State, req: &Request) -> (Response, Option<String>) {
    let auth_ok = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == shared.token);
    if !auth_ok {
        return (Response::message(401, "Authentication failed"), None);
    }
    let Some(rest) = req.path().strip_prefix("/v2/") else {
        return (Response::message(404, "Not Found"), None);
    };
    let seg: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let method = req.method.as_str();
    if seg == ["whoami"] {
        return match method {
            "GET" => (whoami(shared), None),
            _ => (Response::message(405, "Method Not Allowed"), None),
        };
    }
    if seg.len() < 3 {
        return (Response::message(404, "Not Found"), None);
    }
    if seg[0] != shared.account_id.to_string() {
        return (
            Response::message(404, &format!("Account `{}` not found", seg[0])),
            None,
        );
    }
    match seg[1] {
        "domains" if seg.len() >= 4 && seg[3] == "certificates" => {
            let domain = seg[2].to_ascii_lowercase();
            if domain != shared.domain && domain != DNSIMPLE_DOMAIN_ID.to_string() {
                return (
                    Response::message(404, &format!("Domain `{}` not found", seg[2])),
                    None,
                );
            }
            (certificates(shared, state, req, method, &seg[4..]), None)
        }
        "zones" if seg.len() >= 4 && seg[3] == "records" => {
            if seg[2].to_ascii_lowercase() != shared.domain {
                return (
                    Response::message(404, &format!("Zone `{}` not found", seg[2])),
                    None,
                );
            }
            records(shared, state, req, method, &seg[4..])
        }
        _ => (Response::message(404, "Not Found"), None),
    }
}

fn whoami(shared: &Shared) -> Response {
    Response::data(
        200,
        json!({
            "user": null,
            "account": {
                "id": shared.account_id,
                "email": DNSIMPLE_ACCOUNT_EMAIL,
                "name": "Test Account",
                "plan_identifier": "teams-v1-monthly",
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
            }
        }),
    )
}

fn parse_id(s: &str) -> Option<u64> {
    s.parse().ok()
}

fn cert_not_found(id: &str) -> Response {
    Response::message(404, &format!("Certificate `{id}` not found"))
}

fn letsencrypt_disabled() -> Response {
    Response::message(
        412,
        &format!("Let's Encrypt feature is not enabled for the account {DNSIMPLE_ACCOUNT_EMAIL}"),
    )
}

/// `…/certificates` and below (`rest` is what follows `certificates`).
fn certificates(
    shared: &Shared,
    state: &mut State,
    req: &Request,
    method: &str,
    rest: &[&str],
) -> Response {
    let not_allowed = || Response::message(405, "Method Not Allowed");
    match rest {
        [] => match method {
            "GET" => list_certificates(state, req),
            _ => not_allowed(),
        },
        ["letsencrypt", tail @ ..] => {
            if method != "POST" {
                return not_allowed();
            }
            if !state.letsencrypt_enabled {
                return letsencrypt_disabled();
            }
            match tail {
                [] => purchase(shared, state, req),
                [id, "issue"] => issue(state, id),
                [id, "renewals"] => purchase_renewal(state, req, id),
                [id, "renewals", rid, "issue"] => issue_renewal(state, id, rid),
                _ => Response::message(404, "Not Found"),
            }
        }
        [id] => match method {
            "GET" => get_certificate(shared, state, id),
            _ => not_allowed(),
        },
        [id, "download"] | [id, "private_key"] => {
            if method != "GET" {
                return not_allowed();
            }
            let Some(cert) = parse_id(id).and_then(|i| state.certs.get(&i)) else {
                return cert_not_found(id);
            };
            let issued = cert.issued.map(|i| &state.issued[i]);
            match (rest[1], issued) {
                ("download", None) => Response::message(428, "Certificate not issued"),
                ("download", Some(ic)) => Response::data(
                    200,
                    json!({"server": ic.cert_pem, "root": null, "chain": ic.chain_pem}),
                ),
                (_, Some(ic)) if !cert.key_removed => {
                    Response::data(200, json!({"private_key": ic.key_pem}))
                }
                _ => Response::message(428, "Private key not present"),
            }
        }
        _ => Response::message(404, "Not Found"),
    }
}

fn certificate_json(state: &State, cert: &Cert) -> Value {
    let issued = cert.issued.map(|i| &state.issued[i]);
    json!({
        "id": cert.id,
        "domain_id": DNSIMPLE_DOMAIN_ID,
        "name": cert.name,
        "common_name": cert.common_name,
        "years": 1,
        "csr": cert.csr,
        "state": cert.state,
        "auto_renew": cert.auto_renew,
        "alternate_names": cert.alternate_names,
        "authority_identifier": "letsencrypt",
        "created_at": cert.created_at,
        "updated_at": cert.updated_at,
        "expires_at": issued.map(|ic| iso_time(ic.not_after)),
        "expires_on": issued.map(|ic| iso_date(ic.not_after)),
    })
}

fn pagination(req: &Request, total: usize) -> Result<(usize, usize, Value), Response> {
    let q = query(req);
    let page: usize = match q.get("page") {
        Some(v) => match v.parse() {
            Ok(p) if p >= 1 => p,
            _ => return Err(Response::validation("page", "must be a positive integer")),
        },
        None => 1,
    };
    let per_page: usize = match q.get("per_page") {
        Some(v) => match v.parse::<usize>() {
            Ok(p) if p >= 1 => p.min(100),
            _ => {
                return Err(Response::validation(
                    "per_page",
                    "must be a positive integer",
                ));
            }
        },
        None => 30,
    };
    let total_pages = total.div_ceil(per_page);
    let json = json!({
        "current_page": page,
        "per_page": per_page,
        "total_entries": total,
        "total_pages": total_pages,
    });
    Ok(((page - 1) * per_page, per_page, json))
}

fn list_certificates(state: &State, req: &Request) -> Response {
    // DNSimple's default order: id descending.
    let all: Vec<&Cert> = state.certs.values().rev().collect();
    let (skip, take, pag) = match pagination(req, all.len()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let data: Vec<Value> = all
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|c| certificate_json(state, c))
        .collect();
    Response::json(200, &json!({"data": data, "pagination": pag}))
}

fn bool_field(body: &Option<serde_json::Map<String, Value>>, k: &str) -> Result<bool, Response> {
    match body.as_ref().and_then(|b| b.get(k)) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Response::validation(k, "must be a boolean")),
    }
}

fn signature_algorithm(
    body: &Option<serde_json::Map<String, Value>>,
    default: &str,
) -> Result<String, Response> {
    match body.as_ref().and_then(|b| b.get("signature_algorithm")) {
        None | Some(Value::Null) => Ok(default.to_owned()),
        Some(Value::String(s)) if s == "ECDSA" || s == "RSA" => Ok(s.clone()),
        Some(_) => Err(Response::validation(
            "signature_algorithm",
            "is not included in the list",
        )),
    }
}

/// `POST …/certificates/letsencrypt`.
fn purchase(shared: &Shared, state: &mut State, req: &Request) -> Response {
    let body = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let field = |k: &str| body.as_ref().and_then(|b| b.get(k));
    let name = match field("name") {
        None | Some(Value::Null) => "www".to_owned(),
        Some(Value::String(s)) => s.trim().to_ascii_lowercase(),
        Some(_) => return Response::validation("name", "must be a string"),
    };
    let alternate_names: Vec<String> = match field("alternate_names") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            let mut names = Vec::new();
            for v in a {
                match v.as_str() {
                    Some(s) => names.push(s.trim().trim_end_matches('.').to_ascii_lowercase()),
                    None => return Response::validation("alternate_names", "must be strings"),
                }
            }
            names
        }
        Some(_) => return Response::validation("alternate_names", "must be an array"),
    };
    let auto_renew = match bool_field(&body, "auto_renew") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let sig = match signature_algorithm(&body, "ECDSA") {
        Ok(s) => s,
        Err(r) => return r,
    };

    let d = &shared.domain;
    let (common_name, mut san) = match name.as_str() {
        "www" => (format!("www.{d}"), vec![d.clone(), format!("www.{d}")]),
        "" => (d.clone(), vec![d.clone()]),
        n => (format!("{n}.{d}"), vec![format!("{n}.{d}")]),
    };
    for alt in &alternate_names {
        if alt != d && !alt.ends_with(&format!(".{d}")) {
            return Response::validation(
                "alternate_names",
                &format!("{alt} is not a name in the domain {d}"),
            );
        }
        if !san.contains(alt) {
            san.push(alt.clone());
        }
    }
    if san.len() > 100 {
        return Response::validation("alternate_names", "too many names (at most 100)");
    }

    let id = state.next_certificate_id;
    state.next_certificate_id += 1;
    let now = now_iso();
    state.certs.insert(
        id,
        Cert {
            id,
            name,
            common_name,
            alternate_names,
            san,
            signature_algorithm: sig,
            auto_renew,
            state: "new".into(),
            polls_left: 0,
            csr: None,
            created_at: now.clone(),
            updated_at: now.clone(),
            issued: None,
            key_removed: false,
            renewal: None,
        },
    );
    Response::data(
        201,
        json!({
            "id": id,
            "certificate_id": id,
            "state": "new",
            "auto_renew": auto_renew,
            "created_at": now,
            "updated_at": now,
        }),
    )
}

/// Moves certificate `id` (state `new`) to `requesting`.
fn start_requesting(state: &mut State, id: u64) -> Result<(), Response> {
    let polls = state.polls_until_issued;
    let cert = state
        .certs
        .get_mut(&id)
        .ok_or_else(|| cert_not_found(&id.to_string()))?;
    if cert.state != "new" {
        return Err(Response::message(
            400,
            &format!(
                "Certificate `{id}` cannot be issued: its state is {}",
                cert.state
            ),
        ));
    }
    cert.state = "requesting".into();
    cert.polls_left = polls;
    cert.updated_at = now_iso();
    Ok(())
}

/// `POST …/letsencrypt/:certificate_id/issue`.
fn issue(state: &mut State, id: &str) -> Response {
    let Some(id) = parse_id(id).filter(|i| state.certs.contains_key(i)) else {
        return cert_not_found(id);
    };
    if state.certs[&id].renewal.is_some() {
        return Response::message(
            400,
            &format!("Certificate `{id}` belongs to a renewal: issue it through the renewal"),
        );
    }
    if let Err(r) = start_requesting(state, id) {
        return r;
    }
    Response::data(202, certificate_json(state, &state.certs[&id]))
}

/// `POST …/letsencrypt/:certificate_id/renewals`.
fn purchase_renewal(state: &mut State, req: &Request, id: &str) -> Response {
    let body = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(old) = parse_id(id).and_then(|i| state.certs.get(&i)) else {
        return cert_not_found(id);
    };
    if old.state != "issued" {
        return Response::message(
            400,
            &format!(
                "Certificate `{id}` cannot be renewed: its state is {}",
                old.state
            ),
        );
    }
    let auto_renew = match bool_field(&body, "auto_renew") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let sig = match signature_algorithm(&body, &old.signature_algorithm) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let now = now_iso();
    let new_id = state.next_certificate_id;
    let rid = state.next_renewal_id;
    let new = Cert {
        id: new_id,
        name: old.name.clone(),
        common_name: old.common_name.clone(),
        alternate_names: old.alternate_names.clone(),
        san: old.san.clone(),
        signature_algorithm: sig,
        auto_renew,
        state: "new".into(),
        polls_left: 0,
        csr: None,
        created_at: now.clone(),
        updated_at: now.clone(),
        issued: None,
        key_removed: false,
        renewal: Some(rid),
    };
    let old_id = old.id;
    state.next_certificate_id += 1;
    state.next_renewal_id += 1;
    state.certs.insert(new_id, new);
    let renewal = Renewal {
        id: rid,
        old_certificate_id: old_id,
        new_certificate_id: new_id,
        state: "new".into(),
        auto_renew,
        created_at: now.clone(),
        updated_at: now,
    };
    let resp = renewal_json(&renewal);
    state.renewals.insert(rid, renewal);
    Response::data(201, resp)
}

fn renewal_json(r: &Renewal) -> Value {
    json!({
        "id": r.id,
        "old_certificate_id": r.old_certificate_id,
        "new_certificate_id": r.new_certificate_id,
        "state": r.state,
        "auto_renew": r.auto_renew,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    })
}

/// `POST …/letsencrypt/:certificate_id/renewals/:renewal_id/issue`.
fn issue_renewal(state: &mut State, id: &str, rid: &str) -> Response {
    let Some(old_id) = parse_id(id).filter(|i| state.certs.contains_key(i)) else {
        return cert_not_found(id);
    };
    let Some(renewal) = parse_id(rid)
        .and_then(|r| state.renewals.get(&r))
        .filter(|r| r.old_certificate_id == old_id)
    else {
        return Response::message(404, &format!("Renewal `{rid}` not found"));
    };
    if renewal.state != "new" {
        return Response::message(
            400,
            &format!(
                "Renewal `{rid}` cannot be issued: its state is {}",
                renewal.state
            ),
        );
    }
    let (rid, new_id) = (renewal.id, renewal.new_certificate_id);
    if let Err(r) = start_requesting(state, new_id) {
        return r;
    }
    if let Some(r) = state.renewals.get_mut(&rid) {
        r.state = "renewing".into();
        r.updated_at = now_iso();
    }
    Response::data(202, certificate_json(state, &state.certs[&new_id]))
}

/// `GET …/certificates/:id`: one poll.
fn get_certificate(shared: &Shared, state: &mut State, id: &str) -> Response {
    let Some(id) = parse_id(id).filter(|i| state.certs.contains_key(i)) else {
        return cert_not_found(id);
    };
    let final_state = state.final_state.clone();
    let cert = state.certs.get_mut(&id).expect("checked above");
    if cert.state == "requesting" {
        if cert.polls_left > 0 {
            cert.polls_left -= 1;
        } else if final_state == "issued" {
            let index = state.issued.len();
            let cert = state.certs.get_mut(&id).expect("checked above");
            let (issued, csr) = issue_leaf(shared, cert);
            cert.csr = Some(csr);
            cert.state = "issued".into();
            cert.updated_at = now_iso();
            cert.issued = Some(index);
            let renewal = cert.renewal;
            state.issued.push(issued);
            if let Some(r) = renewal.and_then(|r| state.renewals.get_mut(&r)) {
                r.state = "renewed".into();
                r.updated_at = now_iso();
            }
        } else {
            cert.state = final_state;
            cert.updated_at = now_iso();
            let renewal = cert.renewal;
            if let Some(r) = renewal.and_then(|r| state.renewals.get_mut(&r)) {
                r.state = "failed".into();
                r.updated_at = now_iso();
            }
        }
    }
    Response::data(200, certificate_json(state, &state.certs[&id]))
}

/// Generates the key "DNSimple" keeps, a CSR, and the leaf; returns it and the CSR PEM.
fn issue_leaf(shared: &Shared, cert: &Cert) -> (IssuedCert, String) {
    let key = if cert.signature_algorithm == "RSA" {
        KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).expect("RSA key")
    } else {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("ECDSA key")
    };
    let mut params = CertificateParams::new(cert.san.clone())
        .unwrap_or_else(|e| panic!("invalid names {:?}: {e}", cert.san));
    params
        .distinguished_name
        .push(DnType::CommonName, cert.common_name.as_str());
    let csr = params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("CSR PEM");

    // The leaf's subject is the CN alone, like Let's Encrypt's.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = if cert.signature_algorithm == "RSA" {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(unique_serial());
    let not_before = truncate_secs(SystemTime::now()) - Duration::from_secs(3600);
    let not_after = truncate_secs(not_before + shared.validity);
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let leaf = params
        .signed_by(&key, &shared.pki.intermediate)
        .expect("sign leaf");
    let key_pem = match shared.key_format {
        KeyFormat::Pkcs8 => key.serialize_pem(),
        KeyFormat::Traditional => traditional_key_pem(&key.serialize_der(), cert),
    };
    (
        IssuedCert {
            id: cert.id,
            names: cert.san.clone(),
            cert_pem: leaf.pem(),
            cert_der: leaf.der().to_vec(),
            key_pem,
            chain_pem: vec![shared.pki.intermediate_pem.clone()],
            not_after,
        },
        csr,
    )
}

// ---------------------------------------------------------------------------------------------
// Private key formats (minimal DER)

/// One DER TLV: (tag, content, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// PKCS#8 → PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY` (with the named curve).
fn traditional_key_pem(pkcs8: &[u8], cert: &Cert) -> String {
    let inner = (|| {
        let (_, pki, _) = der_tlv(pkcs8).filter(|t| t.0 == 0x30)?;
        let (_, _version, rest) = der_tlv(pki).filter(|t| t.0 == 0x02)?;
        let (_, _alg, rest) = der_tlv(rest).filter(|t| t.0 == 0x30)?;
        let (_, key, _) = der_tlv(rest).filter(|t| t.0 == 0x04)?;
        Some(key)
    })()
    .expect("rcgen's key is PKCS#8");
    if cert.signature_algorithm == "RSA" {
        return pem_encode("RSA PRIVATE KEY", inner);
    }
    // ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING,
    //   parameters [0] ECParameters OPTIONAL, publicKey [1] BIT STRING OPTIONAL }
    const PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (_, mut rest, _) = der_tlv(inner)
        .filter(|t| t.0 == 0x30)
        .expect("ECPrivateKey");
    let mut elems = Vec::new();
    while let Some((tag, content, r)) = der_tlv(rest) {
        elems.push((tag, content.to_vec()));
        rest = r;
    }
    if !elems.iter().any(|(t, _)| *t == 0xa0) {
        elems.insert(2.min(elems.len()), (0xa0, PRIME256V1.to_vec()));
    }
    let content: Vec<u8> = elems.iter().flat_map(|(t, c)| der_encode(*t, c)).collect();
    pem_encode("EC PRIVATE KEY", &der_encode(0x30, &content))
}

// ---------------------------------------------------------------------------------------------
// Zone records

fn record_json(shared: &Shared, r: &Record) -> Value {
    json!({
        "id": r.id,
        "zone_id": shared.domain,
        "parent_id": null,
        "name": r.name,
        "content": r.content,
        "ttl": r.ttl,
        "priority": r.priority,
        "type": r.rtype,
        "regions": r.regions,
        "system_record": r.system,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    })
}

/// The challtestsrv host of a record name: `<name>.<zone>.`, or `<zone>.` for the apex.
fn txt_host(shared: &Shared, name: &str) -> String {
    if name.is_empty() {
        format!("{}.", shared.domain)
    } else {
        format!("{}.{}.", name.to_ascii_lowercase(), shared.domain)
    }
}

fn record_not_found(id: &str) -> Response {
    Response::message(404, &format!("Record `{id}` not found"))
}

/// `…/records` and below (`rest` is what follows `records`).
fn records(
    shared: &Shared,
    state: &mut State,
    req: &Request,
    method: &str,
    rest: &[&str],
) -> (Response, Option<String>) {
    let not_allowed = || (Response::message(405, "Method Not Allowed"), None);
    match rest {
        [] => match method {
            "GET" => (list_records(shared, state, req), None),
            "POST" => create_record(shared, state, req),
            _ => not_allowed(),
        },
        [id] => {
            let Some(rec) = parse_id(id).and_then(|i| state.records.get(&i)).cloned() else {
                return (record_not_found(id), None);
            };
            match method {
                "GET" => (Response::data(200, record_json(shared, &rec)), None),
                "DELETE" => {
                    if rec.system {
                        return (
                            Response::message(
                                400,
                                &format!("Record `{id}` is a system record and cannot be deleted"),
                            ),
                            None,
                        );
                    }
                    state.records.remove(&rec.id);
                    let sync = (rec.rtype == "TXT" && shared.challtestsrv.is_some())
                        .then(|| txt_host(shared, &rec.name));
                    (Response::no_content(), sync)
                }
                _ => not_allowed(),
            }
        }
        [id, "distribution"] => {
            if method != "GET" {
                return not_allowed();
            }
            if parse_id(id).and_then(|i| state.records.get(&i)).is_none() {
                return (record_not_found(id), None);
            }
            let distributed = if state.undistributed_left > 0 {
                state.undistributed_left -= 1;
                false
            } else {
                true
            };
            (
                Response::data(200, json!({"distributed": distributed})),
                None,
            )
        }
        _ => (Response::message(404, "Not Found"), None),
    }
}

fn list_records(shared: &Shared, state: &State, req: &Request) -> Response {
    let q = query(req);
    let matching: Vec<&Record> = state
        .records
        .values()
        .filter(|r| q.get("name").is_none_or(|n| r.name == *n))
        .filter(|r| {
            q.get("name_like")
                .is_none_or(|n| r.name.contains(n.as_str()))
        })
        .filter(|r| {
            q.get("type")
                .is_none_or(|t| r.rtype.eq_ignore_ascii_case(t))
        })
        .collect();
    let (skip, take, pag) = match pagination(req, matching.len()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let data: Vec<Value> = matching
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|r| record_json(shared, r))
        .collect();
    Response::json(200, &json!({"data": data, "pagination": pag}))
}

fn create_record(shared: &Shared, state: &mut State, req: &Request) -> (Response, Option<String>) {
    let body = match json_body(req) {
        Ok(Some(b)) => b,
        Ok(None) => return (Response::validation("name", "can't be blank"), None),
        Err(r) => return (r, None),
    };
    let name = match body.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => return (Response::validation("name", "can't be blank"), None),
    };
    let rtype = match body.get("type") {
        Some(Value::String(s)) if !s.is_empty() => s.to_ascii_uppercase(),
        _ => return (Response::validation("type", "can't be blank"), None),
    };
    let content = match body.get("content") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return (Response::validation("content", "can't be blank"), None),
    };
    if rtype == "TXT" && content.len() > 1000 {
        return (
            Response::validation("content", "is too long (maximum is 1000 characters)"),
            None,
        );
    }
    let ttl = match body.get("ttl") {
        None | Some(Value::Null) => 3600,
        Some(v) => match v.as_i64() {
            Some(t) if t >= 0 => t,
            _ => {
                return (
                    Response::validation("ttl", "must be a non-negative integer"),
                    None,
                );
            }
        },
    };
    let priority = body.get("priority").and_then(Value::as_i64);
    let regions = match body.get("regions") {
        None | Some(Value::Null) => json!(["global"]),
        Some(v @ Value::Array(_)) => v.clone(),
        Some(_) => return (Response::validation("regions", "must be an array"), None),
    };
    let id = state.next_record_id;
    state.next_record_id += 1;
    let now = now_iso();
    let rec = Record {
        id,
        name: name.clone(),
        content: content.clone(),
        ttl,
        priority,
        rtype: rtype.clone(),
        regions,
        system: false,
        created_at: now.clone(),
        updated_at: now,
    };
    let resp = Response::data(201, record_json(shared, &rec));
    state.records.insert(id, rec);
    if rtype != "TXT" {
        return (resp, None);
    }
    state.txt_history.push((name.clone(), content));
    let sync = shared
        .challtestsrv
        .is_some()
        .then(|| txt_host(shared, &name));
    (resp, sync)
}

/// Makes challtestsrv's TXT values at `host` equal the fake's (in id order). challtestsrv's
/// `/set-txt` adds a value and `/clear-txt` removes them all, so: add when the fake only
/// gained values, otherwise clear and re-add.
async fn mirror(shared: &Shared, host: &str) -> Result<(), String> {
    let Some(base) = &shared.challtestsrv else {
        return Ok(());
    };
    let mut mirrored = shared.mirrored.lock().await;
    let desired: Vec<String> = shared
        .state()
        .records
        .values()
        .filter(|r| r.rtype == "TXT" && txt_host(shared, &r.name) == host)
        .map(|r| r.content.clone())
        .collect();
    // Unknown (None) until this update has fully succeeded.
    let current = mirrored
        .insert(host.to_owned(), None)
        .unwrap_or(Some(Vec::new()));
    let post = |path: &str, body: Value| {
        let url = format!("{base}{path}");
        async move {
            let rsp = shared
                .client
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e:?}"))?;
            if rsp.status().is_success() {
                Ok(())
            } else {
                Err(format!("POST {url} {body}: HTTP {}", rsp.status()))
            }
        }
    };
    let to_add = match current {
        Some(current) if desired.starts_with(&current) => desired[current.len()..].to_vec(),
        _ => {
            post("/clear-txt", json!({"host": host})).await?;
            desired.clone()
        }
    };
    for value in to_add {
        post("/set-txt", json!({"host": host, "value": value})).await?;
    }
    mirrored.insert(host.to_owned(), Some(desired));
    Ok(())
}
