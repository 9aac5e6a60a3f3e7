//! ACME profiles (draft-ietf-acme-profiles): which profile an order asks for, given the one
//! configured and the ones the CA lists in its directory (`meta.profiles`). Pure: the caller
//! logs and orders.

use crate::config::ProfileWish;
use crate::error::{Error, shown};

/// What an order asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Choice<'a> {
    /// No profile configured: none asked for.
    Default,
    /// The CA offers the configured profile.
    Use(&'a str),
    /// The CA does not offer it and it is not required: ordered without it (warned).
    NotOffered { wanted: &'a str, offered: String },
}

/// The profile to ask for, or the error when a required one is not offered. `offered` is
/// the CA's list in any order; it is shown sorted.
pub(crate) fn choose<'a>(
    wish: Option<&'a ProfileWish>,
    offered: &[&str],
    issuer: &str,
) -> Result<Choice<'a>, Error> {
    let Some(wish) = wish else {
        return Ok(Choice::Default);
    };
    if offered.contains(&wish.name.as_str()) {
        return Ok(Choice::Use(&wish.name));
    }
    let offered = offered_list(offered);
    if wish.required {
        return Err(Error::msg(format!(
            "ACME profile {:?} is required, and the CA of issuer {:?} {offered}",
            shown(&wish.name),
            shown(issuer)
        ))
        .with_hint(
            "set profile to one the CA offers, or profile_required = false to be issued under the CA's default profile meanwhile; nothing was ordered",
        ));
    }
    Ok(Choice::NotOffered {
        wanted: &wish.name,
        offered,
    })
}

/// "offers none" or "offers only \"classic\", \"tlsserver\"".
fn offered_list(offered: &[&str]) -> String {
    let mut names: Vec<String> = offered.iter().map(|p| format!("{:?}", shown(p))).collect();
    names.sort();
    if names.is_empty() {
        "offers none".into()
    } else {
        format!("offers only {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wish(name: &str, required: bool) -> ProfileWish {
        ProfileWish {
            name: name.into(),
            required,
        }
    }

    #[test]
    fn the_configured_profile_is_asked_for_when_offered_else_required_or_warned() {
        let le = ["shortlived", "classic", "tlsserver"];
        assert_eq!(choose(None, &le, "le").unwrap(), Choice::Default);
        let tls = wish("tlsserver", true);
        assert_eq!(
            choose(Some(&tls), &le, "le").unwrap(),
            Choice::Use("tlsserver")
        );
        let other = wish("other", false);
        assert_eq!(
            choose(Some(&other), &le, "le").unwrap(),
            Choice::NotOffered {
                wanted: "other",
                offered: "offers only \"classic\", \"shortlived\", \"tlsserver\"".into()
            }
        );
        let e = choose(Some(&tls), &[], "pebble").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ACME profile \"tlsserver\" is required, and the CA of issuer \"pebble\" offers none"
        );
        assert!(e.hint().unwrap().contains("profile_required = false"));
        let e = choose(Some(&wish("x", true)), &le, "le").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ACME profile \"x\" is required, and the CA of issuer \"le\" offers only \"classic\", \"shortlived\", \"tlsserver\""
        );
    }
}
