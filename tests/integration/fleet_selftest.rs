//! The fleet rig's own parts, without the daemon's fleet code: the balancer spreads
//! connections over the three hosts, a token in every webroot is fetched through it, and
//! Pebble validates http-01 for real through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::fleet::{CERT, FleetRig};
use common::{cert_serial_hex, http_get, spki_of_cert_der, spki_of_key_pem};

#[test]
fn the_balancer_spreads_connections_and_serves_a_token_from_every_webroot() {
    let rig = FleetRig::start();
    // A different answer per host: which host answered is visible.
    for h in &rig.hosts {
        std::fs::write(h.challenge_dir().join("who"), &h.node).unwrap();
    }
    for h in &rig.hosts {
        let r = http_get(h.http_port, "/.well-known/acme-challenge/who").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, h.node.as_str()));
    }
    let mut answers = Vec::new();
    for _ in 0..6 {
        let r = http_get(rig.balancer.port, "/.well-known/acme-challenge/who").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        answers.push(r.body);
    }
    assert_eq!(answers, ["h0", "h1", "h2", "h0", "h1", "h2"]);
    assert_eq!(rig.balancer.counts(), [2, 2, 2]);

    // One token in all three webroots is served whichever host is reached.
    for h in &rig.hosts {
        std::fs::write(h.challenge_dir().join("tok"), "tok.thumbprint").unwrap();
    }
    for _ in 0..3 {
        let r = http_get(rig.balancer.port, "/.well-known/acme-challenge/tok").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "tok.thumbprint"));
    }
    // A token on one host only is missing on the next one.
    std::fs::write(rig.hosts[0].challenge_dir().join("one"), "x").unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            http_get(rig.balancer.port, "/.well-known/acme-challenge/one")
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 404, 404]);
    assert_eq!(rig.balancer.counts(), [4, 4, 4]);
}

#[test]
fn pebble_validates_http01_through_the_balancer() {
    let rig = FleetRig::start();
    // A plain certagent on h0 whose webroot every host serves: validation succeeds
    // whichever host Pebble's request reaches.
    let webroot = rig.share_challenge_dirs();
    rig.write_config(0, false, Some(&webroot));
    let h0 = &rig.hosts[0];
    let before = rig.balancer.accepted();
    let run = h0.certagent(&["reissue", "--now", CERT]);
    assert_eq!(run.code, 0, "{run:?}\n{}", rig.pebble.log());
    assert_eq!(rig.orders(), 1);
    assert!(
        rig.balancer.accepted() > before,
        "Pebble's validation did not come through the balancer: {:?}",
        rig.balancer.counts()
    );
    // Pebble validates from three perspectives at once: the balancer spreads them.
    assert!(
        rig.balancer.backends_reached() >= 2,
        "{:?}\n{}",
        rig.balancer.counts(),
        rig.pebble.pebble_log()
    );
    let served = h0.served().expect("h0 answers");
    assert_ne!(served, h0.initial_leaf);
    let key = std::fs::read_to_string(&h0.key_file).unwrap();
    assert_eq!(spki_of_cert_der(&served), spki_of_key_pem(&key));
    let status = rig
        .pebble
        .cert_status(&cert_serial_hex(&served))
        .expect("Pebble issued the served leaf");
    assert_eq!(status["Status"], "Valid");
    // The other hosts were not touched.
    for h in &rig.hosts[1..] {
        assert_eq!(h.served().as_deref(), Some(h.initial_leaf.as_slice()));
    }
}
