//! A hostile local user against certagent run as root, as in production: what it plants at a
//! certificate's configured paths is never read through, handed out, or destroyed.
//!
//! Each test creates an unprivileged user (`TestUser`, removed when the test ends), lets it
//! own the directory of the certificate's files (and be the certificate's `owner`, the setup
//! that gives it the most), and checks what root's certagent did with what it planted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Env, TestUser, TlsCa};

/// The env with its directory traversable by `user`, `ssl/` owned by it, and the certificate
/// owned by it; already re-issued once, so the key file is certagent's link.
fn owned_by(user: &TestUser) -> Env {
    let env = Env::new(&["a.test"], None);
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let ssl = env.key_file.parent().unwrap();
    user.chown(ssl);
    env.write_config(&format!("owner = {:?}", user.name), "");
    let first = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(first.code, 0, "{first:?}");
    env
}

/// A root-only private key elsewhere on the host: the prize.
fn root_only_key(env: &Env) -> (PathBuf, Vec<u8>) {
    let secret_dir = env.dir.path().join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ca = TlsCa::new(&env.dir.path().join("otherca"));
    let leaf = ca.issue_leaf(
        &["a.test"],
        std::time::SystemTime::now() - std::time::Duration::from_secs(86_400),
        std::time::SystemTime::now() + std::time::Duration::from_secs(30 * 86_400),
    );
    let (cert, key) = (secret_dir.join("other.pem"), secret_dir.join("other.key"));
    leaf.write(&cert, &key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bytes = std::fs::read(&key).unwrap();
    (key, bytes)
}

/// Every file under `dir` (recursively, links not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files_under(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// No file the user owns, and no generation, holds `secret`.
fn assert_not_handed_out(env: &Env, user: &TestUser, secret: &[u8]) {
    for f in files_under(&env.state_dir().join("live"))
        .into_iter()
        .chain(files_under(env.key_file.parent().unwrap()))
    {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            bytes != secret,
            "{} holds the root-only key (owner uid {}, user uid {})",
            f.display(),
            std::fs::metadata(&f).unwrap().uid(),
            user.uid
        );
    }
}

#[test]
fn a_key_symlink_planted_by_the_owner_is_never_adopted() {
    let user = TestUser::create();
    let env = owned_by(&user);
    let (secret_path, secret) = root_only_key(&env);
    // The user cannot read the key, but can point the configured key path at it.
    std::fs::remove_file(&env.key_file).unwrap();
    let planted = user.run(&[
        "ln",
        "-s",
        secret_path.to_str().unwrap(),
        env.key_file.to_str().unwrap(),
    ]);
    assert!(planted.status.success(), "{planted:?}");
    assert!(user.owns(&env.key_file));

    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_not_handed_out(&env, &user, &secret);
    assert!(
        run.stderr.contains(&format!(
            "not following key_file {:?}: a symlink owned by uid {}, not by root",
            env.key_file.display().to_string(),
            user.uid
        )),
        "{run:?}"
    );
    // What the user reads through the path now is the certificate's own new key.
    let read = user.run(&["cat", env.key_file.to_str().unwrap()]);
    assert!(read.status.success(), "{read:?}");
    assert_ne!(read.stdout, secret);
    assert!(env.serves_key_file());
    assert_eq!(std::fs::read(&secret_path).unwrap(), secret);
}

#[test]
fn a_hard_link_to_a_root_only_key_is_kept_verbatim_never_adopted() {
    // With fs.protected_hardlinks=0 a user can hard-link a file it cannot read; root making
    // the link here stands in for that.
    let user = TestUser::create();
    let env = owned_by(&user);
    let (secret_path, secret) = root_only_key(&env);
    std::fs::remove_file(&env.key_file).unwrap();
    std::fs::hard_link(&secret_path, &env.key_file).unwrap();

    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("it has 2 hard links"), "{run:?}");
    assert_not_handed_out(&env, &user, &secret);
    // Kept for the operator, root only.
    let kept: Vec<PathBuf> = files_under(&env.state_dir().join("kept/site"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), secret);
    let meta = std::fs::metadata(&kept[0]).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
}

#[test]
fn a_directory_swapped_for_a_symlink_redirects_nothing() {
    let user = TestUser::create();
    let env = owned_by(&user);
    let (secret_path, secret) = root_only_key(&env);
    // To swap a directory on the way the user must own the one above it: the certificate's
    // files live in home/ssl/, and the user owns both.
    let home = env.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    user.chown(&home);
    let ssl = home.join("ssl");
    std::fs::create_dir(&ssl).unwrap();
    user.chown(&ssl);
    let (cert_file, key_file) = (ssl.join("site.pem"), ssl.join("site.key"));
    std::fs::copy(&env.cert_file, &cert_file).unwrap();
    std::fs::copy(&env.key_file, &key_file).unwrap();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            &env.cert_file.display().to_string(),
            &cert_file.display().to_string(),
        )
        .replace(
            &env.key_file.display().to_string(),
            &key_file.display().to_string(),
        );
    std::fs::write(&env.config, text).unwrap();
    // Now the user swaps ssl/ for a link to the secret directory.
    let moved = user.run(&[
        "mv",
        ssl.to_str().unwrap(),
        home.join("old").to_str().unwrap(),
    ]);
    assert!(moved.status.success(), "{moved:?}");
    let secret_dir = secret_path.parent().unwrap();
    std::fs::rename(
        secret_path.with_file_name("other.key"),
        secret_dir.join("site.key"),
    )
    .unwrap();
    let planted = user.run(&[
        "ln",
        "-s",
        secret_dir.to_str().unwrap(),
        ssl.to_str().unwrap(),
    ]);
    assert!(planted.status.success(), "{planted:?}");

    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "{:?} on the way is a symlink owned by uid {}",
            "ssl", user.uid
        )),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("hint: certagent follows only symlinks owned by root"),
        "{run:?}"
    );
    // Root's files behind the link are untouched: still a regular file with the same key.
    let meta = std::fs::symlink_metadata(secret_dir.join("site.key")).unwrap();
    assert!(meta.is_file());
    assert_eq!(std::fs::read(secret_dir.join("site.key")).unwrap(), secret);
    assert!(!secret_dir.join("site.pem").exists());
    assert_not_handed_out(&env, &user, &secret);
}

#[test]
fn a_file_that_is_not_a_certificate_is_kept_verbatim_before_its_path_is_replaced() {
    let env = Env::new(&["a.test"], None);
    // chain_file pointing at an nginx config by mistake.
    let conf = env.dir.path().join("site.conf");
    let text = "server {\n    listen 443 ssl;\n}\n";
    std::fs::write(&conf, text).unwrap();
    env.write_config(
        &format!("chain_file = {:?}", conf.display().to_string()),
        "",
    );

    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "not adopting chain_file {:?}: it is not a PEM certificate chain; kept it verbatim in",
            conf.display().to_string()
        )),
        "{run:?}"
    );
    let kept = files_under(&env.state_dir().join("kept/site"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), text);
    let meta = std::fs::metadata(&kept[0]).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
}

#[test]
fn a_device_at_the_key_path_is_refused_and_left_alone() {
    let env = Env::new(&["a.test"], None);
    std::fs::remove_file(&env.key_file).unwrap();
    let made = std::process::Command::new("mknod")
        .args([env.key_file.to_str().unwrap(), "c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success());
    env.write_config("", "");

    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "refusing to take over {:?} (key_file): it is a character device",
            env.key_file.display().to_string()
        )),
        "{run:?}"
    );
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::symlink_metadata(&env.key_file).unwrap();
    assert!(meta.file_type().is_char_device());
    assert!(!env.state_dir().join("certs/site/pending.key").exists());
}

#[test]
fn a_corrupt_key_is_kept_verbatim_and_healed() {
    let env = Env::new(&["a.test"], None);
    let truncated = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n";
    std::fs::write(&env.key_file, truncated).unwrap();
    env.write_config("", "");

    let run = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(env.serves_key_file());
    let kept = files_under(&env.state_dir().join("kept/site"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), truncated);
}

/// Every `key.pem` of every kept generation, with its owner and mode.
fn generation_keys(env: &Env) -> Vec<(PathBuf, u32, u32)> {
    files_under(&env.state_dir().join("live/site"))
        .into_iter()
        .filter(|p| p.ends_with("key.pem"))
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (p, m.uid(), m.mode() & 0o777)
        })
        .collect()
}

#[test]
fn a_removed_owner_loses_every_kept_generation_without_a_new_key() {
    let user = TestUser::create();
    let env = owned_by(&user);
    let second = env.certagent(&["reissue", "--now", "site"]);
    assert_eq!(second.code, 0, "{second:?}");
    // gen-0: the files found at the start (root's, adopted); gen-1 and gen-2: made for the user.
    let keys = generation_keys(&env);
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(
        keys.iter().filter(|(_, uid, _)| *uid == user.uid).count(),
        2,
        "{keys:?}"
    );
    let served = env.served();

    // The user is taken out of the configuration.
    env.write_config("", "");
    let check = env.certagent(&["check", "--json"]);
    assert_eq!(check.code, 1, "{check:?}");
    let doc = check.json();
    assert_eq!(doc["certificates"][0]["reason"], "permissions-changed");
    assert_eq!(doc["certificates"][0]["action"], "fix-permissions");
    let text = env.certagent(&["check"]);
    assert!(
        text.stdout
            .starts_with("site: needs its access fixed (no new key): permissions-changed (")
            && text.stdout.contains(&format!(
                "key.pem of generation 2: uid {} gid 0 mode 0600, configured uid 0 gid 0 mode 0600",
                user.uid
            )),
        "{text:?}"
    );

    // The daemon fixes it in place.
    let log = env.dir.path().join("daemon.log");
    let mut daemon = common::Daemon::start(&env.config, &log, &[]);
    daemon.wait_log(
        "fixed the access of key.pem of generation 1",
        std::time::Duration::from_secs(20),
    );
    daemon.wait_log(
        "fixed the access of key.pem of generation 2",
        std::time::Duration::from_secs(20),
    );
    let healthy = env.certagent(&["check"]);
    assert_eq!(healthy.code, 0, "{healthy:?}\n{}", daemon.log());
    daemon.stop();
    let keys = generation_keys(&env);
    assert!(
        keys.iter()
            .all(|(_, uid, mode)| *uid == 0 && *mode == 0o600),
        "{keys:?}"
    );
    assert!(
        user.run(&["cat", env.key_file.to_str().unwrap()])
            .stdout
            .is_empty()
    );
    // No new key, no re-issue: the same leaf is served.
    assert_eq!(env.served(), served);
    assert!(!daemon.log().contains("re-issuing"), "{}", daemon.log());
}
