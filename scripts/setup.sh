#!/usr/bin/env bash
# make setup: install what the build and the QEMU runs need, idempotently.
#  - the Rust target (or rust-src for the build-std fallback), rust llvm-tools for objcopy
#  - qemu-system-aarch64 >= 9 (raspi4b) from bookworm-backports, device-tree-compiler
#  - the Pi 4 DTB, taken from Debian's arm64 kernel package into $CACHE
# The backports suite is added with the mirror the machine's own apt sources already use.
set -euo pipefail
CACHE=${CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}
mkdir -p "$CACHE"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

log() { echo "setup: $*"; }

# --- Rust -------------------------------------------------------------------------------------
if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-none; then
  if rustup target add aarch64-unknown-none >/dev/null 2>&1; then
    log "installed rust target aarch64-unknown-none"
  else
    log "prebuilt aarch64-unknown-none std unavailable: using build-std (rust-src)"
  fi
fi
rustup component list --installed 2>/dev/null | grep -q '^rust-src' || rustup component add rust-src >/dev/null 2>&1 || true
rustup component list --installed 2>/dev/null | grep -q '^llvm-tools' || rustup component add llvm-tools >/dev/null 2>&1 || rustup component add llvm-tools-preview >/dev/null 2>&1 || true
# make test runs `cargo fmt --check` and `cargo clippy` (make lint).
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 \
    || { echo "setup: could not install the $c component (rustup component add $c)"; exit 1; }
done

# --- QEMU >= 9 and dtc --------------------------------------------------------------------------
qemu_ok() {
  command -v qemu-system-aarch64 >/dev/null 2>&1 || return 1
  local v; v=$(qemu-system-aarch64 --version | head -1 | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
  [ -n "$v" ] && [ "$v" -ge 9 ]
}
apt_updated=0
apt_update() { [ $apt_updated = 1 ] || { $SUDO apt-get update -qq; apt_updated=1; }; }

if ! qemu_ok; then
  . /etc/os-release
  codename=${VERSION_CODENAME:-bookworm}
  # Find the Debian mirror from the machine's own sources (deb822 or one-line format).
  mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | awk '{print $2}' | grep -v security | head -1 || true)
  if [ -z "$mirror" ]; then
    mirror=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
               | grep -v security | awk '{print $2}' | head -1 || true)
  fi
  [ -n "$mirror" ] || { echo "setup: no Debian mirror found in the apt sources" >&2; exit 1; }
  bp=/etc/apt/sources.list.d/${codename}-backports.list
  if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding ${codename}-backports from $mirror"
    echo "deb $mirror ${codename}-backports main" | $SUDO tee "$bp" >/dev/null
    apt_updated=0
  fi
  apt_update
  log "installing qemu-system-arm from ${codename}-backports"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t "${codename}-backports" qemu-system-arm >/dev/null
  qemu_ok || { echo "setup: qemu-system-aarch64 >= 9 could not be installed" >&2; exit 1; }
fi
if ! command -v dtc >/dev/null 2>&1; then
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq device-tree-compiler >/dev/null
fi

# --- Pi 4 DTB -----------------------------------------------------------------------------------
DTB="$CACHE/bcm2711-rpi-4-b.dtb"
if [ ! -s "$DTB" ]; then
  log "fetching bcm2711-rpi-4-b.dtb from Debian's arm64 kernel package"
  W=$(mktemp -d)
  A="-o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Dir::State::Lists=$W/lists"
  mkdir -p "$W/lists/partial"
  apt-get $A update -qq
  PKG=$(apt-cache $A depends linux-image-arm64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$PKG" ] || { echo "setup: cannot resolve the arm64 kernel package" >&2; exit 1; }
  ( cd "$W" && apt-get $A download "$PKG" >/dev/null )
  dpkg-deb --fsys-tarfile "$W"/"$PKG"_*.deb | tar -x -C "$W" --wildcards './usr/lib/linux-image-*/broadcom/bcm2711-rpi-4-b.dtb'
  cp "$W"/usr/lib/linux-image-*/broadcom/bcm2711-rpi-4-b.dtb "$DTB"
  rm -rf "$W"
  log "$PKG -> $DTB"
fi
qemu-system-aarch64 --version | head -1 | sed 's/^/setup: /'
