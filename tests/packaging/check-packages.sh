#!/usr/bin/env bash
# What the packages contain, with which modes: the .deb (dpkg-deb) and the .rpm (rpm -qlp;
# an RPM cannot be installed on Debian, so its listing, scriptlets and config flags are what
# can be proven here). Usage: check-packages.sh DEB RPM
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DEB RPM" >&2; exit 2; }
deb=$1 rpm=$2
fail() { echo "check-packages: FAIL: $*" >&2; exit 1; }
command -v rpm >/dev/null || fail "rpm is not installed (apt-get install rpm)"

# mode path, for every file both packages must carry (completions differ only in zsh's dir)
common="
-rwxr-xr-x /usr/bin/certagent
-rw-r--r-- /usr/lib/systemd/system/certagent.service
-rw-r--r-- /etc/certagent/config.example.toml
-rw-r--r-- /usr/lib/sysusers.d/certagent.conf
-rw-r--r-- /usr/lib/tmpfiles.d/certagent.conf
-rw-r--r-- /usr/share/bash-completion/completions/certagent
-rw-r--r-- /usr/share/fish/vendor_completions.d/certagent.fish
-rw-r--r-- /usr/share/man/man8/certagent.8.gz
-rw-r--r-- /usr/share/man/man8/certagent-reissue.8.gz
-rw-r--r-- /usr/share/man/man8/certagent-install.8.gz
-rw-r--r-- /usr/share/man/man5/certagent.toml.5.gz
-rw-r--r-- /usr/share/man/man7/certagent-concepts.7.gz
-rw-r--r-- /usr/share/doc/certagent/README.md
-rw-r--r-- /usr/share/doc/certagent/CHANGELOG.md"

deb_list=$(dpkg-deb -c "$deb" | awk '{ sub(/^\./, "", $6); print $1, $6 }')
rpm_list=$(rpm -qlpv "$rpm" 2>/dev/null | awk '{ print $1, $9 }')
check() { # check NAME LISTING EXPECTED...
  local name=$1 listing=$2 line
  shift 2
  while read -r line; do
    [ -z "$line" ] && continue
    grep -qxF -e "$line" <<<"$listing" || fail "$name: no '$line' in:
$listing"
  done <<<"$*"
}
check .deb "$deb_list" "$common
-rw-r--r-- /usr/share/zsh/vendor-completions/_certagent"
check .rpm "$rpm_list" "$common
-rw-r--r-- /usr/share/zsh/site-functions/_certagent"

# Nothing world-writable, nothing setuid, in either.
if grep -E '^.{8}w|^...s' <<<"$deb_list$rpm_list" | grep -v '^l'; then fail "a world-writable or setuid file"; fi

# The example config is a conffile that an upgrade never overwrites.
dpkg-deb -f "$deb" Package >/dev/null
[ "$(dpkg-deb -I "$deb" conffiles)" = /etc/certagent/config.example.toml ] || fail ".deb conffiles"
[ "$(rpm -qpc "$rpm" 2>/dev/null)" = /etc/certagent/config.example.toml ] || fail ".rpm config files"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" 2>/dev/null |
  grep -qx 'cn /etc/certagent/config.example.toml' || fail ".rpm: config.example.toml is not %config(noreplace)"

# Maintainer scripts: enable + start on install (idle until configured), restart on upgrade;
# purge removes state and config (.deb); the RPM stops and disables on erase.
postinst=$(dpkg-deb -I "$deb" postinst)
grep -q 'deb-systemd-helper enable certagent.service' <<<"$postinst" || fail ".deb postinst does not enable"
grep -q '_dh_action=restart' <<<"$postinst" || fail ".deb postinst does not restart on upgrade"
grep -q 'systemd-sysusers' <<<"$postinst" || fail ".deb postinst does not run systemd-sysusers"
grep -q 'rm -rf /var/lib/certagent /run/certagent /etc/certagent' <<<"$(dpkg-deb -I "$deb" postrm)" ||
  fail ".deb postrm does not purge"
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
grep -q 'systemctl enable certagent.service' <<<"$scripts" || fail ".rpm %post does not enable"
grep -q 'systemctl try-restart certagent.service' <<<"$scripts" || fail ".rpm %post does not restart on upgrade"
grep -q 'systemctl disable --now certagent.service' <<<"$scripts" || fail ".rpm %preun does not stop"
echo "check-packages: $(basename "$deb") and $(basename "$rpm") carry the right files with the right modes" >&2
