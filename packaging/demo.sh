#!/usr/bin/env bash
# certagent's main job, out of the box, on this host: a private nginx on 127.0.0.1:8443 whose
# certificate certagent issues from its embedded local CA (no account, no network), installs,
# proves served by TLS handshake, and re-issues after the key is lost. Then the daemon
# (`certagent run`, in the foreground, stopped by its pid at the end) does the same by itself
# when the key is deleted again, and answers a compromise flag file, each timed from the event
# to the new leaf served.
#
# Touches nothing outside /var/tmp/certagent-demo, except installing nginx (and protoc, to build)
# from Debian when missing. Safe to run again. KEEP=1 leaves the demo nginx running afterwards; PORT picks
# the port, DEMO_DIR another directory, CERTAGENT_BIN a certagent already built (the tests).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "demo: run as root (sudo $0)" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
demo=${DEMO_DIR:-/var/tmp/certagent-demo}
port=${PORT:-8443}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
served() {
  echo | openssl s_client -connect "127.0.0.1:$port" -servername demo.test 2>/dev/null |
    openssl x509 -noout -serial -subject -enddate
}

# protoc: the etcd client's build script compiles etcd's protocol definitions (fleets).
if ! command -v nginx >/dev/null || ! command -v openssl >/dev/null ||
   { [ -z "${CERTAGENT_BIN:-}" ] && ! command -v protoc >/dev/null; }; then
  step "installing nginx, openssl and protobuf-compiler from Debian"
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl protobuf-compiler >/dev/null
  rm -f /usr/sbin/policy-rc.d; trap - EXIT
fi

if [ -n "${CERTAGENT_BIN:-}" ]; then
  bin=$CERTAGENT_BIN
else
  step "building certagent"
  . "$repo/packaging/env.sh"
  cargo build --release --locked --manifest-path "$repo/Cargo.toml"
  bin=$repo/target/release/certagent
fi

# The demo directory is root's own. Any user can create it in /var/tmp before us, with a pid
# file naming a process of their choosing: what is there is trusted only if root made it
# (root-owned, writable by root alone, no symlinks on the way to the pid file); anything else
# is removed unread.
root_only() { [ ! -L "$1" ] && [ "$(stat -c %u "$1")" = 0 ] && [ $((0$(stat -c %a "$1") & 022)) = 0 ]; }
pidfile=$demo/nginx/nginx.pid
daemon_pidfile=$demo/daemon.pid
if [ -e "$demo" ] || [ -L "$demo" ]; then
  if [ -d "$demo" ] && root_only "$demo"; then
    # A previous demo's nginx, stopped by its recorded pid (and only if it is nginx).
    if [ -f "$pidfile" ] && root_only "$demo/nginx" && root_only "$pidfile"; then
      pid=$(cat "$pidfile")
      if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nginx ]; then kill -QUIT "$pid" || true; sleep 0.5; fi
    fi
    # A previous demo's daemon left running (the demo killed half-way), the same way.
    if [ -f "$daemon_pidfile" ] && root_only "$daemon_pidfile"; then
      pid=$(cat "$daemon_pidfile")
      if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = certagent ]; then
        kill -TERM "$pid" || true
        for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
      fi
    fi
  else
    echo "demo: $demo is not root's own: removed unread" >&2
  fi
fi
rm -rf "$demo"
# Without -p: if anyone created it again in the meantime, stop here.
mkdir -m 0755 "$demo"
mkdir -p "$demo/ssl" "$demo/nginx/logs" "$demo/etc"
mkdir -m 0700 "$demo/compromised"

cat > "$demo/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $demo/nginx/nginx.pid;
error_log $demo/nginx/logs/error.log;
events {}
http {
  access_log off;
  client_body_temp_path $demo/nginx/body;
  proxy_temp_path $demo/nginx/proxy;
  fastcgi_temp_path $demo/nginx/fastcgi;
  uwsgi_temp_path $demo/nginx/uwsgi;
  scgi_temp_path $demo/nginx/scgi;
  server {
    listen 127.0.0.1:$port ssl;
    server_name demo.test;
    ssl_certificate $demo/ssl/demo.pem;
    ssl_certificate_key $demo/ssl/demo.key;
    return 200 "served by nginx with a certificate from certagent\n";
  }
}
CONF

cat > "$demo/etc/config.toml" <<CONF
[agent]
state_dir = "$demo/state"
runtime_dir = "$demo/run"
compromised_dir = "$demo/compromised"

[server.nginx]
kind = "nginx"
verify = ["127.0.0.1:$port"]
pid_file = "$demo/nginx/nginx.pid"
test_command = ["nginx", "-t", "-q", "-p", "$demo/nginx", "-c", "$demo/nginx/nginx.conf"]

[certificate.demo]
names = ["demo.test", "www.demo.test"]
server = "nginx"
cert_file = "$demo/ssl/demo.pem"
key_file = "$demo/ssl/demo.key"
CONF
export CERTAGENT_CONFIG=$demo/etc/config.toml

step "the configuration is valid"
show "$bin" config validate

step "nothing is installed yet: check says what is wrong (exit 1 = needs action)"
show "$bin" check || true

step "re-issue: new key + CSR, signed by the embedded CA, installed atomically"
show "$bin" reissue --now demo

step "nginx starts with the installed pair"
nginx -p "$demo/nginx" -c "$demo/nginx/nginx.conf"
show served

step "the key is lost (deleted) while nginx keeps serving from memory"
show rm "$demo/ssl/demo.key"
show "$bin" check || true

step "re-issue: new key, installed, nginx reloaded, new certificate proven served"
show "$bin" reissue --now demo --reason key-lost
show served
show "$bin" status demo
ls -l "$demo/ssl"

serial() {
  echo | openssl s_client -connect "127.0.0.1:$port" -servername demo.test 2>/dev/null |
    openssl x509 -noout -serial 2>/dev/null | cut -d= -f2
}
now_ms() { date +%s%3N; }
# Wait (at most 60 s) until the daemon's log, past byte $1, has a line containing $2 and the
# served serial is no longer $3; print how long it took since $4 (ms).
await() {
  local from=$1 pattern=$2 old=$3 t0=$4 deadline=$(( $(date +%s) + 60 ))
  local chunk now
  while :; do
    chunk=$(tail -c +"$((from + 1))" "$demo/daemon.log")
    now=$(serial)
    [[ "$chunk" == *"$pattern"* ]] && [ -n "$now" ] && [ "$now" != "$old" ] && break
    if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$daemon" 2>/dev/null; then
      echo "demo: the daemon did not get there within 60 s; its log:" >&2
      cat "$demo/daemon.log" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "   done in $(( $(now_ms) - t0 )) ms: serial $old -> $(serial)"
}
log_size() { stat -c %s "$demo/daemon.log"; }

step "the daemon: certagent run, in the foreground (here in the background of this script)"
"$bin" run > "$demo/daemon.log" 2>&1 &
daemon=$!
echo "$daemon" > "$daemon_pidfile"
trap 'kill -TERM "$daemon" 2>/dev/null || true' EXIT
deadline=$(( $(date +%s) + 30 ))
until grep -q "certagent daemon ready" "$demo/daemon.log"; do
  if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$daemon" 2>/dev/null; then
    echo "demo: the daemon did not start; its log:" >&2; cat "$demo/daemon.log" >&2; exit 1
  fi
  sleep 0.05
done
grep "certagent daemon ready" "$demo/daemon.log"

step "the key is lost again; no command is run: the daemon notices, re-issues, reloads, proves"
from=$(log_size); old=$(serial); t0=$(now_ms)
show rm "$demo/ssl/demo.key"
await "$from" "event=installed" "$old" "$t0"
tail -c +"$((from + 1))" "$demo/daemon.log" | grep -E "event=(detected|flipped|installed)" || true

step "the key is reported compromised: a flag file named after the certificate"
from=$(log_size); old=$(serial); t0=$(now_ms)
show touch "$demo/compromised/demo"
await "$from" "removed the compromised key from every kept generation" "$old" "$t0"
tail -c +"$((from + 1))" "$demo/daemon.log" | grep -E "event=(compromised|installed|revoked|quarantined)|removed the compromised key" || true
show "$bin" status demo

step "the daemon stops on SIGTERM (pid $daemon)"
kill -TERM "$daemon"
wait "$daemon" || true
trap - EXIT
rm -f "$daemon_pidfile"
tail -n 1 "$demo/daemon.log"

if [ "${KEEP:-0}" = 1 ]; then
  echo; echo "demo nginx left running on 127.0.0.1:$port (pid $(cat "$demo/nginx/nginx.pid")); CERTAGENT_CONFIG=$CERTAGENT_CONFIG"
else
  kill -QUIT "$(cat "$demo/nginx/nginx.pid")"
  echo; echo "demo finished; files are in $demo (KEEP=1 leaves nginx running)"
fi
