#!/usr/bin/env bash
# Build certagent's .deb and .rpm: the release binary, the man pages (from the clap
# definitions, config.example.toml and packaging/man/*.md) and shell completions
# (certagent-assets), then cargo deb and cargo generate-rpm (installed with cargo install if
# missing). Honours CARGO_TARGET_DIR.
# Prints the path of each package on its own line at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/env.sh
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$PWD/$target ;; esac

# Once per machine. cargo-generate-rpm drags in a whole OpenPGP stack: unoptimized it compiles
# in about a third of the time (minutes saved on a fresh CI machine) and packs this package in
# seconds all the same. cargo-deb stays optimized: its xz compression is the slow part.
if ! command -v cargo-deb >/dev/null; then
  echo "build: installing cargo-deb (once per machine)" >&2
  cargo install --locked --quiet cargo-deb
fi
if ! command -v cargo-generate-rpm >/dev/null; then
  echo "build: installing cargo-generate-rpm (once per machine)" >&2
  cargo install --locked --quiet --debug cargo-generate-rpm
fi

command -v protoc >/dev/null || {
  echo "build: protoc is missing (the etcd client compiles etcd's protocol definitions): apt-get install protobuf-compiler" >&2
  exit 1
}
echo "build: cargo build --release" >&2
cargo build --release --locked --quiet --features assets --bins
assets=$target/release/assets
rm -rf "$assets"
"$target/release/certagent-assets" "$assets"
gzip -9n "$assets"/man/*.[578]

rm -rf "$target/debian" "$target/generate-rpm"
cargo deb --no-build --locked --quiet >/dev/null
cargo generate-rpm >/dev/null
ls "$target"/debian/certagent_*.deb "$target"/generate-rpm/certagent-*.rpm
