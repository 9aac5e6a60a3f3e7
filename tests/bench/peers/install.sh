#!/usr/bin/env bash
# Installs what `cargo bench --bench peers` needs from Debian 12's own packages, idempotently:
# the peers (certbot, python3-certbot-nginx, lego) and the test bed (pebble, nginx, openssl).
# Packages already installed are left alone; apt-get runs only for the missing ones. Debian's
# services are kept from starting while installing (policy-rc.d), so nothing listens on :80.
set -euo pipefail

packages=(certbot python3-certbot-nginx lego pebble nginx openssl)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "peers bench: missing Debian packages: ${missing[*]}; run as root (sudo tests/bench/peers/run.sh)" >&2
  exit 2
fi
echo "peers bench: installing ${missing[*]} from Debian" >&2
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ "$created_policy" -eq 1 ]; then
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi
