#!/bin/sh
# Download (never install) the Debian kernels the e2e rig boots, and unpack
# them under ${VMMCI_CACHE:-~/.cache/vmmci}/kernels/<name>/:
#   bookworm-cloud    bookworm's linux-image-cloud-amd64   (6.1)
#   bookworm-generic  bookworm's linux-image-amd64         (6.1)
#   trixie-cloud      trixie's linux-image-cloud-amd64     (6.12)
#   bullseye-cloud    bullseye's linux-image-cloud-amd64   (5.10)
#   forky-cloud       forky's linux-image-cloud-amd64      (testing: the newest
#                     series Debian ships; fixed once fetched: delete the
#                     directory to take a newer one)
# The last three come with a PRIVATE apt configuration per suite (the
# machine's sources are never touched).
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

# unpack <name> <deb>...: all of them into one tree
unpack() {
    name=$1; shift
    dest=$kdir/$name
    if [ -e "$dest/VERSION" ]; then
        return 0
    fi
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp/root"
    for deb in "$@"; do
        dpkg-deb -x "$deb" "$dest.tmp/root"
    done
    ver=$(ls "$dest.tmp/root/lib/modules" 2>/dev/null | head -n1)
    if [ -z "$ver" ]; then
        ver=$(ls "$dest.tmp/root/usr/lib/modules" | head -n1)
        ln -s root/usr/lib/modules/"$ver" "$dest.tmp/modules"
    else
        ln -s root/lib/modules/"$ver" "$dest.tmp/modules"
    fi
    # /boot/vmlinuz-<ver>, or (linux-binary-<ver>) beside the modules
    if [ -e "$dest.tmp/root/boot/vmlinuz-$ver" ]; then
        ln -s root/boot/vmlinuz-"$ver" "$dest.tmp/vmlinuz"
    else
        ln -s modules/vmlinuz "$dest.tmp/vmlinuz"
    fi
    [ -e "$dest.tmp/vmlinuz" ] || { echo "fetch-kernels: no vmlinuz in $*" >&2; exit 1; }
    echo "$ver" > "$dest.tmp/VERSION"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
}

# download <pkg> <apt-get cmd>: the .deb in the current directory (cached),
# its file name on stdout
download() {
    d=$(ls "$1"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$d" ]; then
        echo "fetch-kernels: downloading $1" >&2
        # shellcheck disable=SC2086
        $2 download "$1" >&2 || return 1
        d=$(ls "$1"_*.deb | head -n1)
    fi
    echo "$d"
}

# fetch <name> <meta> <apt-get cmd...> -- <apt-cache cmd...>
# With refresh=1, a failed download is tried again after an update.
refresh=""
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
    if ! deb=$(download "$pkg" "$getcmd"); then
        # Testing (and a point release) drops old kernels from the archive:
        # lists from an earlier run may name one that is gone.
        [ -n "$refresh" ] || exit 1
        echo "fetch-kernels: $name: again with fresh lists"
        # shellcheck disable=SC2086
        $getcmd update
        pkg=$(resolve "$meta" "$@")
        deb=$(download "$pkg" "$getcmd") || exit 1
    fi
    # Since 6.17 or so (forky) linux-image-<ver> is empty and depends on
    # linux-binary-<ver> (vmlinuz), linux-modules-<ver> and linux-base-<ver>
    # (modules.builtin, modules.order): take those too.
    parts=$(dpkg-deb -f "$deb" Depends | tr ',|' '\n\n' |
        sed -n 's/^ *\(linux-\(binary\|modules\|base\)-[0-9][^ ]*\).*/\1/p')
    debs=$deb
    for part in $parts; do
        d=$(download "$part" "$getcmd") || exit 1
        debs="$debs $d"
    done
    # shellcheck disable=SC2086
    unpack "$name" $debs
    echo "fetch-kernels: $name: $(cat "$kdir/$name/VERSION")"
}

# --- bookworm: the machine's own apt configuration (read-only use) ---------
if [ -z "$(resolve linux-image-cloud-amd64 apt-cache)" ]; then
    if [ "$(id -u)" = 0 ]; then apt-get update; else
        echo "fetch-kernels: apt lists empty; run apt-get update as root" >&2; exit 1; fi
fi
fetch bookworm-cloud linux-image-cloud-amd64 apt-get -- apt-cache
fetch bookworm-generic linux-image-amd64 apt-get -- apt-cache

# --- other suites: a private apt configuration each -------------------------
# private <name> <suite>: fetch <suite>'s linux-image-cloud-amd64 as <name>,
# with apt lists and downloads under $cache/apt-<suite>.
private() {
    name=$1 suite=$2
    if [ -e "$kdir/$name/VERSION" ]; then
        echo "fetch-kernels: $name cached: $(cat "$kdir/$name/VERSION")"
        return 0
    fi
    priv=$cache/apt-$suite
    mkdir -p "$priv/lists/partial" "$priv/cache/archives/partial"
    cat > "$priv/sources.list" <<EOS
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
EOS
    set -- -o Dir::Etc::SourceList="$priv/sources.list" \
           -o Dir::Etc::SourceParts=/dev/null \
           -o Dir::State::Lists="$priv/lists" \
           -o Dir::Cache="$priv/cache" \
           -o Dir::State::status=/dev/null \
           -o APT::Architecture=amd64
    if ! ls "$priv/lists/"*_Packages* >/dev/null 2>&1; then
        echo "fetch-kernels: apt-get update (private $suite lists in $priv)"
        apt-get "$@" update
    fi
    refresh=1
    fetch "$name" linux-image-cloud-amd64 apt-get "$@" -- apt-cache "$@"
    refresh=""
}

private trixie-cloud trixie
private bullseye-cloud bullseye
private forky-cloud forky

echo
for k in bookworm-cloud bookworm-generic trixie-cloud bullseye-cloud forky-cloud; do
    echo "$k: $kdir/$k/vmlinuz (modules: $kdir/$k/modules)"
done
