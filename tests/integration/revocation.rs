//! The CA's view of the certificate in service, with Pebble behind a test front that adds
//! what Pebble 2.4.0 lacks: ACME Renewal Information (the window, `replaces`,
//! `alreadyReplaced`) and a CRL. The daemon fetches both and acts on them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Daemon, Env, Front, FrontOpts, Pebble, PebbleOpts, cert_id, cert_serial_hex, wait_until,
};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn through_front(pebble: &Pebble, front: &Front) -> String {
    format!(
        "[issuer.pebble]\nkind = \"acme\"\ndirectory = \"{}\"\nca_bundle = \"{}\"\nlisten = \"127.0.0.1:{}\"\ntimeout = \"60s\"\n",
        front.directory_url(),
        front.ca_bundle().display(),
        pebble.http_port()
    )
}

fn rfc3339_secs(v: &serde_json::Value) -> i64 {
    time::OffsetDateTime::parse(
        v.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp()
}

#[test]
fn an_ari_window_in_the_future_schedules_the_renewal_inside_it() {
    let pebble = Pebble::start(PebbleOpts::default());
    let (start, end) = (now() + 2 * 3600, now() + 3 * 3600);
    let front = Front::start(
        &pebble,
        FrontOpts {
            window: Some((start, end)),
            retry_after: 3600,
            already_replaced: 0,
            ..FrontOpts::default()
        },
    );
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &through_front(&pebble, &front));
    assert_eq!(env.certagent(&["reissue", "--now", "site"]).code, 0);
    let served = env.served();

    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log("event=ari", Duration::from_secs(20));
    assert_eq!(front.renewal_info_requests(), vec![cert_id(&served)]);
    let status = env.certagent(&["status", "--json"]).json();
    let ari = &status["certificates"][0]["ari"];
    let renew_at = rfc3339_secs(&ari["renew_at"]);
    assert!((start..=end).contains(&renew_at), "{ari}");
    assert_eq!(rfc3339_secs(&ari["window_start"]), start);
    assert_eq!(
        status["certificates"][0]["renew_at"], ari["renew_at"],
        "{status}"
    );
    // The next look is the earlier of the renewal point and the next ARI fetch (the CA said
    // to ask again in an hour): what the daemon schedules, `status` reports.
    assert_eq!(
        status["certificates"][0]["next_check"], ari["next_fetch"],
        "{status}"
    );
    // Inside its lifetime and before the window: nothing is re-issued. The daemon looks at
    // the certificate again when the refresh ends, and says so after it.
    daemon.wait_log(
        "job finished cert=site result=refreshed",
        Duration::from_secs(20),
    );
    assert!(!daemon.log().contains("re-issuing"), "{}", daemon.log());
    assert_eq!(env.served(), served);
}

#[test]
fn an_ari_window_in_the_past_renews_now_replacing_the_old_certificate() {
    let pebble = Pebble::start(PebbleOpts::default());
    let front = Front::start(
        &pebble,
        FrontOpts {
            window: None,
            retry_after: 3600,
            already_replaced: 1,
            ..FrontOpts::default()
        },
    );
    let env = Env::new(&["a.test"], None);
    env.write_config("issuer = \"pebble\"", &through_front(&pebble, &front));
    assert_eq!(env.certagent(&["reissue", "--now", "site"]).code, 0);
    let old = env.served();
    // The CA now says: renew (a window that has passed, as for a revoked certificate).
    front.set_window(Some((now() - 3600, now() - 1800)));

    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log("event=installed", Duration::from_secs(30));
    assert!(daemon.log().contains("reason=expiring"), "{}", daemon.log());
    assert_ne!(env.served(), old);
    // The order named its predecessor; the front answered alreadyReplaced once, so certagent
    // ordered again without `replaces`.
    let cid = cert_id(&old);
    assert_eq!(
        front.replaces_seen(),
        vec![None, Some(cid.clone()), None],
        "{}",
        front.log()
    );
    assert!(
        daemon
            .log()
            .contains("already replaced; ordering without replaces"),
        "{}",
        daemon.log()
    );
}

/// A CA of the test's own whose leaf names a CRL on the front, installed for nginx.
fn install_leaf_with_crl(
    env: &Env,
    crl_url: &str,
) -> (rcgen::Certificate, rcgen::KeyPair, rcgen::Certificate) {
    use rcgen::{
        BasicConstraints, CertificateParams, CrlDistributionPoint, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "revoking test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
    lp.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![crl_url.to_string()],
    }];
    lp.use_authority_key_identifier_extension = true;
    lp.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    lp.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(60);
    let issuer = Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    let leaf = lp.signed_by(&key, &issuer).unwrap();
    std::fs::write(&env.cert_file, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&env.key_file, key.serialize_pem()).unwrap();
    // Once the old workers stopped accepting, every probe meets a new one: the daemon's
    // later checks of what is served cannot meet the leaf from before.
    env.nginx
        .reload_and_wait_retired(Duration::from_secs(10))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || env.served()
        == leaf.der().to_vec()));
    (ca, ca_key, leaf)
}

fn crl(
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
    serial: &[u8],
    reason: rcgen::RevocationReason,
) -> Vec<u8> {
    use rcgen::{
        CertificateRevocationListParams, Issuer, KeyIdMethod, RevokedCertParams, SerialNumber,
    };
    let issuer = Issuer::from_ca_cert_der(ca.der(), ca_key).unwrap();
    CertificateRevocationListParams {
        this_update: time::OffsetDateTime::now_utc() - time::Duration::hours(1),
        next_update: time::OffsetDateTime::now_utc() + time::Duration::days(1),
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial),
            revocation_time: time::OffsetDateTime::now_utc() - time::Duration::minutes(5),
            reason_code: Some(reason),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .der()
    .to_vec()
}

fn leaf_serial(der: &[u8]) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.raw_serial().to_vec()
}

#[test]
fn a_crl_listing_the_serial_for_key_compromise_triggers_the_full_response() {
    let pebble = Pebble::start(PebbleOpts::default());
    let front = Front::start(&pebble, FrontOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let (ca, ca_key, leaf) = install_leaf_with_crl(&env, &front.crl_url("ca"));
    let old_serial = cert_serial_hex(leaf.der());
    front.set_crl(
        "ca",
        crl(
            &ca,
            &ca_key,
            &leaf_serial(leaf.der()),
            rcgen::RevocationReason::KeyCompromise,
        ),
    );

    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log("event=quarantined", Duration::from_secs(30));
    let log = daemon.log();
    assert!(
        log.contains("the CA's CRL lists the certificate in service as revoked"),
        "{log}"
    );
    assert!(log.contains("reason=key-compromised"), "{log}");
    assert!(front.crl_fetches("ca") >= 1);
    assert_ne!(cert_serial_hex(&env.served()), old_serial);
    // The old key is remembered as compromised.
    let old_key_digest = {
        let spki = common::spki_of_cert_der(leaf.der());
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let memory = std::fs::read_to_string(env.state_dir().join("compromised-keys")).unwrap();
    assert!(memory.contains(&old_key_digest), "{memory}");
}

#[test]
fn a_crl_listing_the_serial_for_another_reason_re_issues_without_a_compromise() {
    let pebble = Pebble::start(PebbleOpts::default());
    let front = Front::start(&pebble, FrontOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let (ca, ca_key, leaf) = install_leaf_with_crl(&env, &front.crl_url("ca"));
    front.set_crl(
        "ca",
        crl(
            &ca,
            &ca_key,
            &leaf_serial(leaf.der()),
            rcgen::RevocationReason::Superseded,
        ),
    );
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log("event=installed", Duration::from_secs(30));
    assert!(daemon.log().contains("reason=revoked"), "{}", daemon.log());
    assert!(
        !daemon.log().contains("event=compromised"),
        "{}",
        daemon.log()
    );
    assert_ne!(env.served(), leaf.der().to_vec());
    assert!(!env.state_dir().join("compromised-keys").exists());
}

#[test]
fn a_forged_crl_is_not_believed() {
    let pebble = Pebble::start(PebbleOpts::default());
    let front = Front::start(&pebble, FrontOpts::default());
    let env = Env::new(&["a.test"], None);
    env.write_config("", "");
    let (_ca, _ca_key, leaf) = install_leaf_with_crl(&env, &front.crl_url("ca"));
    // Signed by another CA with the same name.
    let forged = {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let other_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "revoking test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let same_name = p.self_signed(&other_key).unwrap();
        crl(
            &same_name,
            &other_key,
            &leaf_serial(leaf.der()),
            rcgen::RevocationReason::KeyCompromise,
        )
    };
    front.set_crl("ca", forged);
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon.log"), &[]);
    daemon.wait_log(
        "could not learn the CA's view of the certificate",
        Duration::from_secs(20),
    );
    assert!(
        daemon.log().contains("the CRL's signature does not verify"),
        "{}",
        daemon.log()
    );
    daemon.wait_log("job finished cert=site result=", Duration::from_secs(20));
    assert_eq!(env.served(), leaf.der().to_vec());
    assert!(!daemon.log().contains("re-issuing"), "{}", daemon.log());
}
