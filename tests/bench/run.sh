#!/usr/bin/env bash
# One of the benchmarks, built as the packages are (packaging/env.sh): `tests/bench/run.sh
# daemon` or `tests/bench/run.sh peers` (the latter through tests/bench/peers/run.sh, which
# installs the peers first). As root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/../.."
. packaging/env.sh
bench=${1:?usage: tests/bench/run.sh daemon|peers|fleet [ARGS...]}
shift
exec cargo bench --bench "$bench" "$@"
