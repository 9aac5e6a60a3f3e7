//! Sealing private keys for etcd: AES-256-GCM under the fleet key, bound to the certificate's
//! name and generation. Nothing leaves the host in the clear; this module never logs, and its
//! errors never carry key material.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Format tag at the start of every sealed blob, so a later format can be told apart.
const MAGIC: &[u8; 4] = b"cas1";
/// Largest key file read: raw (32), hex (64) or base64 (44), each with some trailing space.
const MAX_KEY_FILE: u64 = 256;
const KEY_HINT: &str = "create it with `head -c 32 /dev/urandom > FILE` (or `openssl rand -hex 32`), the same on every host, owned by root, mode 0400";

/// The fleet's 32-byte key, the same on every host. Wiped from memory on drop.
pub struct FleetKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// The key from its bytes (tests, or a key delivered by other means).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        FleetKey(Zeroizing::new(bytes))
    }

    /// Reads the key file: exactly 32 raw bytes, or 64 hex digits, or 32 bytes in standard
    /// base64 (a trailing newline allowed for the text forms, so config management can write
    /// them from a variable). The file must be owned by root (or the user certagent runs as)
    /// and readable by nobody else: anyone who reads it can open every key in etcd. Under the
    /// unit, a path in `/etc/certagent/credentials/` is read from its systemd credential.
    pub fn load(configured: &Path) -> Result<FleetKey> {
        let path = crate::systemd::secret_path(configured);
        let path = path.as_path();
        let fail = |cause: String| {
            Error::msg(format!(
                "failed to read the fleet key {:?}: {cause}",
                path.display().to_string()
            ))
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| fail(e.to_string()).with_hint(KEY_HINT))?;
        let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
        check_key_file(&meta).map_err(|(cause, hint)| fail(cause).with_hint(hint))?;
        let mut text = Zeroizing::new(Vec::with_capacity(64));
        file.by_ref()
            .take(MAX_KEY_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| fail(e.to_string()))?;
        parse_key(&text).map(FleetKey).ok_or_else(|| {
            fail("it is not 32 raw bytes, 64 hex digits or 32 bytes in base64".into())
                .with_hint(KEY_HINT)
        })
    }
}

/// Why a key file's metadata is not acceptable, and what to do about it.
fn check_key_file(meta: &fs::Metadata) -> std::result::Result<(), (String, String)> {
    if !meta.is_file() {
        return Err(("it is not a regular file".into(), KEY_HINT.into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err((
            format!("it is owned by uid {}, not root", meta.uid()),
            "chown root: FILE (anyone who can replace it can choose the key)".into(),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err((
            format!(
                "it is readable or writable by group or others (mode {:04o})",
                meta.mode() & 0o7777
            ),
            "chmod 0400 FILE (anyone who reads it can open every private key in etcd)".into(),
        ));
    }
    Ok(())
}

/// 32 raw bytes; or 64 hex digits / base64 of 32 bytes with optional trailing white space.
fn parse_key(text: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    if text.len() == 32 {
        key.copy_from_slice(text);
        return Some(key);
    }
    let trimmed = text.trim_ascii_end();
    if trimmed.len() == 64 && hex::decode_to_slice(trimmed, &mut key[..]).is_ok() {
        return Some(key);
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .ok()?,
    );
    (decoded.len() == 32).then(|| {
        key.copy_from_slice(&decoded);
        key
    })
}

/// The associated data: what a sealed blob is for. A blob moved to another name or
/// generation does not open.
fn aad(name: &str, generation: u64) -> Vec<u8> {
    let mut aad = MAGIC.to_vec();
    aad.extend_from_slice(&generation.to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

fn aead_key(key: &FleetKey) -> LessSafeKey {
    // AES_256_GCM takes exactly 32 bytes, which FleetKey always holds.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, &key.0[..]).expect("a 32-byte AES-256 key");
    LessSafeKey::new(unbound)
}

/// Seals `secret` (a private key PEM) for certificate `name`, generation `generation`:
/// `MAGIC || nonce (12) || ciphertext || tag (16)`, with a fresh random nonce.
pub fn seal(key: &FleetKey, name: &str, generation: u64, secret: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| Error::msg("failed to seal a key: no random nonce"))?;
    let mut buf = Zeroizing::new(secret.to_vec());
    aead_key(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(name, generation)),
            &mut *buf,
        )
        .map_err(|_| Error::msg("failed to seal a key: encryption failed"))?;
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens what [`seal`] made for the same `name` and `generation` under the same key. Any
/// other key, name or generation, or a changed byte, is refused with one message: AES-GCM
/// cannot tell which it was.
pub fn open(
    key: &FleetKey,
    name: &str,
    generation: u64,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let refused = || {
        Error::msg(format!(
            "failed to open the sealed key of {name:?} generation {generation}: wrong fleet key, or the record was altered"
        ))
        .with_hint("every host of the fleet needs the same fleet_key_file")
    };
    let body = sealed.strip_prefix(MAGIC.as_slice()).ok_or_else(refused)?;
    if body.len() < NONCE_LEN {
        return Err(refused());
    }
    let (nonce, ciphertext) = body.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = aead_key(key)
        .open_in_place(nonce, Aad::from(aad(name, generation)), &mut buf)
        .map_err(|_| refused())?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const PEM: &[u8] =
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBx8\n-----END PRIVATE KEY-----\n";

    fn key(b: u8) -> FleetKey {
        FleetKey::from_bytes([b; 32])
    }

    #[test]
    fn a_sealed_key_opens_with_the_same_key_name_and_generation() {
        let sealed = seal(&key(7), "www", 3, PEM).unwrap();
        assert_eq!(&open(&key(7), "www", 3, &sealed).unwrap()[..], PEM);
    }

    #[test]
    fn a_sealed_key_holds_no_pem_and_two_seals_differ() {
        let a = seal(&key(7), "www", 3, PEM).unwrap();
        let b = seal(&key(7), "www", 3, PEM).unwrap();
        assert_ne!(a, b, "a fresh nonce every time");
        for s in [&a, &b] {
            assert!(!s.windows(5).any(|w| w == b"-----"));
            assert!(!s.windows(7).any(|w| w == b"PRIVATE"));
        }
    }

    #[test]
    fn a_wrong_key_name_generation_or_byte_is_refused() {
        let sealed = seal(&key(7), "www", 3, PEM).unwrap();
        let mut tampered = sealed.clone();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        let cases = [
            (key(8), "www", 3, sealed.clone()),
            (key(7), "mail", 3, sealed.clone()),
            (key(7), "www", 4, sealed.clone()),
            (key(7), "www", 3, tampered),
            (key(7), "www", 3, sealed[..10].to_vec()),
        ];
        for (k, name, generation, blob) in cases {
            let err = open(&k, name, generation, &blob).unwrap_err().to_string();
            assert!(
                err.contains("wrong fleet key, or the record was altered"),
                "{err}"
            );
        }
    }

    fn key_file(content: &[u8], mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_key_file_is_raw_hex_or_base64_of_32_bytes() {
        let raw = [5u8; 32];
        let hex_text = format!("{}\n", hex::encode(raw));
        let b64 = format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        for content in [&raw[..], hex_text.as_bytes(), b64.as_bytes()] {
            let (_d, path) = key_file(content, 0o400);
            let loaded = FleetKey::load(&path).unwrap();
            assert_eq!(*loaded.0, raw);
        }
        for bad in [&[5u8; 31][..], &[5u8; 33][..], b"zz"] {
            let (_d, path) = key_file(bad, 0o600);
            let err = FleetKey::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("it is not 32 raw bytes, 64 hex digits or 32 bytes in base64"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_key_file_readable_by_others_or_owned_by_another_user_is_refused() {
        let (_d, path) = key_file(&[5u8; 32], 0o640);
        let err = format!("{:?}", FleetKey::load(&path).unwrap_err());
        assert!(
            err.contains("it is readable or writable by group or others (mode 0640)"),
            "{err}"
        );
        assert!(err.contains("chmod 0400"), "{err}");
        if nix::unistd::geteuid().is_root() {
            let (_d, path) = key_file(&[5u8; 32], 0o400);
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
            let err = FleetKey::load(&path).unwrap_err().to_string();
            assert!(err.contains("it is owned by uid 4242, not root"), "{err}");
        }
    }

    #[test]
    fn the_fleet_key_does_not_show_in_debug_output() {
        assert_eq!(format!("{:?}", key(7)), "FleetKey(..)");
    }
}
