#!/usr/bin/env bash
# certagent's main job, out of the box, on this host: a private nginx on 127.0.0.1:8443 whose
# certificate certagent issues from its embedded local CA (no account, no network), installs,
# proves served by TLS handshake, and re-issues after the key is lost.
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
if [ -e "$demo" ] || [ -L "$demo" ]; then
  if [ -d "$demo" ] && root_only "$demo"; then
    # A previous demo's nginx, stopped by its recorded pid (and only if it is nginx).
    if [ -f "$pidfile" ] && root_only "$demo/nginx" && root_only "$pidfile"; then
      pid=$(cat "$pidfile")
      if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nginx ]; then kill -QUIT "$pid" || true; sleep 0.5; fi
    fi
  else
    echo "demo: $demo is not root's own: removed unread" >&2
  fi
fi
rm -rf "$demo"
# Without -p: if anyone created it again in the meantime, stop here.
mkdir -m 0755 "$demo"
mkdir -p "$demo/ssl" "$demo/nginx/logs" "$demo/etc"

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

if [ "${KEEP:-0}" = 1 ]; then
  echo; echo "demo nginx left running on 127.0.0.1:$port (pid $(cat "$demo/nginx/nginx.pid")); CERTAGENT_CONFIG=$CERTAGENT_CONFIG"
else
  kill -QUIT "$(cat "$demo/nginx/nginx.pid")"
  echo; echo "demo finished; files are in $demo (KEEP=1 leaves nginx running)"
fi
