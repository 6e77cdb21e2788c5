#!/bin/sh
# Install the host packages the e2e rig needs (Debian/Ubuntu, run as root).
# Idempotent and fast when everything is already there.
set -eu

PKGS="qemu-system-x86 busybox-static cpio e2fsprogs kmod xz-utils ca-certificates debian-archive-keyring"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all present ($PKGS)"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing:$missing; run this script as root" >&2
    exit 1
fi

echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
# Update the lists only if the packages cannot be found in the current ones.
# shellcheck disable=SC2086
if ! apt-get install -y --no-install-recommends $missing; then
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing
fi
