//! Webhook notifications: the JSON document that arrives for each subscribed event, retries
//! when the receiver fails, and no effect on the outcome when it never answers well.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::Env;

/// A receiver that answers `status` to every POST and keeps the bodies.
type Bodies = Arc<Mutex<Vec<serde_json::Value>>>;

fn receiver(status: u16) -> (String, Bodies, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(Mutex::new(0));
    let (b, h) = (bodies.clone(), hits.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            *h.lock().unwrap() += 1;
            if let Ok(v) = serde_json::from_slice(&body) {
                b.lock().unwrap().push(v);
            }
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies, hits)
}

#[test]
fn subscribed_events_arrive_as_json() {
    let (url, bodies, _) = receiver(200);
    let env = Env::new(&["a.test"], None);
    let hooks = format!(
        "[notify.hook]\nkind = \"webhook\"\nurl = \"{url}\"\nevents = [\"installed\", \"rolled-back\"]\n"
    );
    env.write_config("", &hooks);
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    {
        let got = bodies.lock().unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        let e = &got[0];
        assert_eq!(e["schema"], 1);
        assert_eq!(e["event"], "installed");
        assert_eq!(e["certificate"], "site");
        assert_eq!(e["reason"], "forced");
        assert_eq!(e["serial"], common::cert_serial_hex(&env.served()).as_str());
        assert!(e["at"].as_str().unwrap().ends_with('Z'));
    }
    env.write_config_with_server("", &hooks, "test_command = [\"false\"]");
    assert_eq!(env.certagent(&["reissue", "--now", "site"]).code, 2);
    let got = bodies.lock().unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["event"], "rolled-back");
    assert!(
        got[1]["message"]
            .as_str()
            .unwrap()
            .contains("rolled back to generation"),
        "{}",
        got[1]
    );
}

#[test]
fn a_failing_receiver_is_retried_and_does_not_change_the_outcome() {
    let (url, _, hits) = receiver(500);
    let env = Env::new(&["a.test"], None);
    env.write_config(
        "",
        &format!(
            "[notify.hook]\nkind = \"webhook\"\nurl = \"{url}\"\nretries = 2\ntimeout = \"2s\"\n"
        ),
    );
    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(*hits.lock().unwrap(), 3, "one try and two retries");
    assert!(run.stderr.contains("failed to notify installed"), "{run:?}");
}
