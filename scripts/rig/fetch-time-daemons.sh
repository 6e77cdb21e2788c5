#!/bin/sh
# Download (never install) the Debian 12 time daemons the full-distro
# stand-back test installs inside the guest, one after the other (they
# conflict with each other: each Provides time-daemon), into
# ${VMMCI_CACHE:-~/.cache/vmmci}/time-daemons/:
#   ntpsec, openntpd (and netbase, its /etc/services), systemd-timesyncd,
#   linuxptp (ptp4l, phc2sys)
# chrony is in the image already, busybox's ntpd comes from busybox-static.
# The host's apt must see bookworm (the image's suite); already-downloaded
# packages are kept.
set -eu

cache=${VMMCI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmmci}
dir=$cache/time-daemons
mkdir -p "$dir"
cd "$dir"

PKGS="ntpsec openntpd netbase systemd-timesyncd linuxptp"
missing=""
for p in $PKGS; do
    ls "${p}"_*.deb >/dev/null 2>&1 || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "fetch-time-daemons: all present in $dir"
    exit 0
fi
echo "fetch-time-daemons: downloading$missing"
# shellcheck disable=SC2086
if ! apt-get download $missing >/dev/null 2>&1; then
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get download $missing
fi
ls "$dir"
