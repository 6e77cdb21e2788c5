#!/bin/sh
# Everything the e2e rig needs, then the scenario tests (one QEMU at a time).
# Usage: scripts/rig/run-e2e.sh [cargo test filter...]
# Root is needed only when packages are missing (install-deps.sh).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
"$here/install-deps.sh"
"$here/fetch-kernels.sh"
eval "$("$here/build-guest-bins.sh" | grep '^export ')"
export VMMCI_RIG_BIN
cd "$repo"
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} \
    cargo test -p vmmci-rig --test e2e -- --test-threads=1 --nocapture "$@"
