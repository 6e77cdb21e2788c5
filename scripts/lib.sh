# Shared by the scripts: where downloads are cached, and checks for tools.

# Downloads (kernel .debs, apt lists) survive across clones here.
VMMCI_CACHE=${VMMCI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmmci}
export VMMCI_CACHE

need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "vmmci: cargo not found. Install Rust (https://rustup.rs, 1.85 or newer) and run this again." >&2
        exit 1
    fi
}
