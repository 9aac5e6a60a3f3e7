//! `certagent discover`: print the certificates nginx, Apache, HAProxy, Postfix and Dovecot
//! already serve as
//! ready-to-use configuration (TOML, or `--json`). Reads the servers' configuration files;
//! never writes anything, never needs certagent's own configuration.

use std::path::PathBuf;

use clap::Args;

use crate::discover::{self, Targets};
use crate::error::{Error, Result, exit};
use crate::output;

#[derive(Args, Debug)]
pub(crate) struct DiscoverArgs {
    /// nginx's main configuration file (default: the compiled-in path, /etc/nginx/nginx.conf).
    #[arg(long, value_name = "PATH")]
    pub(crate) nginx_conf: Option<PathBuf>,
    /// Apache's ServerRoot (default: /etc/apache2, or /etc/httpd on RHEL).
    #[arg(long, value_name = "DIR")]
    pub(crate) apache_root: Option<PathBuf>,
    /// Apache's main configuration file (default: apache2.conf or conf/httpd.conf under the
    /// ServerRoot).
    #[arg(long, value_name = "PATH")]
    pub(crate) apache_conf: Option<PathBuf>,
    /// HAProxy's configuration file (default: /etc/haproxy/haproxy.cfg).
    #[arg(long, value_name = "PATH")]
    pub(crate) haproxy_conf: Option<PathBuf>,
    /// Postfix's main.cf, master.cf beside it (default: /etc/postfix/main.cf).
    #[arg(long, value_name = "PATH")]
    pub(crate) postfix_conf: Option<PathBuf>,
    /// Dovecot's main configuration file (default: /etc/dovecot/dovecot.conf).
    #[arg(long, value_name = "PATH")]
    pub(crate) dovecot_conf: Option<PathBuf>,
    /// Print a JSON document on stdout instead of TOML.
    #[arg(long)]
    pub(crate) json: bool,
}

fn absolute(p: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| {
        Error::msg(format!(
            "failed to resolve {:?}: {e}",
            p.display().to_string()
        ))
    })
}

pub(crate) fn discover(args: &DiscoverArgs) -> Result<u8> {
    let targets = targets(args)?;
    check_targets(&targets)?;
    let doc = discover::discover(&targets);
    if args.json {
        output::print_json(&doc);
    } else {
        output::print_stdout(&discover::render_toml(&doc));
    }
    for p in &doc.problems {
        log::warn!("{p}");
    }
    if let Some(c) = &doc.certbot {
        log::warn!("{}: run `{}` before adopting them", c.why, c.stop);
    }
    for i in &doc.issuers {
        if let Some(note) = &i.account_note {
            log::warn!(issuer = i.name.as_str(); "{note}");
        }
    }
    Ok(exit::OK)
}

/// The configurations named on the command line, else the default ones.
fn targets(args: &DiscoverArgs) -> Result<Targets> {
    let explicit = args.nginx_conf.is_some()
        || args.apache_root.is_some()
        || args.apache_conf.is_some()
        || args.haproxy_conf.is_some()
        || args.postfix_conf.is_some()
        || args.dovecot_conf.is_some();
    if !explicit {
        return Ok(Targets::defaults());
    }
    let apache = match (&args.apache_root, &args.apache_conf) {
        (None, None) => None,
        (Some(root), conf) => {
            let root = absolute(root)?;
            let conf = match conf {
                Some(c) => absolute(&root.join(c))?,
                None => Targets::apache_conf_in(&root),
            };
            Some((root, conf))
        }
        (None, Some(conf)) => {
            let conf = absolute(conf)?;
            let root = conf.parent().map(PathBuf::from).unwrap_or_default();
            Some((root, conf))
        }
    };
    Ok(Targets {
        nginx_conf: args.nginx_conf.as_deref().map(absolute).transpose()?,
        apache,
        haproxy_conf: args.haproxy_conf.as_deref().map(absolute).transpose()?,
        postfix_conf: args.postfix_conf.as_deref().map(absolute).transpose()?,
        dovecot_conf: args.dovecot_conf.as_deref().map(absolute).transpose()?,
        explicit,
    })
}

/// Every target configuration exists, and there is at least one.
fn check_targets(targets: &Targets) -> Result<()> {
    const WEB: &str = "--nginx-conf, --apache-root or --apache-conf";
    let named = [
        (targets.nginx_conf.as_ref(), WEB),
        (targets.apache.as_ref().map(|(_, c)| c), WEB),
        (targets.haproxy_conf.as_ref(), "--haproxy-conf"),
        (targets.postfix_conf.as_ref(), "--postfix-conf"),
        (targets.dovecot_conf.as_ref(), "--dovecot-conf"),
    ];
    for (conf, flag) in named {
        if let Some(conf) = conf
            && !conf.is_file()
        {
            return Err(Error::msg(format!(
                "failed to read {:?}: no such file",
                conf.display().to_string()
            ))
            .with_hint(format!("point {flag} at the server's configuration")));
        }
    }
    if named.iter().all(|(c, _)| c.is_none()) {
        return Err(Error::msg(
            "failed to find a server configuration: no /etc/nginx/nginx.conf, /etc/apache2/apache2.conf, /etc/httpd/conf/httpd.conf, /etc/haproxy/haproxy.cfg, /etc/postfix/main.cf or /etc/dovecot/dovecot.conf",
        )
        .with_hint("point --nginx-conf, --apache-root, --apache-conf, --haproxy-conf, --postfix-conf or --dovecot-conf at the server's configuration"));
    }
    Ok(())
}
