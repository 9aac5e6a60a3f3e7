//! ACME profiles (`profile`, `profile_required`) and the staging directory of an ACME issuer:
//! reading them, the checks across sections (a profile only goes with an ACME issuer), and
//! the profile in effect for a certificate (its own, else its issuer's default).

use super::build::Origin;
use super::walk::{Ctx, Section};
use super::{Certificate, Config, ConfigError, Issuer, IssuerKind, shown};

/// Longest profile name accepted (Let's Encrypt's are a dozen characters).
const MAX_PROFILE_NAME: usize = 64;

/// The ACME profile a certificate is ordered under, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProfileWish {
    pub(crate) name: String,
    /// Fail rather than issue under the CA's default profile when the CA does not offer it.
    pub(crate) required: bool,
}

/// `profile` and `profile_required` of a `[certificate.NAME]` or ACME `[issuer.NAME]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProfileKeys {
    pub(crate) profile: Option<String>,
    pub(crate) required: Option<bool>,
}

/// Whether `name` can be an ACME profile name: 1 to 64 characters, ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit.
fn check_name(name: &str) -> Result<(), String> {
    let well_formed = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() > MAX_PROFILE_NAME {
        Err(format!(
            "profile name is {} characters long; at most {MAX_PROFILE_NAME}",
            name.len()
        ))
    } else if !well_formed {
        Err(format!(
            "{:?} is not a profile name: letters, digits, '-', '_' and '.', starting with a letter or digit (e.g. \"tlsserver\")",
            shown(name)
        ))
    } else {
        Ok(())
    }
}

pub(super) fn read_profile_keys(cx: &mut Ctx, s: &mut Section) -> ProfileKeys {
    let profile = s
        .string(cx, "profile")
        .and_then(|(p, span)| match check_name(&p) {
            Ok(()) => Some(p),
            Err(e) => {
                cx.error(&span, &s.full_key("profile"), e);
                None
            }
        });
    let required = s.boolean(cx, "profile_required");
    ProfileKeys { profile, required }
}

/// `staging_directory`: an optional https:// URL, where `reissue --dry-run` orders.
pub(super) fn read_staging_directory(cx: &mut Ctx, s: &mut Section) -> Option<String> {
    let (d, span) = s.string(cx, "staging_directory")?;
    if !d.starts_with("https://") {
        cx.error(
            &span,
            &s.full_key("staging_directory"),
            format!("{:?} must be an https:// URL", shown(&d)),
        );
        return None;
    }
    if d.len() >= 2048 {
        cx.error(&span, &s.full_key("staging_directory"), "URL is too long");
        return None;
    }
    Some(d)
}

impl Config {
    /// The ACME profile `cert` is ordered under: its own `profile`, else its issuer's;
    /// `profile_required` likewise (false when neither sets it). `None`: no profile asked for.
    pub(crate) fn profile_of(&self, cert: &Certificate) -> Option<ProfileWish> {
        let issuer = match self.issuers.get(&cert.issuer).map(|i| &i.kind) {
            Some(IssuerKind::Acme(a)) => &a.profile,
            _ => return None,
        };
        let name = cert.profile.profile.clone().or(issuer.profile.clone())?;
        let required = cert.profile.required.or(issuer.required).unwrap_or(false);
        Some(ProfileWish { name, required })
    }
}

/// A certificate's `profile` or `profile_required` with an issuer that is not ACME, and
/// `profile_required = true` with no profile to require.
pub(super) fn check_profiles(
    cert: &Certificate,
    issuer: Option<&Issuer>,
    at: impl Fn(&'static str) -> Origin,
    errors: &mut Vec<ConfigError>,
) {
    let mut error = |key: &'static str, message: String, hint: String| {
        let origin = at(key);
        errors.push(ConfigError {
            file: origin.file,
            line: origin.line,
            key: format!("certificate.{}.{key}", shown(&cert.name)),
            message,
            hint: Some(hint),
        });
    };
    let key = match (&cert.profile.profile, cert.profile.required) {
        (Some(_), _) => "profile",
        (None, Some(_)) => "profile_required",
        (None, None) => return,
    };
    match issuer.map(|i| (i, &i.kind)) {
        Some((_, IssuerKind::Acme(a))) => {
            let required = cert.profile.required.or(a.profile.required) == Some(true);
            if required && cert.profile.profile.is_none() && a.profile.profile.is_none() {
                error(
                    key,
                    "profile_required = true, but no profile is set here or on its issuer".into(),
                    "add profile = \"NAME\" (one the CA lists in its directory), or remove profile_required".into(),
                );
            }
        }
        Some((i, _)) => error(
            key,
            format!(
                "{key} is an ACME setting, and issuer {:?} is not an ACME issuer",
                shown(&i.name)
            ),
            format!("remove {key}, or point issuer at an [issuer.NAME] with kind = \"acme\""),
        ),
        // An undefined issuer is reported by itself.
        None => {}
    }
}

/// An ACME issuer's `profile_required = true` without its own `profile`: certificates that
/// set one are fine, the others would be ordered without one. Refused, so the setting means
/// what it says.
pub(super) fn check_issuer_profile(issuer: &Issuer, at: &Origin, errors: &mut Vec<ConfigError>) {
    if let IssuerKind::Acme(a) = &issuer.kind
        && a.profile.required == Some(true)
        && a.profile.profile.is_none()
    {
        errors.push(ConfigError {
            file: at.file.clone(),
            line: at.line,
            key: format!("issuer.{}.profile_required", shown(&issuer.name)),
            message: "profile_required = true, but this issuer sets no default profile".into(),
            hint: Some(
                "add profile = \"NAME\" here (certificates may still set their own), or set profile_required on the certificates that set a profile".into(),
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::parse;

    const ACME: &str = "[issuer.le]\nkind = \"acme\"\ndirectory = \"https://ca.test/dir\"\nwebroot = \"/var/www\"\n";

    fn cert(issuer: &str, extra: &str) -> String {
        format!(
            "[certificate.c]\nnames = [\"c.test\"]\nissuer = \"{issuer}\"\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\n{extra}\n"
        )
    }

    #[test]
    fn the_certificates_profile_wins_over_its_issuers() {
        let text = format!(
            "{ACME}profile = \"classic\"\nprofile_required = true\n{}",
            cert("le", "profile = \"tlsserver\"")
        );
        let c = parse(&text).unwrap();
        let wish = c.profile_of(&c.certificates["c"]).unwrap();
        assert_eq!((wish.name.as_str(), wish.required), ("tlsserver", true));
        let text = format!(
            "{ACME}profile = \"classic\"\n{}",
            cert("le", "profile_required = true")
        );
        let c = parse(&text).unwrap();
        let wish = c.profile_of(&c.certificates["c"]).unwrap();
        assert_eq!((wish.name.as_str(), wish.required), ("classic", true));
        let c = parse(&format!("{ACME}{}", cert("le", ""))).unwrap();
        assert_eq!(c.profile_of(&c.certificates["c"]), None);
    }

    #[test]
    fn a_profile_needs_an_acme_issuer_and_a_sane_name() {
        let errors = parse(&cert("internal", "profile = \"tlsserver\"")).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:6: certificate.c.profile: profile is an ACME setting, and issuer \"internal\" is not an ACME issuer\n    hint: remove profile, or point issuer at an [issuer.NAME] with kind = \"acme\""
            ]
        );
        let errors = parse("[issuer.ca]\nkind = \"internal\"\nprofile = \"x\"\n").unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:3: issuer.ca.profile: not a setting of kind = \"internal\""
            ]
        );
        let long = "p".repeat(65);
        for (bad, why) in [
            ("../x", "\"../x\" is not a profile name"),
            ("", "\"\" is not a profile name"),
            ("a b", "\"a b\" is not a profile name"),
            (
                long.as_str(),
                "profile name is 65 characters long; at most 64",
            ),
        ] {
            let errors = parse(&format!(
                "{ACME}{}",
                cert("le", &format!("profile = {bad:?}"))
            ))
            .unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with(&format!(
                    "/etc/certagent/config.toml:10: certificate.c.profile: {why}"
                )),
                "{errors:?}"
            );
        }
        let errors =
            parse(&format!("{ACME}{}", cert("le", "profile_required = true"))).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:10: certificate.c.profile_required: profile_required = true, but no profile is set here or on its issuer\n    hint: add profile = \"NAME\" (one the CA lists in its directory), or remove profile_required"
            ]
        );
        let errors = parse(&format!("{ACME}profile_required = true\n")).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("/etc/certagent/config.toml:1: issuer.le.profile_required: profile_required = true, but this issuer sets no default profile"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_staging_directory_is_an_https_url() {
        let errors = parse(&format!("{ACME}staging_directory = \"http://x/dir\"\n")).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "/etc/certagent/config.toml:5: issuer.le.staging_directory: \"http://x/dir\" must be an https:// URL"
            ]
        );
        let c = parse(&format!(
            "{ACME}staging_directory = \"https://staging.test/dir\"\n"
        ))
        .unwrap();
        match &c.issuers["le"].kind {
            super::IssuerKind::Acme(a) => {
                assert_eq!(
                    a.staging_directory.as_deref(),
                    Some("https://staging.test/dir")
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
