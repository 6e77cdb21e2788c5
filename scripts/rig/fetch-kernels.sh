#!/bin/sh
# Download (never install) the Debian kernels the e2e rig boots, and unpack
# them under ${VMMCI_CACHE:-~/.cache/vmmci}/kernels/<name>/:
#   bookworm-cloud    bookworm's linux-image-cloud-amd64   (6.1)
#   bookworm-generic  bookworm's linux-image-amd64         (6.1)
#   trixie-cloud      trixie's linux-image-cloud-amd64     (6.12), fetched with
#                     a PRIVATE apt configuration (the machine's sources are
#                     never touched)
# Each directory gets: vmlinuz (symlink), modules -> lib/modules/<ver>,
# VERSION, and the extracted package tree in root/.
# Already-unpacked kernels are skipped.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VMMCI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmmci}
kdir=$cache/kernels
mkdir -p "$kdir/debs"
cd "$kdir/debs"

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "fetch-kernels: needs apt-get and dpkg-deb (Debian host)" >&2
    exit 1
fi

# resolve <apt-cache cmd...> <meta-package>: the versioned linux-image package
resolve() {
    meta=$1; shift
    "$@" depends "$meta" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1
}

# unpack <name> <deb>
unpack() {
    name=$1 deb=$2
    dest=$kdir/$name
    if [ -e "$dest/VERSION" ]; then
        return 0
    fi
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp/root"
    dpkg-deb -x "$deb" "$dest.tmp/root"
    ver=$(ls "$dest.tmp/root/lib/modules" 2>/dev/null | head -n1)
    if [ -z "$ver" ]; then
        ver=$(ls "$dest.tmp/root/usr/lib/modules" | head -n1)
        ln -s root/usr/lib/modules/"$ver" "$dest.tmp/modules"
    else
        ln -s root/lib/modules/"$ver" "$dest.tmp/modules"
    fi
    ln -s root/boot/vmlinuz-"$ver" "$dest.tmp/vmlinuz"
    [ -e "$dest.tmp/vmlinuz" ] || { echo "fetch-kernels: no vmlinuz in $deb" >&2; exit 1; }
    echo "$ver" > "$dest.tmp/VERSION"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
}

# fetch <name> <meta> <apt-get cmd...> -- <apt-cache cmd...>
fetch() {
    name=$1 meta=$2; shift 2
    if [ -e "$kdir/$name/VERSION" ]; then
        echo "fetch-kernels: $name cached: $(cat "$kdir/$name/VERSION")"
        return 0
    fi
    getcmd=""
    while [ "$1" != "--" ]; do getcmd="$getcmd $1"; shift; done
    shift
    pkg=$(resolve "$meta" "$@")
    if [ -z "$pkg" ]; then
        echo "fetch-kernels: cannot resolve $meta (apt lists missing? try apt-get update)" >&2
        exit 1
    fi
    deb=$(ls "$pkg"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        echo "fetch-kernels: downloading $pkg"
        # shellcheck disable=SC2086
        $getcmd download "$pkg"
        deb=$(ls "$pkg"_*.deb | head -n1)
    fi
    unpack "$name" "$deb"
    echo "fetch-kernels: $name: $(cat "$kdir/$name/VERSION")"
}

# --- bookworm: the machine's own apt configuration (read-only use) ---------
if [ -z "$(resolve linux-image-cloud-amd64 apt-cache)" ]; then
    if [ "$(id -u)" = 0 ]; then apt-get update; else
        echo "fetch-kernels: apt lists empty; run apt-get update as root" >&2; exit 1; fi
fi
fetch bookworm-cloud linux-image-cloud-amd64 apt-get -- apt-cache
fetch bookworm-generic linux-image-amd64 apt-get -- apt-cache

# --- trixie: a private apt configuration -----------------------------------
priv=$cache/apt-trixie
mkdir -p "$priv/lists/partial" "$priv/cache/archives/partial"
cat > "$priv/sources.list" <<EOS
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
EOS
set -- -o Dir::Etc::SourceList="$priv/sources.list" \
       -o Dir::Etc::SourceParts=/dev/null \
       -o Dir::State::Lists="$priv/lists" \
       -o Dir::Cache="$priv/cache" \
       -o Dir::State::status=/dev/null \
       -o APT::Architecture=amd64
if [ ! -e "$kdir/trixie-cloud/VERSION" ]; then
    if ! ls "$priv/lists/"*_Packages* >/dev/null 2>&1; then
        echo "fetch-kernels: apt-get update (private trixie lists in $priv)"
        apt-get "$@" update
    fi
    fetch trixie-cloud linux-image-cloud-amd64 apt-get "$@" -- apt-cache "$@"
else
    echo "fetch-kernels: trixie-cloud cached: $(cat "$kdir/trixie-cloud/VERSION")"
fi

echo
for k in bookworm-cloud bookworm-generic trixie-cloud; do
    echo "$k: $kdir/$k/vmlinuz (modules: $kdir/$k/modules)"
done
