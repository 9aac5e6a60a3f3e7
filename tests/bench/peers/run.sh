#!/usr/bin/env bash
# The peers benchmark in one command (as root on Debian 12): installs certbot,
# python3-certbot-nginx, lego, pebble and nginx from Debian if missing, then runs
# `cargo bench --bench peers`. The table is printed at the end; raw samples go to
# $CARGO_TARGET_DIR/bench/peers.json (default target/bench/peers.json).
set -euo pipefail
cd "$(dirname "$0")/../../.."
tests/bench/peers/install.sh
exec tests/bench/run.sh peers "$@"
