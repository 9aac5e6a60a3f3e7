#!/usr/bin/env bash
# Secret hygiene: fails if any output the test suite captured contains a private key or a
# test credential. Usage: tests/secrets.sh DIR
#
# DIR holds what CI captured: every certagent run and daemon of the integration tests (the
# harness writes them when CERTAGENT_TEST_OUTPUT_DIR is set, see tests/common/agent.rs) and
# the cargo test log. CSRs and certificates are public and may be printed; private keys
# (any PEM "PRIVATE KEY" block, encrypted or not), the fake DNSimple API token and the
# ACME EAB MAC keys the tests use may not.
set -euo pipefail
dir=${1:?usage: tests/secrets.sh DIR}
root="$(cd "$(dirname "$0")/.." && pwd)"
[ -d "$dir" ] || { echo "secrets: $dir is not a directory" >&2; exit 2; }

patterns=(
  '-----BEGIN PRIVATE KEY-----'
  '-----BEGIN EC PRIVATE KEY-----'
  '-----BEGIN RSA PRIVATE KEY-----'
  'ENCRYPTED PRIVATE KEY'
  'PRIVATE KEY-----'
  'test-dnsimple-token'
)
# Every credential-looking literal the tests define, so a new one is covered without editing
# this list: the fake DNSimple's default token and the EAB MAC keys (base64url, 32+ chars).
while IFS= read -r tok; do
  [ -n "$tok" ] && patterns+=("$tok")
done < <(
  {
    grep -hoE 'token: "[^"]+"' "$root/tests/common/dnsimple.rs" | sed -E 's/token: "(.*)"/\1/'
    grep -hiE -A3 'eab|mac' "$root"/tests/integration/*.rs "$root"/tests/common/*.rs |
      grep -oE '"[A-Za-z0-9_-]{32,}"' | tr -d '"'
  } | sort -u
)

pattern_file=$(mktemp)
trap 'rm -f "$pattern_file"' EXIT
printf '%s\n' "${patterns[@]}" | sort -u > "$pattern_file"

files=$(find "$dir" -type f | wc -l)
if [ "$files" -eq 0 ]; then
  echo "secrets: no captured output in $dir (was CERTAGENT_TEST_OUTPUT_DIR set for cargo test?)" >&2
  exit 2
fi
# -a: binary output is still text to us; -F: fixed strings. The harness's header line in each
# capture file (`#% capture: ` + test and command line) is not certagent output: skipped.
leaks=0
while IFS= read -r -d '' file; do
  n=$(grep -av '^#% capture: ' "$file" | grep -acF -f "$pattern_file" || true)
  [ "$n" -gt 0 ] || continue
  leaks=$((leaks + n))
  echo "secrets: LEAK in $file ($(head -1 "$file" | cut -c1-200)):" >&2
  grep -av '^#% capture: ' "$file" | grep -aFn -f "$pattern_file" | cut -c1-200 | head -5 >&2
done < <(find "$dir" -type f -print0)
echo "secrets: $files outputs scanned, $leaks leaks ($(wc -l < "$pattern_file") patterns)"
[ "$leaks" -eq 0 ]
