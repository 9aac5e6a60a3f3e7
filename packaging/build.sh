#!/usr/bin/env bash
# Build certagent's .deb and .rpm: the release binary, the man pages and shell completions
# generated from the clap definitions (certagent-assets), then cargo deb and cargo
# generate-rpm (installed with cargo install if missing). Honours CARGO_TARGET_DIR.
# Prints the path of each package on its own line at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$PWD/$target ;; esac

for tool in cargo-deb cargo-generate-rpm; do
  if ! command -v "$tool" >/dev/null; then
    echo "build: installing $tool (once per machine)" >&2
    cargo install --locked --quiet "$tool"
  fi
done

echo "build: cargo build --release" >&2
cargo build --release --locked --quiet --features assets --bins
assets=$target/release/assets
rm -rf "$assets"
"$target/release/certagent-assets" "$assets"
gzip -9n "$assets"/man/*.8

rm -rf "$target/debian" "$target/generate-rpm"
cargo deb --no-build --locked --quiet >/dev/null
cargo generate-rpm >/dev/null
ls "$target"/debian/certagent_*.deb "$target"/generate-rpm/certagent-*.rpm
