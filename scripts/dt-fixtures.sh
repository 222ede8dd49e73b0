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
#
# dumpdtb= makes QEMU write the final DTB and exit before running anything. -append is only
# accepted together with -kernel, so /dev/null stands in for the kernel (for raspi4b too:
# without -kernel the dump works but has no bootargs). Blobs newer than this script (and than
# the upstream Pi DTB) are kept, so reruns are instant; FORCE=1 regenerates everything.
set -euo pipefail
OUT=${1:?usage: $0 OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF="$ROOT/scripts/dt-fixtures.sh"
PI_DTB=${PI_DTB:-$ROOT/.cache/bcm2711-rpi-4-b.dtb}
QEMU=${QEMU:-qemu-system-aarch64}
APPEND="console=ttyAMA0 test_vmalloc.nr_threads=4 mm.vfree=bulk"

command -v "$QEMU" >/dev/null || { echo "dt-fixtures: $QEMU not found (run scripts/setup.sh)" >&2; exit 1; }
[ -s "$PI_DTB" ] || { echo "dt-fixtures: $PI_DTB missing (run scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$OUT"

# up_to_date FILE: exists, non-empty and newer than everything it is made from.
up_to_date() { [ "${FORCE:-0}" != 1 ] && [ -s "$1" ] && [ "$1" -nt "$SELF" ] && [ "$1" -nt "$PI_DTB" ]; }

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
