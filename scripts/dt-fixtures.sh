#!/usr/bin/env bash
# dt-fixtures.sh OUTDIR: write the device-tree blobs bootcfg's dt host tests read
# (DT_FIXTURES=OUTDIR cargo test -p bootcfg -p fuzz-checks). They are generated, not committed: QEMU virt DTBs
# are 1 MiB each and the Pi 4 DTB is GPL.
#
#   virt-smp{1,4}-{512M,2G,3G}.dtb        QEMU -M virt (PSCI via hvc)
#   virt-gicv3-smp64-2G.dtb              -M virt,gic-version=3 -smp 64 (GICv3, 64 CPUs)
#   virt-smp4-2G-virtualization.dtb      -M virt,virtualization=on (PSCI via smc)
#   raspi4b.dtb                          the DTB QEMU -M raspi4b hands the guest: the upstream one
#                                        with /memory filled in, bootargs set, and PCIe/GENET/RNG/
#                                        thermal nodes overwritten by FDT_NOP tokens
#   bcm2711-rpi-4-b.dtb                  upstream Linux DTB (from scripts/setup.sh), /memory empty
#   bcm2711-fw-{1G,2G,4G,8G}.dtb         that DTB as the Pi 4 firmware hands it to the kernel (what
#                                        `make sdcard` boots): see "What the firmware adds" below
#   rpi-fw-disable-bt-4G.dtb             rpi-fw-4G.dtb as dtoverlay=disable-bt leaves it (serial0 =
#                                        the PL011 on GPIO14/15)
#   rpi-fw-{1G,2G,4G,8G}.dtb             the Raspberry Pi firmware's own bcm2711-rpi-4-b.dtb, patched
#                                        the same way. The Raspberry Pi DTB is GPL and no registry
#                                        ships it, so by default it is modelled: the upstream DTB
#                                        plus scripts/dt/rpi-downstream.dtsi (every difference the
#                                        boot reads). RPI_FW_DTB=path/to/bcm2711-rpi-4-b.dtb (from a
#                                        Pi's boot partition or raspberrypi/firmware boot/) uses the
#                                        real blob instead; the host tests expect the same BootInfo.
#
# What the firmware adds (start4.elf with its built-in armstub8; Raspberry Pi documentation,
# /work/shared/docs/boot.md section 3, and what Linux reports on real boards):
#  - /memory@0 reg: RAM below the VideoCore's share of the first GiB (gpu_mem=76 by default:
#    0x3b400000 bytes), then the rest up to the 0xfc000000 peripheral window, then RAM above
#    4 GiB, in entries of at most 2 GiB (the root's #size-cells is 1):
#      1G <0 0 0x3b400000>
#      2G  + <0 0x40000000 0x40000000>
#      4G  + <0 0x40000000 0xbc000000>
#      8G  + <0 0x40000000 0xbc000000> <1 0 0x80000000> <1 0x80000000 0x80000000>
#  - /memreserve/ 0x0 0x1000: the armstub and its spin table (cpu-release-addr 0xd8..0xf0),
#    added unless the DTB already has it (the upstream one does).
#  - /chosen/bootargs: the DTB's own bootargs, the firmware's parameters, two spaces, then
#    cmdline.txt (values below are representative: MAC address and vc_mem vary by board).
#  - on a C0 SoC (all 8 GB boards; modelled for 8G only, 1G-4G are the original B0 boards) the
#    firmware rewrites the dma-ranges of the bus the "emmc2bus" alias names to the full 32-bit
#    window below the peripherals, <0x0 0x0 0x0 0x0 0xfc000000>.
# Not modelled: kaslr-seed, rng-seed, /system, the bootloader config in nvram@0, overlays.
#
# dumpdtb= makes QEMU write the final DTB and exit before running anything. -append is only
# accepted together with -kernel, so /dev/null stands in for the kernel (for raspi4b too:
# without -kernel the dump works but has no bootargs). Blobs newer than this script (and than
# the upstream Pi DTB, the model and RPI_FW_DTB) are kept, so reruns are instant; FORCE=1
# regenerates everything.
set -euo pipefail
OUT=${1:?usage: $0 OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF="$ROOT/scripts/dt-fixtures.sh"
PI_DTB=${PI_DTB:-$ROOT/.cache/bcm2711-rpi-4-b.dtb}
QEMU=${QEMU:-qemu-system-aarch64}
APPEND="console=ttyAMA0 test_vmalloc.nr_threads=4 mm.vfree=bulk"
MODEL="$ROOT/scripts/dt/rpi-downstream.dtsi"
RPI_FW_DTB=${RPI_FW_DTB:-}
# The firmware's own parameters and a cmdline.txt for mmkernel (see "What the firmware adds").
FW_ARGS="video=HDMI-A-1:1920x1080M@60 smsc95xx.macaddr=dc:a6:32:00:00:01 vc_mem.mem_base=0x3ec00000 vc_mem.mem_size=0x40000000"
CMDLINE_TXT="console=ttyS0,115200 mm.vfree=single test_vmalloc.nr_threads=2"

command -v "$QEMU" >/dev/null || { echo "dt-fixtures: $QEMU not found (run scripts/setup.sh)" >&2; exit 1; }
for t in dtc fdtget; do
  command -v "$t" >/dev/null || { echo "dt-fixtures: $t not found (run scripts/setup.sh)" >&2; exit 1; }
done
[ -z "$RPI_FW_DTB" ] || [ -s "$RPI_FW_DTB" ] || { echo "dt-fixtures: RPI_FW_DTB=$RPI_FW_DTB missing" >&2; exit 1; }
[ -s "$PI_DTB" ] || { echo "dt-fixtures: $PI_DTB missing (run scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$OUT"

# up_to_date FILE [INPUT...]: exists, non-empty and newer than everything it is made from
# (this script, the upstream Pi DTB and the INPUTs).
up_to_date() {
  local f=$1 dep; shift
  [ "${FORCE:-0}" != 1 ] && [ -s "$f" ] || return 1
  for dep in "$SELF" "$PI_DTB" "$@"; do [ "$f" -nt "$dep" ] || return 1; done
}

# dump NAME MACHINE QEMU-ARGS...: run QEMU with dumpdtb into a temp file, check the magic, rename.
dump() {
  local name=$1 machine=$2; shift 2
  local out="$OUT/$name" tmp="$OUT/.$name.tmp" log="$OUT/.$name.log"
  up_to_date "$out" && return 0
  rm -f "$tmp"
  if ! "$QEMU" -M "$machine,dumpdtb=$tmp" -kernel /dev/null -display none "$@" >"$log" 2>&1 \
     || [ "$(head -c 4 "$tmp" | od -An -tx1 | tr -d ' \n')" != d00dfeed ]; then
    echo "dt-fixtures: $name failed:" >&2; cat "$log" >&2; rm -f "$tmp"; exit 1
  fi
  rm -f "$log"
  mv "$tmp" "$out"
  echo "dt-fixtures: $out"
}

for smp in 1 4; do
  for mem in 512M 2G 3G; do
    dump "virt-smp$smp-$mem.dtb" virt -cpu cortex-a72 -smp "$smp" -m "$mem" -append "$APPEND"
  done
done
dump virt-gicv3-smp64-2G.dtb virt,gic-version=3 -cpu cortex-a72 -smp 64 -m 2G -append "$APPEND"
dump virt-smp4-2G-virtualization.dtb virt,virtualization=on -cpu cortex-a72 -smp 4 -m 2G -append "$APPEND"
# QEMU prints "... has been disabled!" warnings for the NOP'd nodes; they land in the log only.
dump raspi4b.dtb raspi4b -dtb "$PI_DTB" -append "console=ttyS0"
if ! up_to_date "$OUT/bcm2711-rpi-4-b.dtb"; then
  cp "$PI_DTB" "$OUT/bcm2711-rpi-4-b.dtb"
  echo "dt-fixtures: $OUT/bcm2711-rpi-4-b.dtb"
fi

# --- the DTB as the Pi 4 firmware hands it over ----------------------------------------------

# body DTS: the decompiled blob without its /dts-v1/ and /memreserve/ header lines.
body() { grep -v -e '^/dts-v1/;' -e '^/memreserve/' "$1"; }

# compile OUT: DTS text on stdin -> OUT (via a temp file, so a failure leaves no blob behind).
compile() {
  local out=$1 tmp="$1.tmp"
  if ! dtc -q -I dts -O dtb -o "$tmp" -; then
    echo "dt-fixtures: dtc failed for $out" >&2; rm -f "$tmp"; exit 1
  fi
  mv "$tmp" "$out"
}

# fw_patch BASE_DTB OUT_NAME RAM: what start4.elf does to BASE_DTB on a board with RAM (1G, 2G,
# 4G, 8G) before it jumps to the kernel.
fw_patch() {
  local base=$1 out="$OUT/$2" ram=$3 dts reg args emmc2bus
  up_to_date "$out" "$base" && return 0
  dts=$(dtc -q -I dtb -O dts "$base")
  reg="<0x0 0x0 0x3b400000>"
  case $ram in
    1G) ;;
    2G) reg="$reg, <0x0 0x40000000 0x40000000>" ;;
    4G) reg="$reg, <0x0 0x40000000 0xbc000000>" ;;
    8G) reg="$reg, <0x0 0x40000000 0xbc000000>, <0x1 0x0 0x80000000>, <0x1 0x80000000 0x80000000>" ;;
    *) echo "dt-fixtures: no memory layout for $ram" >&2; exit 1 ;;
  esac
  args=$(fdtget -t s "$base" /chosen bootargs 2>/dev/null || true)
  args="${args:+$args }$FW_ARGS  $CMDLINE_TXT"
  emmc2bus=$(fdtget -t s "$base" /aliases emmc2bus 2>/dev/null || true)
  {
    echo '/dts-v1/;'
    grep '^/memreserve/' <<<"$dts" || true
    grep -q '^/memreserve/[[:space:]]*0x0*[[:space:]]\+0x0*1000;' <<<"$dts" \
      || echo '/memreserve/ 0x0 0x1000;'
    body <(echo "$dts")
    printf '/ {\n\tmemory@0 {\n\t\tdevice_type = "memory";\n\t\treg = %s;\n\t};\n' "$reg"
    printf '\tchosen {\n\t\tbootargs = "%s";\n\t};\n};\n' "$args"
    if [ "$ram" = 8G ] && [ -n "$emmc2bus" ]; then
      printf '&{%s} {\n\tdma-ranges = <0x0 0x0 0x0 0x0 0xfc000000>;\n};\n' "$emmc2bus"
    fi
  } | compile "$out"
  echo "dt-fixtures: $out"
}

# The Raspberry Pi DTB before the firmware touches it: the real one, or the model. .rpi-base.src
# records which, so switching between them rebuilds it (and, being newer, the rpi-fw-* blobs).
RPI_BASE="$OUT/.rpi-base.dtb"
if [ -n "$RPI_FW_DTB" ]; then
  src="real $(sha256sum <"$RPI_FW_DTB" | cut -d' ' -f1)"
else
  src=model
fi
if [ "$(cat "$RPI_BASE.src" 2>/dev/null)" != "$src" ] || ! up_to_date "$RPI_BASE" "$MODEL"; then
  if [ -n "$RPI_FW_DTB" ]; then
    cp "$RPI_FW_DTB" "$RPI_BASE.tmp" && mv "$RPI_BASE.tmp" "$RPI_BASE"
  else
    { echo '/dts-v1/;'; dtc -q -I dtb -O dts "$PI_DTB" | grep '^/memreserve/' || true
      body <(dtc -q -I dtb -O dts "$PI_DTB"); cat "$MODEL"; } | compile "$RPI_BASE"
  fi
  echo "$src" >"$RPI_BASE.src"
  echo "dt-fixtures: $RPI_BASE ($src)"
fi
for ram in 1G 2G 4G 8G; do
  fw_patch "$PI_DTB" "bcm2711-fw-$ram.dtb" "$ram"
  fw_patch "$RPI_BASE" "rpi-fw-$ram.dtb" "$ram"
done
# dtoverlay=disable-bt: the firmware swaps the UART aliases, so serial0 (stdout-path) is the
# PL011 on GPIO14/15 (uart0, freed from Bluetooth) and serial1 the mini UART.
BT="$OUT/rpi-fw-disable-bt-4G.dtb"
if [ "${FORCE:-0}" = 1 ] || [ ! -s "$BT" ] || [ "$OUT/rpi-fw-4G.dtb" -nt "$BT" ]; then
  cp "$OUT/rpi-fw-4G.dtb" "$BT.tmp"
  fdtput -t s "$BT.tmp" /aliases serial0 /soc/serial@7e201000
  fdtput -t s "$BT.tmp" /aliases serial1 /soc/serial@7e215040
  mv "$BT.tmp" "$BT"
  echo "dt-fixtures: $BT"
fi
