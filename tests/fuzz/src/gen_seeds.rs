//! Writes small seed corpora for the fuzz targets: `gen_seeds DIR` fills DIR/TARGET/ with a few
//! valid (and a few nearly valid) inputs per target, made fresh with rcgen and certagent's own
//! types so they follow the code. Nothing here is checked in: keys are generated per run, but
//! the CRLs are signed with the crl target's fixed issuer key so they pass its signature check.

use std::path::Path;

// Built with the targets' coverage instrumentation, so it links libFuzzer's runtime (whose
// `main` it does not use) for the `__sanitizer_cov_*` hooks.
use libfuzzer_sys as _;

use certagent::control::Request;
use certagent::core::{KeySpec, Reason, Requested};
use certagent::keys::{PrivateKey, pem_encode};
use certagent_fuzz::{CRL_ISSUER_CN, crl_issuer_der, crl_issuer_key};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};

const CONFIG_EXAMPLE: &str = include_str!("../../../config.example.toml");

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("mkdir corpus");
    std::fs::write(d.join(format!("seed-{name}")), data).expect("write seed");
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// The inner key of a PKCS#8 PrivateKeyInfo (PKCS#1 for RSA, SEC1 for EC): the content of its
/// last top-level OCTET STRING. Enough DER for keys we just generated.
fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (
                b[2..2 + n].iter().fold(0usize, |a, &x| a << 8 | x as usize),
                2 + n,
            )
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, mut body, _) = tlv(der);
    let mut inner = Vec::new();
    while !body.is_empty() {
        let (tag, content, rest) = tlv(body);
        if tag == 0x04 {
            inner = content.to_vec();
        }
        body = rest;
    }
    inner
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: gen_seeds CORPUS_DIR");
    let dir = Path::new(&dir);

    // ---- pem_chain: root -> intermediate -> leaf (with SANs, CRL DP and AKI), and variants.
    let root_key = KeyPair::generate().expect("key");
    let root_params = ca_params("Fuzz Root");
    let root = root_params.clone().self_signed(&root_key).expect("root");
    let root_issuer = Issuer::new(root_params, &root_key);
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let mut int_params = ca_params("Fuzz Intermediate");
    int_params.use_authority_key_identifier_extension = true;
    let int = int_params
        .clone()
        .signed_by(&int_key, &root_issuer)
        .expect("intermediate");
    let int_issuer = Issuer::new(int_params, &int_key);
    let leaf_key = KeyPair::generate().expect("key");
    let mut leaf_params =
        CertificateParams::new(vec!["a.test".to_string(), "*.b.test".to_string()]).expect("leaf");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x87, 0x65, 0x43, 0x21]));
    leaf_params.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec!["http://crl.test/1.crl".into()],
    }];
    let leaf = leaf_params.signed_by(&leaf_key, &int_issuer).expect("leaf");
    let chain = format!("{}{}{}", leaf.pem(), int.pem(), root.pem());
    write(dir, "pem_chain", "chain3", chain.as_bytes());
    write(dir, "pem_chain", "leaf", leaf.pem().as_bytes());
    write(dir, "pem_chain", "leaf-der", leaf.der());
    write(
        dir,
        "pem_chain",
        "out-of-order",
        format!("{}{}", root.pem(), leaf.pem()).as_bytes(),
    );
    write(
        dir,
        "pem_chain",
        "crlf-headers",
        format!(
            "subject=a.test\r\nX-Note: hi\r\n{}",
            int.pem().replace('\n', "\r\n")
        )
        .as_bytes(),
    );
    write(
        dir,
        "pem_chain",
        "with-key",
        format!("{}{}", leaf.pem(), leaf_key.serialize_pem()).as_bytes(),
    );

    // ---- private_key: the formats the agent reads, and their raw DER (first byte = label).
    for (name, spec) in [
        ("p256", KeySpec::EcdsaP256),
        ("p384", KeySpec::EcdsaP384),
        ("rsa2048", KeySpec::Rsa2048),
    ] {
        let key = PrivateKey::generate(spec).expect("generate");
        let pkcs8_pem = key.to_pem();
        let pkcs8 = key.key_pair().serialize_der();
        let inner = pkcs8_inner(&pkcs8);
        let (label, sel) = if name.starts_with("rsa") {
            ("RSA PRIVATE KEY", 2u8)
        } else {
            ("EC PRIVATE KEY", 1u8)
        };
        write(
            dir,
            "private_key",
            &format!("{name}-pkcs8"),
            pkcs8_pem.as_bytes(),
        );
        write(
            dir,
            "private_key",
            &format!("{name}-inner"),
            pem_encode(label, &inner).as_bytes(),
        );
        let mut raw = vec![0u8];
        raw.extend_from_slice(&pkcs8);
        write(dir, "private_key", &format!("{name}-pkcs8-der"), &raw);
        let mut raw = vec![sel];
        raw.extend_from_slice(&inner);
        write(dir, "private_key", &format!("{name}-inner-der"), &raw);
    }
    write(
        dir,
        "private_key",
        "encrypted-legacy",
        b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    );

    // ---- crl: [serial length][serial][CRL], CRLs signed by the target's fixed issuer.
    let issuer_key = crl_issuer_key();
    let issuer =
        Issuer::from_ca_cert_der(&crl_issuer_der().to_vec().into(), &issuer_key).expect("issuer");
    let crl = |revoked: Vec<RevokedCertParams>| {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2026, 1, 8),
            crl_number: SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("crl")
    };
    let revoked = |serial: &[u8], reason: Option<RevocationReason>| RevokedCertParams {
        serial_number: SerialNumber::from_slice(serial),
        revocation_time: rcgen::date_time_ymd(2026, 1, 2),
        reason_code: reason,
        invalidity_date: Some(rcgen::date_time_ymd(2025, 12, 31)),
    };
    let full = crl(vec![
        revoked(&[0x00, 0x87, 0x65], Some(RevocationReason::KeyCompromise)),
        revoked(&[0x01], None),
        revoked(
            &[0x7f, 0xff, 0xff, 0xff, 0xff],
            Some(RevocationReason::Superseded),
        ),
    ]);
    let empty = crl(vec![]);
    let with_serial = |serial: &[u8], body: &[u8]| {
        let mut v = vec![serial.len() as u8];
        v.extend_from_slice(serial);
        v.extend_from_slice(body);
        v
    };
    write(
        dir,
        "crl",
        "listed",
        &with_serial(&[0x87, 0x65], full.der()),
    );
    write(dir, "crl", "not-listed", &with_serial(&[0x02], full.der()));
    write(dir, "crl", "empty", &with_serial(&[0x01], empty.der()));
    write(
        dir,
        "crl",
        "pem",
        &with_serial(&[0x01], pem_encode("X509 CRL", full.der()).as_bytes()),
    );
    let other_key = KeyPair::generate().expect("key");
    let other = ca_params(CRL_ISSUER_CN)
        .self_signed(&other_key)
        .expect("other");
    let forged = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 1, 1),
        next_update: rcgen::date_time_ymd(2026, 1, 8),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![revoked(&[0x01], None)],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&Issuer::from_ca_cert_der(other.der(), &other_key).expect("issuer"))
    .expect("crl");
    write(dir, "crl", "forged", &with_serial(&[0x01], forged.der()));

    // ---- config: the shipped example, a minimal one, and one with a conf.d drop-in (NUL).
    write(dir, "config", "example", CONFIG_EXAMPLE.as_bytes());
    let minimal = "[agent]\nstate_dir = \"/var/lib/certagent\"\nlock_timeout = \"5s\"\n\n\
        [server.web]\nkind = \"nginx\"\nverify = [\"127.0.0.1:443\"]\n\n\
        [certificate.site]\nnames = [\"a.test\", \"*.b.test\"]\nserver = \"web\"\n\
        cert_file = \"/etc/ssl/site.pem\"\nkey_file = \"/etc/ssl/site.key\"\n\
        key_type = \"ecdsa-p256\"\nkey_mode = \"0600\"\n";
    write(dir, "config", "minimal", minimal.as_bytes());
    let dropin = format!(
        "{minimal}\0[issuer.le]\nkind = \"acme\"\ndirectory = \"https://acme.test/dir\"\n\
         challenge = \"http-01\"\nlisten = \"127.0.0.1:80\"\n\n[notify.hook]\n\
         kind = \"webhook\"\nurl = \"https://hooks.test/x\"\nevents = [\"installed\", \"failed\"]\nretries = 3\n"
    );
    write(dir, "config", "dropin", dropin.as_bytes());
    write(dir, "config", "bad-toml", b"[agent\nstate_dir = 1h30m\n");

    // ---- control: every request kind, as the CLI sends it.
    let requests = [
        Request::Check {
            names: vec!["site".into()],
        },
        Request::Status { names: vec![] },
        Request::Reissue {
            names: vec!["www".into(), "api".into()],
            all: false,
            reason: Reason::KeyCompromised,
            wait: true,
            requested: Some(Requested::KeyCompromise),
        },
        Request::Reissue {
            names: vec![],
            all: true,
            reason: Reason::Forced,
            wait: false,
            requested: None,
        },
        Request::Import {
            name: "site".into(),
            certificate: leaf.pem(),
        },
    ];
    for (i, r) in requests.iter().enumerate() {
        let mut line = serde_json::to_vec(r).expect("request");
        line.push(b'\n');
        write(dir, "control", &format!("request-{i}"), &line);
    }

    // ---- renewal_info: RFC 9773 answers (last byte odd = with a Retry-After).
    let ri = [
        r#"{"suggestedWindow":{"start":"2026-12-01T00:00:00Z","end":"2026-12-02T00:00:00Z"},"explanationURL":"https://acme.test/why"}"#,
        r#"{"suggestedWindow":{"start":"2026-12-01T00:00:00.123+02:00","end":"2026-12-01T23:59:60Z"}} "#,
        r#"{"suggestedWindow":{"start":"2026-12-02T00:00:00Z","end":"2026-12-01T00:00:00Z"}}"#,
        r#"{"suggestedWindow":{"start":"2026-12-01T00:00:00Z"}}"#,
    ];
    for (i, body) in ri.iter().enumerate() {
        write(dir, "renewal_info", &format!("ari-{i}"), body.as_bytes());
    }
    println!("gen_seeds: wrote seed corpora to {}", dir.display());
}
