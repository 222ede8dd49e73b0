#!/usr/bin/env bash
# make sdcard: a bootable SD card for a real Raspberry Pi 4, made without root.
#
#   target/sdcard.img  MBR, one FAT32 partition (type 0x0c) from 1 MiB to the end of the image
#   target/sdcard/     the same files, to copy onto the FAT partition of an existing card
#
# The files: start4.elf and fixup4.dat (the VideoCore firmware, from Debian's raspi-firmware,
# component non-free-firmware), bcm2711-rpi-4-b.dtb (Debian's upstream DTB, from make setup),
# kernel8.img (make build), config.txt (boot/sdcard/config.txt, commented line by line),
# cmdline.txt (the boot parameters: $ARGS, default make run's), and LICENCE.broadcom (the
# firmware's redistribution terms, Debian's copyright file).
#
# The firmware .deb is fetched with `apt-get download` from the mirror the machine's own apt
# sources use; when they do not enable non-free-firmware, a private source list under
# .cache/sdcard-apt adds that component for this download only (the system's apt configuration
# is never changed). The two files are kept in .cache/raspi-firmware. mtools, dosfstools and
# fdisk (sfdisk) are installed with apt-get when missing.
#
# Usage: scripts/sdcard.sh            build (if an input changed) and check
#        scripts/sdcard.sh --check    only check target/sdcard.img (or the image given after it)
# Environment: ARGS (cmdline.txt), IMG (kernel), SDCARD_MIB (image size, 128), CACHE.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF=$ROOT/scripts/sdcard.sh
CACHE=${CACHE:-$ROOT/.cache}
KERNEL=${IMG:-$ROOT/target/kernel8.img}
DTB=$CACHE/bcm2711-rpi-4-b.dtb
CONFIG=$ROOT/boot/sdcard/config.txt
FW=$CACHE/raspi-firmware
STAGE=$ROOT/target/sdcard
OUT=$ROOT/target/sdcard.img
MIB=${SDCARD_MIB:-128}
START=2048                       # first sector of the partition: 1 MiB, the usual alignment
OFFSET=$((START * 512))
# make run's default (Makefile ARGS); `ARGS=` (empty) gives an empty cmdline.txt.
ARGS=${ARGS-test_vmalloc.suite=seed test_vmalloc.loop_scale=0.01}
REQUIRED=(start4.elf fixup4.dat bcm2711-rpi-4-b.dtb kernel8.img config.txt cmdline.txt)
FILES=("${REQUIRED[@]}" LICENCE.broadcom)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
export MTOOLS_SKIP_CHECK=1

log() { echo "sdcard: $*"; }
die() { echo "sdcard: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------------
# sfdisk and mkfs.fat live in /usr/sbin, which is not on a normal user's PATH.
find_tool() {
  command -v "$1" 2>/dev/null && return
  local d; for d in /usr/sbin /sbin; do [ -x "$d/$1" ] && { echo "$d/$1"; return; }; done
  return 1
}
tools() {
  local need=()
  find_tool mcopy >/dev/null || need+=(mtools)
  find_tool mkfs.fat >/dev/null || need+=(dosfstools)
  find_tool sfdisk >/dev/null || need+=(fdisk)
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "${need[@]}" >/dev/null
  fi
  if ! SFDISK=$(find_tool sfdisk) || ! MKFS=$(find_tool mkfs.fat) \
     || ! find_tool mcopy >/dev/null; then
    die "mtools, dosfstools and fdisk are needed (apt-get install mtools dosfstools fdisk)"
  fi
}

# --- firmware ------------------------------------------------------------------------------------
# Active apt source lines as "URI SUITES COMPONENTS SIGNED-BY" (deb822 *.sources and one-line
# *.list / sources.list; deb lines only).
apt_sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'function flush() { if (types ~ /(^| )deb( |$)/ && uri != "" && enabled != "no")
                              print uri "\t" suites "\t" comps "\t" (key == "" ? "-" : key)
                            types = uri = suites = comps = key = enabled = "" }
         /^[ \t]*#/ { next }
         /^[ \t]*$/ { flush(); next }
         { k = tolower($1); sub(/:$/, "", k); $1 = ""; sub(/^ +/, "")
           if (k == "types") types = $0; else if (k == "uris") { split($0, u, " "); uri = u[1] }
           else if (k == "suites") suites = $0; else if (k == "components") comps = $0
           else if (k == "signed-by") key = $0; else if (k == "enabled") enabled = tolower($0) }
         END { flush() }' "$f"
  done
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
    | awk '$1 == "deb" { key = "-"; i = 2
             if ($2 ~ /^\[/) { for (; i <= NF; i++) { if ($i ~ /signed-by=/) { key = $i
                 sub(/.*signed-by=/, "", key); sub(/\]$/, "", key) } if ($i ~ /\]$/) break } i++ }
             comps = ""; for (j = i + 2; j <= NF; j++) comps = comps (comps == "" ? "" : " ") $j
             print $i "\t" $(i + 1) "\t" comps "\t" key }'
}

firmware() {
  [ -s "$FW/start4.elf" ] && [ -s "$FW/fixup4.dat" ] && [ -s "$FW/LICENCE.broadcom" ] && return
  # shellcheck disable=SC1091
  . /etc/os-release
  local codename=${VERSION_CODENAME:-bookworm} w=$CACHE/sdcard-apt line uri key
  # The machine's main archive entry: not the security archive, and it carries $codename itself.
  line=$(apt_sources | awk -F'\t' -v c="$codename" \
           '$1 !~ /security/ && (" " $2 " ") ~ (" " c " ")' | head -1)
  [ -n "$line" ] || die "no Debian mirror for $codename found in the apt sources"
  IFS=$'\t' read -r uri _ _ key <<< "$line"
  rm -rf "$w/deb" && mkdir -p "$w/deb" "$w/lists/partial" "$w/cache/archives/partial" "$w/parts"
  if apt_sources | awk -F'\t' '{ print " " $3 " " }' | grep -q ' non-free-firmware '; then
    log "non-free-firmware is enabled in the apt sources: apt-get download raspi-firmware"
    (cd "$w/deb" || exit; apt-get download raspi-firmware 2>&1 | grep -v unsandboxed) || true
  fi
  if ! compgen -G "$w/deb/raspi-firmware_*.deb" >/dev/null; then
    log "adding non-free-firmware from $uri for this download only (private source list in $w)"
    local opt=""; [ "$key" = - ] || opt="[signed-by=$key] "
    echo "deb $opt$uri $codename non-free-firmware" > "$w/sources.list"
    local apt=(-o "Dir::Etc::SourceList=$w/sources.list" -o "Dir::Etc::SourceParts=$w/parts"
               -o "Dir::State::Lists=$w/lists" -o "Dir::Cache=$w/cache"
               -o Dir::State::status=/dev/null -o Acquire::Languages=none)
    apt-get "${apt[@]}" update -qq
    (cd "$w/deb" || exit; apt-get "${apt[@]}" download raspi-firmware 2>&1 | grep -v unsandboxed) \
      || true
  fi
  local deb; deb=$(compgen -G "$w/deb/raspi-firmware_*.deb" | head -1) \
    || die "could not download raspi-firmware"
  rm -rf "$w/x" && dpkg -x "$deb" "$w/x"
  mkdir -p "$FW"
  cp "$w/x/usr/lib/raspi-firmware/start4.elf" "$w/x/usr/lib/raspi-firmware/fixup4.dat" "$FW/"
  cp "$w/x/usr/share/doc/raspi-firmware/copyright" "$FW/LICENCE.broadcom"
  basename "$deb" > "$FW/VERSION"
  rm -rf "$w/x" "$w/deb"
  log "$(cat "$FW/VERSION") -> $FW"
}

# --- staging: target/sdcard/ --------------------------------------------------------------------
put() { # put SRC NAME: copy into $STAGE unless identical (mtimes stay put on a no-op run)
  cmp -s "$1" "$STAGE/$2" && return
  install -m 644 "$1" "$STAGE/$2.tmp" && mv "$STAGE/$2.tmp" "$STAGE/$2"
}
stage() {
  [ -s "$KERNEL" ] || die "$KERNEL missing: run make build (make sdcard does)"
  [ -s "$DTB" ] || die "$DTB missing: run make setup (make sdcard does)"
  mkdir -p "$STAGE"
  put "$FW/start4.elf" start4.elf
  put "$FW/fixup4.dat" fixup4.dat
  put "$FW/LICENCE.broadcom" LICENCE.broadcom
  put "$DTB" bcm2711-rpi-4-b.dtb
  put "$KERNEL" kernel8.img
  put "$CONFIG" config.txt
  # cmdline.txt: one line, no comments (the firmware hands all of it to the kernel as bootargs).
  printf '%s\n' "$ARGS" > "$STAGE/cmdline.txt.new"
  put "$STAGE/cmdline.txt.new" cmdline.txt
  rm -f "$STAGE/cmdline.txt.new"
}

# --- the image -----------------------------------------------------------------------------------
image() {
  local stamp="$OUT.stamp" want
  want=$( (echo "size=$MIB start=$START"; sha256sum < "$SELF"
            cd "$STAGE" && sha256sum "${FILES[@]}") )
  # Same inputs as last time and the image still holds them (not edited by hand): nothing to do.
  if [ -s "$OUT" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && (check "$OUT") >/dev/null 2>&1; then
    log "$OUT is up to date"
    return
  fi
  local tmp="$OUT.tmp" sectors=$((MIB * 2048))
  rm -f "$tmp" "$stamp"
  truncate -s "${MIB}M" "$tmp"
  # MBR: disk id "MMK0", one FAT32 (LBA) partition, type 0x0c, from 1 MiB to the end.
  printf 'label: dos\nlabel-id: 0x4d4d4b30\nunit: sectors\nstart=%d, size=%d, type=c\n' \
    "$START" $((sectors - START)) | "$SFDISK" --quiet --no-reread --no-tell-kernel "$tmp"
  # FAT32 inside the partition: --offset in sectors, -h hidden sectors = the partition start,
  # the size in KiB; volume id and label fixed so rebuilding the same files gives the same layout.
  "$MKFS" -F 32 -n MMKERNEL -i 4d4d4b30 --offset "$START" -h "$START" "$tmp" \
    $(((sectors - START) / 2)) >/dev/null
  local f
  for f in "${FILES[@]}"; do mcopy -m -i "$tmp@@$OFFSET" "$STAGE/$f" "::$f"; done
  mv "$tmp" "$OUT"
  echo "$want" > "$stamp"
  log "wrote $OUT ($MIB MiB, FAT32 partition at sector $START)"
}

# --- check ---------------------------------------------------------------------------------------
# The partition table says one FAT32 LBA partition at $START; each required file is in the FAT
# and (when target/sdcard/ has it) byte for byte the staged one.
check() {
  local img=$1 dump f got tmp
  [ -s "$img" ] || die "check: $img missing"
  dump=$("$SFDISK" -d "$img")
  if ! echo "$dump" | grep -Eq " : start= *$START, size= *[0-9]+, type=c$" \
     || [ "$(echo "$dump" | grep -c ' : start=')" != 1 ]; then
    die "check: $img: expected one partition at sector $START of type c:"$'\n'"$dump"
  fi
  tmp=$ROOT/target/.sdcard-check; rm -rf "$tmp"; mkdir -p "$tmp"
  for f in "${REQUIRED[@]}"; do
    mcopy -n -i "$img@@$OFFSET" "::$f" "$tmp/$f" 2>/dev/null || die "check: $f is not in $img"
    [ -s "$tmp/$f" ] || die "check: $f is empty in $img"
    if [ -f "$STAGE/$f" ] && [ "$img" = "$OUT" ]; then
      cmp -s "$tmp/$f" "$STAGE/$f" || die "check: $f in $img differs from $STAGE/$f"
    fi
  done
  rm -rf "$tmp"
  got=$(mdir -b -i "$img@@$OFFSET" :: | wc -l)
  log "check ok: $img: 1 partition (FAT32 LBA, type 0x0c, from sector $START)," \
      "$got files, the ${#REQUIRED[@]} required ones present"
}

tools
if [ "${1:-}" = --check ]; then
  check "${2:-$OUT}"
  exit
fi
firmware
stage
image
check "$OUT"
log "cmdline.txt: $(cat "$STAGE/cmdline.txt")"
log "copy onto an existing card's FAT partition: the files of $STAGE; or write the image:"
log "  dd if=$OUT of=/dev/sdX bs=4M conv=fsync   (sdX = the card; check with lsblk first)"
