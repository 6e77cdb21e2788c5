#!/bin/sh
# Build the static guest binaries, the agent `vmmci` and the rig's clock
# probe `rig-clockprobe`, into <repo>/target/static (a target dir of its own:
# the static RUSTFLAGS would otherwise rebuild everything on every switch).
# Prints `export VMMCI_RIG_BIN=...` last.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${VMMCI_STATIC_TARGET:-$repo/target/static}
triple=x86_64-unknown-linux-gnu
cd "$repo"
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$target \
    cargo build --release --locked --target $triple -p vmmci --bin vmmci -p vmmci-rig --bin rig-clockprobe
out=$target/$triple/release
for b in vmmci rig-clockprobe; do
    ldd "$out/$b" 2>&1 | grep -q "statically linked" || { echo "build-guest-bins: $out/$b is not static" >&2; exit 1; }
    echo "built: $out/$b"
done
echo "export VMMCI_RIG_BIN=$out"
