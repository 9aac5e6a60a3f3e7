//! The fault matrix (reliability.md F1–F28) as far as it runs here: for each fault, run the
//! real binary against a real nginx, inject the fault, let it die or fail, run it again, and
//! check the invariants I1–I7 after every case. One test per fault; each collects every
//! violated invariant of its cases, fails with all of them, and prints one summary line:
//! `faults: NAME: N injected, M invariant checks, 0 violations`.
//!
//! The faults are local to each test's own temporary directory (a tmpfs or read-only bind
//! mount on its own state or certificate directory, the immutable flag on its own key file),
//! so they run in parallel; only `hostile_files`, which compares /etc/shadow before and after,
//! holds the harness's lock on the user database (see `common::user_db_lock`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, Run, run_certagent, spki_of_cert_der, spki_of_key_pem};

/// Collects invariant checks and their violations.
#[derive(Default)]
struct Checks {
    faults: usize,
    checks: usize,
    violations: Vec<String>,
}

impl Checks {
    fn check(&mut self, case: &str, inv: &str, ok: bool, detail: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.violations.push(format!("{case}: {inv}: {}", detail()));
        }
    }

    /// The run failed as it should: exit 2, stderr containing `says` (I7), the invariants
    /// hold and the old certificate is still served (I2).
    fn failed_cleanly(&mut self, case: &str, env: &Env, run: &Run, says: &str) {
        self.exit(case, run, 2);
        self.check(
            case,
            "I7 the error says why",
            run.stderr.contains(says),
            || format!("{run:?}"),
        );
        self.invariants(case, env);
        self.check(
            case,
            "I2 the old certificate is still served",
            env.served() == env.initial_leaf,
            String::new,
        );
    }

    /// I1 pair integrity on disk, I2 served key retained, I3 server up, I5 key modes.
    fn invariants(&mut self, case: &str, env: &Env) {
        let cert = std::fs::read_to_string(&env.cert_file);
        let key = std::fs::read_to_string(&env.key_file);
        let pair_ok = match (&cert, &key) {
            (Ok(c), Ok(k)) => spki_of_cert_der(&common::pem_to_der(c)) == spki_of_key_pem(k),
            _ => false,
        };
        self.check(
            case,
            "I1 pair at the configured paths parses and matches",
            pair_ok,
            || {
                format!(
                    "cert {:?}, key {:?}",
                    cert.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
                    key.as_ref().map(|_| "ok").map_err(|e| e.to_string())
                )
            },
        );
        let alive = env.nginx.is_alive();
        self.check(case, "I3 nginx master alive", alive, String::new);
        let served = common::served_leaf(&env.addr(), &env.names[0]);
        self.check(
            case,
            "I3 a certificate is served",
            served.is_some(),
            String::new,
        );
        if let Some(served) = served {
            let spki = spki_of_cert_der(&served);
            let on_disk = all_keys(env).iter().any(|k| spki_of_key_pem(k) == spki);
            self.check(
                case,
                "I2 the served key exists on disk",
                on_disk,
                String::new,
            );
        }
        // Files certagent wrote (its generations, and the configured path once it is
        // certagent's symlink); an operator's own file keeps whatever mode it had.
        let ours = |p: &Path| {
            p != env.key_file
                || std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
        };
        for path in key_files(env).into_iter().filter(|p| ours(p)) {
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            self.check(case, "I5 key files are 0600", mode & 0o077 == 0, || {
                format!("{} is {mode:o}", path.display())
            });
        }
    }

    /// I6: no staging directories or temp files left anywhere we write.
    fn no_garbage(&mut self, case: &str, env: &Env) {
        let mut found = Vec::new();
        for dir in [
            env.state_dir().join("live/site"),
            env.cert_file.parent().unwrap().to_path_buf(),
        ] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(".staging-") || n.ends_with(".certagent-tmp") {
                    found.push(e.path());
                }
            }
        }
        self.check(case, "I6 no garbage left", found.is_empty(), || {
            format!("{found:?}")
        });
    }

    /// I7: the exit code tells the truth.
    fn exit(&mut self, case: &str, run: &Run, want: i32) {
        self.check(case, "I7 exit code", run.code == want, || {
            format!("wanted {want}: {run:?}")
        });
    }
}

fn key_files(env: &Env) -> Vec<PathBuf> {
    let mut out = vec![env.key_file.clone()];
    for g in std::fs::read_dir(env.state_dir().join("live/site"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let k = g.path().join("key.pem");
        if k.exists() {
            out.push(k);
        }
    }
    out.retain(|p| p.exists());
    out
}

fn all_keys(env: &Env) -> Vec<String> {
    key_files(env)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

fn reissue(env: &Env, failpoint: Option<&str>) -> Run {
    let env_vars: Vec<(&str, &str)> = failpoint
        .map(|f| vec![("CERTAGENT_FAILPOINT", f)])
        .unwrap_or_default();
    run_certagent(&env.config, &["reissue", "--now", "site"], &env_vars)
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs one fault scenario (needs root: mounts, chattr) and fails with every violated
/// invariant, named by case.
fn scenario(name: &str, f: impl FnOnce(&mut Checks)) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{name}: the fault matrix needs root (mounts, chattr); CI runs as root"
    );
    let mut c = Checks::default();
    f(&mut c);
    println!(
        "faults: {name}: {} injected, {} invariant checks, {} violations",
        c.faults,
        c.checks,
        c.violations.len()
    );
    assert!(
        c.violations.is_empty(),
        "{name}: violations:\n{}",
        c.violations.join("\n")
    );
}

/// Unmounts on drop (only what this test mounted).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn kill_at_every_step() {
    scenario("kill_at_every_step", |c| {
        for point in [
            "after-key-persisted",
            "after-issued",
            "before-publish",
            "before-flip",
            "after-flip",
            "after-reload",
        ] {
            let case = format!("F1-F3 SIGKILL at {point}");
            let env = Env::new(&["a.test"], None);
            env.write_config("", "");
            // Once through, so the second re-issue crashes with a previous generation on disk.
            assert_eq!(reissue(&env, None).code, 0);
            c.faults += 1;
            let run = reissue(&env, Some(point));
            c.exit(&case, &run, -1);
            c.invariants(&case, &env);
            let rerun = reissue(&env, None);
            c.exit(&format!("{case}, rerun"), &rerun, 0);
            c.invariants(&format!("{case}, rerun"), &env);
            c.no_garbage(&format!("{case}, rerun"), &env);
            let key = std::fs::read_to_string(&env.key_file).unwrap();
            c.check(
                &case,
                "I4 converged: the key file's key is served",
                spki_of_cert_der(&env.served()) == spki_of_key_pem(&key),
                String::new,
            );
        }
    });
}

#[test]
fn disk_full() {
    scenario("disk_full", |c| {
        let case = "F5 ENOSPC in the state directory";
        let env = Env::new(&["a.test"], None);
        env.write_config("", "");
        let state = env.state_dir();
        std::fs::create_dir_all(&state).unwrap();
        // A fresh tmpfs is 1777, which certagent refuses as a state directory; a real one is
        // root's alone.
        assert!(
            sh(&format!(
                "mount -t tmpfs -o size=12k,mode=0700 tmpfs {}",
                state.display()
            )),
            "{case}: mount tmpfs (needs root)"
        );
        let _m = Mount(state.clone());
        c.faults += 1;
        let run = reissue(&env, None);
        c.failed_cleanly(case, &env, &run, "No space left on device");
    });
}

#[test]
fn read_only_target_dir() {
    scenario("read_only_target_dir", |c| {
        let case = "F7 EROFS on the certificate directory";
        let env = Env::new(&["a.test"], None);
        env.write_config("", "");
        let ssl = env.cert_file.parent().unwrap().to_path_buf();
        assert!(
            sh(&format!(
                "mount --bind {0} {0} && mount -o remount,bind,ro {0}",
                ssl.display()
            )),
            "{case}: ro bind mount"
        );
        let m = Mount(ssl.clone());
        c.faults += 1;
        let run = reissue(&env, None);
        c.failed_cleanly(case, &env, &run, "Read-only file system");
        drop(m);
        let rerun = reissue(&env, None);
        c.exit(&format!("{case}, after remount rw"), &rerun, 0);
        c.invariants(&format!("{case}, after remount rw"), &env);
        c.no_garbage(&format!("{case}, after remount rw"), &env);
    });
}

#[test]
fn immutable_key() {
    scenario("immutable_key", |c| {
        let case = "F7 EPERM: chattr +i on the key file";
        let env = Env::new(&["a.test"], None);
        env.write_config("", "");
        if !sh(&format!("chattr +i {}", env.key_file.display())) {
            // tmpfs /tmp has no immutable flag; the rest of the matrix still runs.
            c.check(
                case,
                "chattr +i is supported on this filesystem",
                false,
                || "skipped: chattr failed".into(),
            );
            return;
        }
        c.faults += 1;
        let run = reissue(&env, None);
        let _ = sh(&format!("chattr -i {}", env.key_file.display()));
        c.failed_cleanly(case, &env, &run, "Operation not permitted");
    });
}

#[test]
fn reload_hangs() {
    scenario("reload_hangs", |c| {
        let case = "F14 reload hangs";
        let env = Env::new(&["a.test"], None);
        env.write_config_with_server(
            "",
            "",
            &format!(
                "test_command = {}\nreload_command = [\"sleep\", \"30\"]\ncommand_timeout = \"1s\"",
                common::toml_list(&env.nginx.test_command())
            ),
        );
        c.faults += 1;
        let started = std::time::Instant::now();
        let run = reissue(&env, None);
        c.exit(case, &run, 2);
        c.check(
            case,
            "I7 the error says the reload was killed",
            run.stderr
                .contains("did not finish within 1s and was killed"),
            || format!("{run:?}"),
        );
        c.check(
            case,
            "F14 gives up quickly",
            started.elapsed().as_secs() < 20,
            || format!("{:?}", started.elapsed()),
        );
        c.invariants(case, &env);
        c.check(
            case,
            "I2 the old certificate is still served",
            env.served() == env.initial_leaf,
            String::new,
        );
    });
}

#[test]
fn server_not_running() {
    scenario("server_not_running", |c| {
        let case = "F16 web server not running";
        let mut env = Env::new(&["a.test"], None);
        env.write_config("", "");
        env.nginx.stop();
        c.faults += 1;
        let run = run_certagent(&env.config, &["reissue", "--now", "site", "--json"], &[]);
        c.exit(case, &run, 0);
        c.check(
            case,
            "I7 says installed, not loaded",
            run.stdout.contains("\"installed-not-loaded\""),
            || format!("{run:?}"),
        );
        c.check(
            case,
            "F16 the server is not started",
            !env.nginx.is_alive(),
            String::new,
        );
        let cert = std::fs::read_to_string(&env.cert_file).unwrap();
        let key = std::fs::read_to_string(&env.key_file).unwrap();
        c.check(
            case,
            "I1 the installed pair matches",
            spki_of_cert_der(&common::pem_to_der(&cert)) == spki_of_key_pem(&key),
            String::new,
        );
    });
}

#[test]
fn hostile_files() {
    scenario("hostile_files", |c| {
        // F22: the configured certificate path is a symlink to /etc/shadow. No test of this
        // process adds or removes a user meanwhile (it would change /etc/shadow).
        let _users = common::user_db_lock();
        let case = "F22 cert_file is a symlink to /etc/shadow";
        let env = Env::new(&["a.test"], None);
        env.write_config("", "");
        let shadow_before = std::fs::read("/etc/shadow").unwrap();
        std::fs::remove_file(&env.cert_file).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", &env.cert_file).unwrap();
        c.faults += 1;
        let check = run_certagent(&env.config, &["check", "--json"], &[]);
        c.exit(case, &check, 1);
        let shadow_line = String::from_utf8_lossy(&shadow_before)
            .lines()
            .next()
            .unwrap_or("root:")
            .split(':')
            .take(2)
            .collect::<Vec<_>>()
            .join(":");
        c.check(
            case,
            "I5 nothing of /etc/shadow is printed",
            !check.stdout.contains(&shadow_line) && !check.stderr.contains(&shadow_line),
            || format!("{check:?}"),
        );
        let run = reissue(&env, None);
        c.exit(case, &run, 0);
        c.check(
            case,
            "F22 /etc/shadow untouched",
            std::fs::read("/etc/shadow").unwrap() == shadow_before,
            String::new,
        );
        let copied = walk(&env.state_dir()).iter().any(|p| {
            std::fs::read(p).is_ok_and(|b| {
                !shadow_line.is_empty() && String::from_utf8_lossy(&b).contains(&shadow_line)
            })
        });
        c.check(
            case,
            "I5 /etc/shadow was not copied into the state directory",
            !copied,
            String::new,
        );
        c.check(
            case,
            "F22 the path is now certagent's symlink",
            std::fs::read_link(&env.cert_file).is_ok_and(|t| t.starts_with(env.state_dir())),
            String::new,
        );
        c.invariants(case, &env);

        // F23: hostile existing files are judged invalid, never crash or hang.
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "F23 a 2 MiB PEM",
                vec![b'A'; 2 << 20],
                "larger than 1024 KiB",
            ),
            (
                "F23 10,000 PEM blocks",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                    .repeat(10_000)
                    .into_bytes(),
                "more than 16 PEM blocks",
            ),
            (
                "F23 binary junk",
                (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
                "not text",
            ),
            ("F23 a FIFO", Vec::new(), "not a regular file"),
        ];
        for (case, content, want) in cases {
            let env = Env::new(&["a.test"], None);
            env.write_config("", "");
            std::fs::remove_file(&env.cert_file).unwrap();
            if case.ends_with("FIFO") {
                nix::unistd::mkfifo(
                    &env.cert_file,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                )
                .unwrap();
            } else {
                std::fs::write(&env.cert_file, &content).unwrap();
            }
            c.faults += 1;
            let check = run_certagent(&env.config, &["check", "--json"], &[]);
            c.exit(case, &check, 1);
            let problems = check.json()["certificates"][0]["problems"].to_string();
            c.check(
                case,
                "I7 the problem is named",
                problems.contains(want),
                || problems.clone(),
            );
            let run = reissue(&env, None);
            if case.ends_with("FIFO") {
                // F22: a FIFO (device, socket, directory) at a configured path is refused, and
                // stays; a regular file is kept verbatim in STATE/kept/ and then replaced.
                c.exit(&format!("{case}, refused"), &run, 2);
                c.check(
                    case,
                    "F22 the FIFO is refused by name and left in place",
                    run.stderr.contains("it is a FIFO")
                        && std::fs::symlink_metadata(&env.cert_file)
                            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type())),
                    || format!("{run:?}"),
                );
                continue;
            }
            c.exit(&format!("{case}, re-issued"), &run, 0);
            c.check(
                case,
                "I5 the replaced file is kept verbatim",
                walk(&env.state_dir().join("kept"))
                    .iter()
                    .any(|p| std::fs::read(p).is_ok_and(|b| b == content)),
                String::new,
            );
            c.invariants(&format!("{case}, re-issued"), &env);
        }
    });
}

#[test]
fn hostile_keys() {
    scenario("hostile_keys", |c| {
        // An RSA-512 key (and its certificate) in service: replaced, never accepted.
        let case = "F23 an RSA-512 pair in service";
        let env = Env::new(&["a.test"], None);
        env.write_config("", "");
        let dir = env.dir.path();
        let ok = sh(&format!(
            "openssl req -x509 -newkey rsa:512 -nodes -subj /CN=a.test -addext subjectAltName=DNS:a.test -days 30 -keyout {0}/weak.key -out {0}/weak.pem 2>/dev/null",
            dir.display()
        ));
        if !ok {
            c.check(case, "openssl can make an RSA-512 key", false, || {
                "openssl refused".into()
            });
            return;
        }
        std::fs::copy(dir.join("weak.pem"), &env.cert_file).unwrap();
        std::fs::copy(dir.join("weak.key"), &env.key_file).unwrap();
        c.faults += 1;
        let check = run_certagent(&env.config, &["check", "--json"], &[]);
        c.exit(case, &check, 1);
        c.check(
            case,
            "I7 judged key-type-changed",
            check.json()["certificates"][0]["reasons"]
                .to_string()
                .contains("key-type-changed"),
            || check.stdout.clone(),
        );
        let run = reissue(&env, None);
        c.exit(case, &run, 0);
        c.invariants(case, &env);

        // An encrypted key in service: reported, replaced.
        let case = "F23 an encrypted key in service";
        let env = Env::new(&["a.test"], None);
        env.write_config("", "");
        let ok = sh(&format!(
            "openssl pkey -in {0} -aes256 -passout pass:x -out {0}.enc 2>/dev/null && mv {0}.enc {0}",
            env.key_file.display()
        ));
        c.check(case, "openssl can encrypt the key", ok, String::new);
        c.faults += 1;
        let check = run_certagent(&env.config, &["check", "--json"], &[]);
        c.exit(case, &check, 1);
        let problems = check.json()["certificates"][0]["problems"].to_string();
        c.check(
            case,
            "I7 the problem is named",
            problems.contains("encrypted"),
            || problems.clone(),
        );
        c.check(
            case,
            "I5 no key bytes are printed",
            !check.stdout.contains("ENCRYPTED") && !check.stderr.contains("BEGIN"),
            || check.stdout.clone(),
        );
    });
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        } else if e.file_type().is_ok_and(|t| t.is_file()) {
            out.push(p);
        }
    }
    out
}

#[test]
fn misbehaving_ca() {
    scenario("misbehaving_ca", |c| {
        // F11 broken chain, F12 other names, F18/F19 certificates outside their validity (what a
        // CA or host with a skewed clock produces): rejected before anything is visible.
        for (point, want) in [
            ("ca-broken-chain", "chain is out of order"),
            ("ca-wrong-names", "not the configured names"),
            ("ca-expired", "the certificate expired at"),
            ("ca-not-yet-valid", "is not valid until"),
            (
                "issue-foreign-key",
                "the certificate is for a different key",
            ),
        ] {
            let case = format!("F11/F12/F18/F19 CA answer {point}");
            let env = Env::new(&["a.test"], None);
            env.write_config("", "");
            c.faults += 1;
            let run = reissue(&env, Some(point));
            c.failed_cleanly(&case, &env, &run, want);
            let rerun = reissue(&env, None);
            c.exit(&format!("{case}, rerun with a sane CA"), &rerun, 0);
            c.invariants(&format!("{case}, rerun with a sane CA"), &env);
            c.no_garbage(&format!("{case}, rerun with a sane CA"), &env);
        }
    });
}

#[test]
fn fsync_fails() {
    scenario("fsync_fails", |c| {
        // F6: fsync reports EIO (strace injects it into the N-th fsync) — the run fails, nothing
        // half-written is referenced, and a later run converges.
        if !sh("command -v strace >/dev/null") {
            c.check("F6 fsync EIO", "strace is installed", false, || {
                "install strace".into()
            });
            return;
        }
        for nth in [1, 3, 6, 9] {
            let case = format!("F6 EIO from fsync number {nth}");
            let env = Env::new(&["a.test"], None);
            env.write_config("", "");
            c.faults += 1;
            let out = Command::new("strace")
                .args([
                    "-f",
                    "-o",
                    "/dev/null",
                    "-e",
                    "trace=fsync",
                    "-e",
                    &format!("inject=fsync:error=EIO:when={nth}"),
                ])
                .arg(env!("CARGO_BIN_EXE_certagent"))
                .args([
                    "--config",
                    env.config.to_str().unwrap(),
                    "reissue",
                    "--now",
                    "site",
                ])
                .output()
                .unwrap();
            let run = Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            c.exit(&case, &run, 2);
            c.check(
                &case,
                "I7 the error says why",
                run.stderr.contains("Input/output error"),
                || format!("{run:?}"),
            );
            c.invariants(&case, &env);
            let rerun = reissue(&env, None);
            c.exit(&format!("{case}, rerun"), &rerun, 0);
            c.invariants(&format!("{case}, rerun"), &env);
            c.no_garbage(&format!("{case}, rerun"), &env);
        }
    });
}

#[test]
fn foreign_reloads() {
    scenario("foreign_reloads", |c| {
        // F25: an administrator (or logrotate) reloads nginx over and over while certagent flips.
        let case = "F25 foreign reloads during re-issues";
        let env = Env::new(&["a.test"], None);
        env.write_config("", "");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, reload) = (stop.clone(), env.nginx.reload_command());
        let hammer = std::thread::spawn(move || {
            let mut n = 0;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new(&reload[0]).args(&reload[1..]).output();
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            n
        });
        for round in 0..4 {
            c.faults += 1;
            let run = reissue(&env, None);
            c.exit(&format!("{case}, round {round}"), &run, 0);
            c.invariants(&format!("{case}, round {round}"), &env);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reloads = hammer.join().unwrap();
        c.check(
            case,
            "the hammer really reloaded nginx",
            reloads > 10,
            || format!("{reloads} reloads"),
        );
        let key = std::fs::read_to_string(&env.key_file).unwrap();
        c.check(
            case,
            "I4 the key file's key is served",
            spki_of_cert_der(&env.served()) == spki_of_key_pem(&key),
            String::new,
        );
    });
}
