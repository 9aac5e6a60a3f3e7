//! A CA that needs a human (the seed article's flow): the CSR goes out, the re-issue is
//! pending for as long as it takes (across daemon restarts), and the certificate that comes
//! back is installed only if it is for the pending key and the configured names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, Env, spki_of_cert_der, spki_of_key_pem, wait_until};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// The CA "at the other end of the approval e-mail".
struct HumanCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl HumanCa {
    fn new() -> HumanCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "approval-mail CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        HumanCa {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// Sign a CSR as submitted, optionally overriding the names it asked for.
    fn sign(&self, csr_pem: &str, names: Option<&[&str]>) -> String {
        let der = common::pem_to_der(csr_pem);
        let mut csr = CertificateSigningRequestParams::from_der(&der.into()).unwrap();
        if let Some(names) = names {
            csr.params.subject_alt_names = names
                .iter()
                .map(|n| rcgen::SanType::DnsName((*n).try_into().unwrap()))
                .collect();
        }
        csr.params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        csr.params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(90);
        let issuer = Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        let leaf = csr.signed_by(&issuer).unwrap();
        format!("{}{}", leaf.pem(), self.cert.pem())
    }

    /// A certificate for the right names but some other key.
    fn sign_foreign(&self, names: &[&str]) -> String {
        let other = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        format!(
            "{}{}",
            params.signed_by(&other, &issuer).unwrap().pem(),
            self.cert.pem()
        )
    }
}

fn setup() -> (Env, std::path::PathBuf) {
    let env = Env::new(&["a.test"], None);
    let events = env.dir.path().join("events.log");
    let issuer = format!(
        "[issuer.ca]\nkind = \"manual\"\nremind_every = \"1h\"\n\n[notify.log]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo $CERTAGENT_EVENT $CERTAGENT_CERT >> {}\"]\n",
        events.display()
    );
    env.write_config("issuer = \"ca\"", &issuer);
    (env, events)
}

fn csr_of(env: &Env) -> String {
    std::fs::read_to_string(env.state_dir().join("outbox/site.csr")).expect("CSR in the outbox")
}

fn events(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_re_issue_waits_for_the_human_across_restarts_and_installs_what_comes_back() {
    let (env, events_file) = setup();
    let run = env.certagent(&["reissue", "--now", "site", "--json"]);
    assert_eq!(run.code, 75, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["certificates"][0]["result"], "pending");
    assert!(
        doc["certificates"][0]["hint"]
            .as_str()
            .unwrap()
            .contains("certagent import site FILE"),
        "{doc}"
    );
    let csr = csr_of(&env);
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    assert!(
        run.stderr.contains("-----BEGIN CERTIFICATE REQUEST-----"),
        "the CSR is also in the log: {run:?}"
    );
    assert!(
        events(&events_file).contains("pending-approval site"),
        "{}",
        events(&events_file)
    );
    // The old certificate stays in service, and status says what is awaited.
    assert_eq!(env.served(), env.initial_leaf);
    let status = env.certagent(&["status", "--json"]).json();
    assert_eq!(status["certificates"][0]["last"]["result"], "pending");
    assert!(status["certificates"][0]["pending"]["since"].is_string());
    // Asking again is idempotent: same CSR, still pending.
    assert_eq!(env.certagent(&["reissue", "--now", "site"]).code, 75);
    assert_eq!(csr_of(&env), csr);

    // The daemon comes and goes; the pending re-issue stays.
    let mut daemon = Daemon::start(&env.config, &env.dir.path().join("daemon1.log"), &[]);
    assert_eq!(daemon.stop(), Some(0));
    let daemon = Daemon::start(&env.config, &env.dir.path().join("daemon2.log"), &[]);
    assert_eq!(csr_of(&env), csr, "the restart made a new CSR");

    // Days later the CA's mail arrives: the operator drops the certificate into the inbox.
    let ca = HumanCa::new();
    let signed = ca.sign(&csr, None);
    let inbox = env.state_dir().join("inbox");
    std::fs::write(inbox.join("site.pem"), &signed).unwrap();
    let installed = wait_until(Duration::from_secs(20), || {
        let key = std::fs::read_to_string(&env.key_file).unwrap_or_default();
        env.served() != env.initial_leaf && spki_of_cert_der(&env.served()) == spki_of_key_pem(&key)
    });
    assert!(installed, "{}", daemon.log());
    daemon.wait_log("event=installed", Duration::from_secs(10));
    assert_eq!(env.served(), common::pem_to_der(&signed));
    // The inbox file is removed once the import has finished, just after it is logged.
    assert!(
        wait_until(Duration::from_secs(10), || !inbox.join("site.pem").exists()),
        "the inbox file was not consumed"
    );
    assert!(
        wait_until(Duration::from_secs(5), || events(&events_file)
            .contains("installed site")),
        "{}",
        events(&events_file)
    );
}

#[test]
fn a_certificate_for_another_key_or_other_names_is_refused_and_nothing_is_installed() {
    let (env, _) = setup();
    assert_eq!(env.certagent(&["reissue", "--now", "site"]).code, 75);
    let ca = HumanCa::new();
    let dir = env.dir.path();

    std::fs::write(dir.join("foreign.pem"), ca.sign_foreign(&["a.test"])).unwrap();
    let run = env.certagent(&["import", "site", dir.join("foreign.pem").to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(
            "the certificate is not for the pending key of \"site\": nothing was installed"
        ),
        "{run:?}"
    );

    std::fs::write(
        dir.join("names.pem"),
        ca.sign(&csr_of(&env), Some(&["a.test", "evil.test"])),
    )
    .unwrap();
    let run = env.certagent(&["import", "site", dir.join("names.pem").to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not the configured names"), "{run:?}");
    assert_eq!(env.served(), env.initial_leaf);

    // With the daemon, a wrong file in the inbox is set aside with the reason.
    let daemon = Daemon::start(&env.config, &dir.join("daemon.log"), &[]);
    let inbox = env.state_dir().join("inbox");
    std::fs::write(inbox.join("wrong.pem"), ca.sign_foreign(&["a.test"])).unwrap();
    let rejected = inbox.join("rejected");
    assert!(
        wait_until(Duration::from_secs(10), || rejected
            .join("wrong.pem.error")
            .exists()),
        "{}",
        daemon.log()
    );
    assert!(
        std::fs::read_to_string(rejected.join("wrong.pem.error"))
            .unwrap()
            .contains("not for the key of any pending re-issue")
    );
    assert_eq!(env.served(), env.initial_leaf);

    // The right one, by command, through the daemon.
    std::fs::write(dir.join("good.pem"), ca.sign(&csr_of(&env), None)).unwrap();
    let run = env.certagent(&[
        "import",
        "site",
        dir.join("good.pem").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}\n{}", daemon.log());
    assert_eq!(run.json()["certificates"][0]["result"], "installed");
    assert_ne!(env.served(), env.initial_leaf);
    // Nothing is pending any more.
    let run = env.certagent(&["import", "site", dir.join("good.pem").to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("has no pending re-issue"), "{run:?}");
}
