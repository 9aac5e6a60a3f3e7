#!/usr/bin/env bash
# The packages and the service for real, under a real systemd: boots Debian 12 in
# systemd-nspawn (tests/systemd/sandbox.sh; its rootfs, with nginx and ansible-core, is
# cached under /var/tmp), then
#   1. installs the .deb: enabled, not started (no config yet), unit verified and scored;
#   2. configures one nginx site, starts certagent, deletes the key and sees a new certificate
#      served by nginx reloaded through systemctl; reads the structured fields back with
#      journalctl -o json; runs `certagent reissue --now` from the shell; reloads with a
#      broken drop-in (still running, the error in the journal); checks the metrics file;
#   3. upgrades (restarts), removes (keeps config and state), purges (removes them); then
#      `certagent install` from a plain binary (tarball, cargo install) and uninstall --purge;
#   4. applies the Ansible role twice (the second run changes nothing) and re-issues through
#      the role's reissue task (changed exactly once).
# Needs root; without it, it says so and skips (exit 0). Anything else that keeps it from
# running is a failure. CERTAGENT_DEB=path uses that .deb instead of running packaging/build.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "container-test: SKIPPED: needs root (systemd-nspawn, debootstrap)"
  exit 0
fi

SANDBOX=tests/systemd/sandbox.sh
# Exposure 2.5 or lower; systemd-analyze takes the threshold in tenths.
THRESHOLD=25
t0=$SECONDS
say() { echo "container-test [$((SECONDS - t0))s]: $*" >&2; }
box() { bash "$SANDBOX" run "$@"; }
push() { bash "$SANDBOX" push "$@"; }
fail() {
  echo "container-test: FAIL: $*" >&2
  box journalctl -u certagent -u nginx --no-pager -n 40 >&2 || true
  exit 1
}
# wait_for SECONDS DESCRIPTION CMD...: poll CMD (in the container) every 0.2 s.
wait_for() {
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 5; i++)); do
    if box "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  fail "$what (waited ${limit}s)"
}
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }
# Serials as upper-case hex without leading zeros: openssl pads to whole bytes, certagent
# (JSON, journal) does not.
serial() { tr a-f A-F | sed 's/^0*//'; }
SERVED='openssl s_client -connect 127.0.0.1:$0 -servername $1 </dev/null 2>/dev/null | openssl x509 -noout -serial | cut -d= -f2'
served_serial() { box sh -c "$SERVED" "$1" "$2" | serial; } # served_serial PORT SNI
file_serial() { box openssl x509 -noout -serial -in "$1" | cut -d= -f2 | serial; }

# --- packages -----------------------------------------------------------------------------
# CERTAGENT_DEB: a .deb packaging/build.sh made (CI builds once); else build here.
if [ -n "${CERTAGENT_DEB:-}" ]; then
  built=$CERTAGENT_DEB
else
  say "building the packages"
  built=$(packaging/build.sh | grep '\.deb$')
fi
[ -f "$built" ] || fail "packaging/build.sh made no .deb"
work=$(mktemp -d /var/tmp/certagent-container-test.XXXXXX)
have_sandbox=0 # stop the sandbox at exit only once it is ours (see the lock below)
cleanup() {
  rm -rf "$work"
  if [ "$have_sandbox" = 1 ]; then bash "$SANDBOX" down; fi
}
trap cleanup EXIT
deb=$work/$(basename "$built")
cp "$built" "$deb" # cargo deb empties its output directory on the next run
# The same binary as a later revision, to see an upgrade restart the service.
mkdir "$work/upgrade"
cargo deb --no-build --locked --quiet --fast --deb-revision 99 --output "$work/upgrade/" >/dev/null ||
  fail "could not make the upgrade package (cargo deb --no-build needs packaging/build.sh's build)"
upgrade=$(ls "$work"/upgrade/*.deb)

say "scoring the unit on the host: systemd-analyze security --offline=true (at most 2.5)"
systemd-analyze security --offline=true --threshold="$THRESHOLD" systemd/certagent.service |
  tail -1 | sed 's/^/  /' >&2 ||
  fail "systemd/certagent.service scores worse than 2.5"

# One sandbox per host: a second run (another checkout's CI) waits for this one.
exec 9>/var/tmp/certagent-sandbox.lock
if ! flock -n 9; then
  say "waiting for another container test to finish (flock /var/tmp/certagent-sandbox.lock)"
  flock -w 900 9 || fail "another container test held the sandbox for 15 minutes"
fi
have_sandbox=1
say "booting the container"
bash "$SANDBOX" down >/dev/null 2>&1 # whatever a killed run left behind; we hold the lock
bash "$SANDBOX" up

# --- 1. install: enabled, idle -----------------------------------------------------------------
push "$deb" /root/certagent.deb
push "$upgrade" /root/certagent-upgrade.deb
box apt-get install -y -q /root/certagent.deb >/dev/null 2>&1 || fail "apt-get install of the .deb failed"
expect_eq "$(box systemctl is-enabled certagent || true)" enabled "installed unit enabled"
expect_eq "$(box systemctl is-active certagent || true)" inactive "service without a config"
for f in /usr/share/man/man8/certagent.8.gz /usr/share/man/man5/certagent.toml.5.gz \
  /usr/share/man/man7/certagent-concepts.7.gz /usr/share/bash-completion/completions/certagent \
  /usr/share/zsh/vendor-completions/_certagent /usr/share/fish/vendor_completions.d/certagent.fish \
  /etc/certagent/config.example.toml; do
  box test -f "$f" || fail "the package did not install $f"
done
box getent group ssl-cert >/dev/null || fail "sysusers.d did not create the ssl-cert group"
expect_eq "$(box stat -c %a /etc/certagent /var/lib/certagent /etc/ssl/certagent | tr '\n' ' ')" \
  "700 711 755 " "directory modes from tmpfiles.d"
verify=$(box systemd-analyze verify certagent.service 2>&1 || true)
[ -z "$verify" ] || fail "systemd-analyze verify certagent.service printed: $verify"
box systemd-analyze security --threshold="$THRESHOLD" certagent.service | tail -1 | sed 's/^/  /' >&2 ||
  fail "the installed unit scores worse than 2.5"

# --- 2. running --------------------------------------------------------------------------------
say "configuring nginx and certagent; starting the service"
box sh -c 'cd /etc/ssl/certagent &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=site.test -addext subjectAltName=DNS:site.test -keyout site.key -out site.pem 2>/dev/null &&
  chmod 600 site.key'
box sh -c 'cat >/etc/nginx/sites-enabled/site <<EOF
server {
    listen 127.0.0.1:443 ssl;
    server_name site.test;
    ssl_certificate /etc/ssl/certagent/site.pem;
    ssl_certificate_key /etc/ssl/certagent/site.key;
}
EOF
systemctl reload nginx'
box sh -c 'cat >/etc/certagent/config.toml <<EOF
[agent]
metrics_file = "/var/lib/prometheus/node-exporter/certagent.prom"

[server.nginx]
kind = "nginx"
verify = ["127.0.0.1:443"]
EOF
cat >/etc/certagent/conf.d/site.toml <<EOF
[certificate.site]
names = ["site.test"]
server = "nginx"
cert_file = "/etc/ssl/certagent/site.pem"
key_file = "/etc/ssl/certagent/site.key"
group = "ssl-cert"
key_mode = "0640"
EOF
mkdir -p /var/lib/prometheus/node-exporter'
initial=$(box sh -c "$SERVED" 443 site.test)
box systemctl start certagent || fail "systemctl start certagent failed"
expect_eq "$(box systemctl is-active certagent)" active "service after start"
pid=$(box systemctl show -p MainPID --value certagent)

say "deleting the key: the daemon re-issues and nginx serves the new certificate"
reloads=$(box journalctl -u nginx -o cat --no-pager | grep -c '^Reloaded' || true)
box rm /etc/ssl/certagent/site.key
wait_for 30 "a new certificate served after the key was deleted" \
  sh -c "s=\$($SERVED); [ -n \"\$s\" ] && [ \"\$s\" != $initial ] && [ -e /etc/ssl/certagent/site.key ]" 443 site.test
healed=$(served_serial 443 site.test)
expect_eq "$healed" "$(file_serial /etc/ssl/certagent/site.pem)" "served serial = installed serial"
box sh -c 'openssl x509 -noout -issuer -in /etc/ssl/certagent/site.pem' | grep -qi certagent ||
  fail "the new certificate is not from the embedded CA"
# The unit's CAP_CHOWN at work: the new key belongs to the configured group.
expect_eq "$(box stat -L -c '%a %U:%G' /etc/ssl/certagent/site.key)" "640 root:ssl-cert" "key mode and owner"
now_reloads=$(box journalctl -u nginx -o cat --no-pager | grep -c '^Reloaded')
[ "$now_reloads" -gt "$reloads" ] || fail "nginx was not reloaded through systemctl"

say "reading the structured fields back: journalctl -o json CERTAGENT_EVENT=installed"
event=$(box journalctl -u certagent -o json --no-pager CERTAGENT_EVENT=installed | tail -1)
expect_eq "$(jq -r .CERTAGENT_CERT <<<"$event")" site "CERTAGENT_CERT"
expect_eq "$(jq -r .CERTAGENT_REASON <<<"$event")" key-missing "CERTAGENT_REASON"
expect_eq "$(jq -r .CERTAGENT_SERIAL <<<"$event" | serial)" "$healed" "CERTAGENT_SERIAL"
expect_eq "$(jq -r .SYSLOG_IDENTIFIER <<<"$event")" certagent "SYSLOG_IDENTIFIER"

say "certagent reissue --now from the shell (through the daemon's control socket)"
out=$(box certagent reissue --now site --json) || fail "reissue --now exited $?: $out"
expect_eq "$(jq -r .changed <<<"$out")" true "reissue --now changed"
expect_eq "$(jq -r '.certificates[0].result' <<<"$out")" installed "reissue --now result"
expect_eq "$(served_serial 443 site.test)" "$(jq -r '.certificates[0].serial' <<<"$out" | serial)" \
  "served serial after reissue --now"

say "reloading with a broken drop-in: the service keeps running, the error is in the journal"
box sh -c 'printf "[certificate.broken]\nnames = 1\n" >/etc/certagent/conf.d/broken.toml'
box systemctl reload certagent || fail "systemctl reload certagent failed"
wait_for 10 "the broken drop-in reported in the journal" \
  sh -c 'journalctl -u certagent -o json --no-pager CERTAGENT_FILE=/etc/certagent/conf.d/broken.toml | grep -q certificate.broken.names'
expect_eq "$(box systemctl is-active certagent)" active "service after a broken reload"
expect_eq "$(box systemctl show -p MainPID --value certagent)" "$pid" "MainPID after a broken reload"
box rm /etc/certagent/conf.d/broken.toml
box systemctl reload certagent

say "metrics file"
metrics=$(box cat /var/lib/prometheus/node-exporter/certagent.prom)
grep -qx 'certagent_reissues_total{certificate="site",reason="key-missing",outcome="installed"} 1' <<<"$metrics" ||
  fail "metrics: no key-missing re-issue: $metrics"
grep -q '^certagent_certificate_not_after_timestamp_seconds{certificate="site"} [0-9]' <<<"$metrics" ||
  fail "metrics: no not-after: $metrics"

# --- 3. upgrade, remove, purge -------------------------------------------------------------------
say "upgrading: the service restarts"
box apt-get install -y -q /root/certagent-upgrade.deb >/dev/null 2>&1 || fail "upgrade failed"
wait_for 10 "the service active after the upgrade" systemctl is-active certagent
[ "$(box systemctl show -p MainPID --value certagent)" != "$pid" ] || fail "the upgrade did not restart the service"

say "removing keeps configuration and state; purging removes them"
box apt-get remove -y -q certagent >/dev/null 2>&1 || fail "apt-get remove failed"
expect_eq "$(box systemctl is-active certagent || true)" inactive "service after remove"
box test -f /etc/certagent/config.toml || fail "remove deleted the configuration"
box test -d /var/lib/certagent/live/site || fail "remove deleted the state"
box apt-get purge -y -q certagent >/dev/null 2>&1 || fail "apt-get purge failed"
for gone in /etc/certagent /var/lib/certagent /etc/ssl/certagent; do
  if box test -e "$gone"; then fail "purge left $gone"; fi
done
box rm -r /etc/nginx/sites-enabled/site /var/lib/prometheus
box systemctl reload nginx

# --- 3b. certagent install, as after a tarball or cargo install -----------------------------------
say "certagent install from a plain binary: enabled, started once configured, idempotent; uninstall --purge"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/certagent >"$work/certagent"
push "$work/certagent" /usr/local/bin/certagent
box chmod 755 /usr/local/bin/certagent
json() { box /usr/local/bin/certagent "$@" --json; }
out=$(json install) || fail "certagent install exited $?: $out"
expect_eq "$(jq -r .changed <<<"$out")" true "first install changed"
expect_eq "$(box systemctl is-enabled certagent)" enabled "enabled by certagent install"
expect_eq "$(box systemctl is-active certagent || true)" inactive "not started without a config"
box grep -qx 'ExecStart=/usr/local/bin/certagent run' /etc/systemd/system/certagent.service ||
  fail "the installed unit does not run /usr/local/bin/certagent"
# No man page without the package: verify everything else.
verify=$(box systemd-analyze verify --man=no certagent.service 2>&1 || true)
[ -z "$verify" ] || fail "systemd-analyze verify of the unit certagent install wrote printed: $verify"
box sh -c 'mkdir -p /srv/tls && printf "%s\n" "[certificate.files]" "names = [\"files.test\"]" \
  "cert_file = \"/srv/tls/files.pem\"" "key_file = \"/srv/tls/files.key\"" >/etc/certagent/config.toml'
out=$(json install) || fail "certagent install with a config exited $?: $out"
expect_eq "$(jq -r .service.active <<<"$out")" true "started once configured"
wait_for 10 "the certificate issued into /srv/tls (granted by the drop-in)" test -e /srv/tls/files.key
expect_eq "$(json install | jq -r .changed)" false "second install changed"
out=$(json uninstall --purge) || fail "certagent uninstall --purge exited $?: $out"
expect_eq "$(box systemctl is-active certagent || true)" inactive "stopped by uninstall"
for gone in /etc/systemd/system/certagent.service /etc/certagent /var/lib/certagent /srv/tls/files.key; do
  if box test -e "$gone"; then fail "uninstall --purge left $gone"; fi
done
expect_eq "$(json uninstall --purge | jq -r .changed)" false "second uninstall changed"
box rm -r /usr/local/bin/certagent /srv/tls

# --- 4. Ansible ------------------------------------------------------------------------------------
say "Ansible: applying the role twice"
tar -C packaging/ansible -cf - roles | box sh -c 'mkdir -p /srv/ansible && tar -C /srv/ansible -xf -'
push tests/systemd/playbook.yml /srv/ansible/test.yml
push tests/systemd/reissue.yml /srv/ansible/reissue.yml
box sh -c 'mkdir -p /etc/nginx/ssl && cd /etc/nginx/ssl &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=shop.test -addext subjectAltName=DNS:shop.test -keyout shop.key -out shop.pem 2>/dev/null &&
  cat >/etc/nginx/sites-enabled/shop <<EOF
server {
    listen 127.0.0.1:8443 ssl;
    server_name shop.test;
    ssl_certificate /etc/nginx/ssl/shop.pem;
    ssl_certificate_key /etc/nginx/ssl/shop.key;
}
EOF
systemctl reload nginx'
playbook() { # playbook FILE: runs it in the container, prints the recap line's changed= count
  local log
  log=$(box sh -c "cd /srv/ansible && ANSIBLE_NOCOLOR=1 ansible-playbook -i localhost, -c local $1" 2>&1) ||
    fail "ansible-playbook $1 failed:
$log"
  grep -E '^localhost +:' <<<"$log" | sed -E 's/.*changed=([0-9]+).*/\1/'
}
first=$(playbook test.yml)
[ "$first" -gt 0 ] || fail "the first run of the role changed nothing"
expect_eq "$(box systemctl is-active certagent)" active "service after the role"
box grep -qx 'ReadWritePaths=-/etc/nginx/ssl' /etc/systemd/system/certagent.service.d/certificate-paths.conf ||
  fail "the role did not grant /etc/nginx/ssl"
box grep -q '^certagent_certificate_not_after_timestamp_seconds{certificate="shop"}' \
  /var/lib/prometheus/node-exporter/certagent.prom || fail "no metrics for shop after the role"
say "Ansible: [cluster] in config.toml, the fleet key a credential only the service reads"
box grep -qx 'endpoints = \["http://127.0.0.1:2379"\]' /etc/certagent/config.toml ||
  fail "the role wrote no [cluster] endpoints: $(box cat /etc/certagent/config.toml)"
box grep -qx 'node = "box-1"' /etc/certagent/config.toml || fail "the role wrote no [cluster] node"
expect_eq "$(box stat -c '%a %U:%G' /etc/certagent/credentials/fleet.key)" "600 root:root" "the fleet key file"
main=$(box systemctl show -p MainPID --value certagent)
in_service() { box nsenter -t "$main" -m "$@"; } # in the service's mount namespace
in_service cmp -s /etc/certagent/credentials/fleet.key /run/credentials/certagent.service/certagent_fleet.key &&
  fail "the service can read /etc/certagent/credentials (InaccessiblePaths=)"
box sh -c "nsenter -t $main -m cat /run/credentials/certagent.service/certagent_fleet.key" |
  grep -qx "$(printf '42%.0s' $(seq 32))" || fail "the fleet key did not reach the service as a credential"
out=$(box certagent status --fleet --json) || fail "status --fleet exited $?: $out"
expect_eq "$(jq -r .node <<<"$out")" box-1 "status --fleet node"
expect_eq "$(jq -c .certificates <<<"$out")" "[]" "status --fleet with nothing shared"
expect_eq "$(playbook test.yml)" 0 "changed count of the second run of the role"
before=$(served_serial 8443 shop.test)
expect_eq "$(playbook reissue.yml)" 1 "changed count of the reissue task"
after=$(served_serial 8443 shop.test)
[ "$after" != "$before" ] || fail "the reissue task did not change the served certificate"
expect_eq "$after" "$(file_serial /etc/nginx/ssl/shop.pem)" "served serial after the reissue task"
box apt-get purge -y -q certagent >/dev/null 2>&1 || fail "apt-get purge after Ansible failed"

say "PASS in $((SECONDS - t0)) s"
