#!/usr/bin/env bash
# make bench-linux: our kernel and Linux 6.12 (Debian's arm64 kernel, test_vmalloc.ko built out
# of tree) side by side on the same QEMU, per row of the seed suite (tools/plans/seed-table.toml).
#
#   icount: -icount shift=0 at -smp 1 (1 usec of guest time = 1000 guest instructions),
#           BENCH_LINUX_ICOUNT_RUNS boots of each kernel: instructions per loop; and at -smp 2
#           (BENCH_LINUX_ICOUNT2_RUNS boots each): the instructions the ns/instr figure uses
#   wall:   -smp 2, BENCH_LINUX_RUNS boots of each, alternating (ours, Linux, ours, Linux...):
#           wall-clock usec per loop
#
# Both: -M virt -cpu $CPU -m $MEM, one worker (nr_threads=1), sequential test order, the same
# loop count per row (the seed's nominal loops x BENCH_LINUX_SCALE). Ours runs its seed suite
# (test_vmalloc.suite=seed, defaults otherwise: mm.vfree=bulk, large orders on) in one boot;
# Linux boots once per run and loads test_vmalloc.ko once per row (run_test_mask = the row's
# test, nr_pages, use_huge, test_loop_count), with init_on_alloc=0 nokaslr as the anchor
# (shared/linux-anchor) measured it, the first load at BENCH_LINUX_SETTLE s of guest uptime
# (Linux is up to 2x slower in its first ~2 s; idle time costs no instructions under icount).
# Then `tvtool linux report` writes $OUT/report.md (printed) and $OUT/report.json.
#
# Usage: scripts/bench-linux.sh [all|prepare|report]     (default: all)
#
# Environment (defaults in brackets):
#   BENCH_LINUX_RUNS         wall-clock boots per kernel                      [10]
#   BENCH_LINUX_ICOUNT_RUNS  icount boots per kernel at -smp 1                [1]
#   BENCH_LINUX_ICOUNT2_RUNS icount boots per kernel at -smp 2 (0 = none)     [1]
#   BENCH_LINUX_SCALE        loops = seed's loops x this (20000 / 4000 loops)  [0.04]
#   BENCH_LINUX_SETTLE       Linux: first load at this guest uptime (s)       [5]
#   BENCH_LINUX_TIMEOUT      seconds before a boot is killed                  [900]
#   BENCH_LINUX_CACHE        downloads and builds                             [<repo>/.cache/linux-anchor]
#   OUT                      logs and report                                  [<repo>/target/bench/linux]
#   CPU, MEM                 QEMU -cpu, -m                                    [cortex-a72, 2G]
#   IMG, TVTOOL, PLAN        our kernel image, tvtool, the seed plan          [target/kernel8.img, ...]
#   KABI, KPKG               Debian kernel ABI / package version              [6.12.117+deb12, 6.12.117-1~deb12u1]
#
# Packages come from the mirrors of the machine's own apt sources: the arm64 package lists are
# kept in the cache (the host's dpkg is not given the arm64 architecture), the packages are
# fetched with `apt-get download` and unpacked with `dpkg -x`. Host tools (the aarch64 cross
# compiler, cpio, ...) are installed with apt-get when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/scripts/linux-anchor
RUNS=${BENCH_LINUX_RUNS:-10}
ICOUNT_RUNS=${BENCH_LINUX_ICOUNT_RUNS:-1}
ICOUNT2_RUNS=${BENCH_LINUX_ICOUNT2_RUNS:-1}
SCALE=${BENCH_LINUX_SCALE:-0.04}
SETTLE=${BENCH_LINUX_SETTLE:-5}
TIMEOUT=${BENCH_LINUX_TIMEOUT:-900}
WORK=${BENCH_LINUX_CACHE:-$ROOT/.cache/linux-anchor}
OUT=${OUT:-$ROOT/target/bench/linux}
CPU=${CPU:-cortex-a72}
MEM=${MEM:-2G}
IMG=${IMG:-$ROOT/target/kernel8.img}
TVTOOL=${TVTOOL:-$ROOT/tools/target/release/tvtool}
PLAN=${PLAN:-$ROOT/tools/plans/seed-table.toml}
KABI=${KABI:-6.12.117+deb12}
KPKG=${KPKG:-6.12.117-1~deb12u1}
KSERIES=$(echo "$KABI" | cut -d. -f1-2)
KREL=$KABI-arm64
WALL_SMP=2
ICOUNT_SMP=1
# The anchor's Linux command line (README of shared/linux-anchor): PL011 console, every printk
# on it, reboot (= QEMU exit with -no-reboot) on panic; no page zeroing on allocation, no KASLR
# (which forces KPTI on with cortex-a72).
LINUX_ARGS="console=ttyAMA0 loglevel=8 panic=-1 init_on_alloc=0 nokaslr"
TV_COMMON="nr_threads=1 sequential_test_order=1"

DEBS=$WORK/debs
HROOT=$WORK/hroot
KROOT=$WORK/kroot
MODDIR=$WORK/mod
IRD=$WORK/initramfs-bench
KIMG=$WORK/Image
INITRD=$WORK/initrd-bench.gz
STAMP=$WORK/initrd-bench.stamp

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
A64=(-o APT::Architecture=arm64 -o APT::Architectures=arm64
     -o "Dir::State::Lists=$WORK/lists-arm64" -o "Dir::Cache=$WORK/apt-cache"
     -o Dir::State::status=/dev/null)
AMD=(-o APT::Architecture=amd64 -o APT::Architectures=amd64
     -o "Dir::State::Lists=$WORK/lists-amd64" -o "Dir::Cache=$WORK/apt-cache"
     -o Dir::State::status=/dev/null)

log() { echo "bench-linux: $*" >&2; }
die() { log "$*"; exit 1; }

# --- prepare: Debian's kernel, test_vmalloc.ko built out of tree, a busybox initramfs -----------

host_tools() {
    local need=()
    command -v aarch64-linux-gnu-gcc-12 >/dev/null || need+=(gcc-aarch64-linux-gnu)
    command -v make >/dev/null || need+=(make)
    command -v cpio >/dev/null || need+=(cpio)
    command -v patch >/dev/null || need+=(patch)
    command -v xz >/dev/null || need+=(xz-utils)
    command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
    if ((${#need[@]})); then
        log "installing host tools: ${need[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

download() {
    mkdir -p "$DEBS" "$WORK/lists-arm64/partial" "$WORK/lists-amd64/partial" \
             "$WORK/apt-cache/archives/partial"
    # name=version  apt-options-array  file-glob
    local want=(
        "linux-image-$KREL=$KPKG A64 linux-image-${KREL}_*_arm64.deb"
        "linux-headers-$KREL=$KPKG A64 linux-headers-${KREL}_*_arm64.deb"
        "linux-headers-$KABI-common=$KPKG A64 linux-headers-${KABI}-common_*_all.deb"
        "linux-source-$KSERIES=$KPKG A64 linux-source-${KSERIES}_${KPKG}_all.deb"
        "busybox-static A64 busybox-static_*_arm64.deb"
        # linux-kbuild holds host tools (modpost, fixdep): it must be amd64
        "linux-kbuild-$KABI=$KPKG AMD linux-kbuild-${KABI}_*_amd64.deb"
    )
    local w p o g updated=0
    for w in "${want[@]}"; do
        read -r p o g <<< "$w"
        (cd "$DEBS" && compgen -G "$g" >/dev/null) && continue
        if ((!updated)); then
            log "apt-get update (arm64 + amd64 package lists in $WORK; the host's dpkg is untouched)"
            apt-get "${A64[@]}" update -qq
            apt-get "${AMD[@]}" update -qq
            updated=1
        fi
        local -n opts=$o
        log "downloading $p"
        (cd "$DEBS" && { apt-get "${opts[@]}" download "$p" 2>&1 | grep -v unsandboxed || true; })
        (cd "$DEBS" && compgen -G "$g" >/dev/null) ||
            die "could not download $p; pick an available version with KABI= and KPKG="
    done
}

extract() {
    rm -rf "$KROOT" "$HROOT" && mkdir -p "$KROOT" "$HROOT"
    dpkg -x "$DEBS"/linux-image-"$KREL"_*.deb "$KROOT"
    local d
    for d in "$DEBS"/linux-headers-"$KREL"_*.deb "$DEBS"/linux-headers-"$KABI"-common_*.deb \
             "$DEBS"/linux-kbuild-"$KABI"_*_amd64.deb; do
        dpkg -x "$d" "$HROOT"
    done
    # the headers Makefile includes the -common tree by absolute /usr/src path
    sed -i "s|^include /usr/src/|include $HROOT/usr/src/|" \
        "$HROOT/usr/src/linux-headers-$KREL/Makefile"
    # Debian's arm64 vmlinuz is a raw Image (gunzip if it is ever gzipped)
    if gzip -t "$KROOT/boot/vmlinuz-$KREL" 2>/dev/null; then
        gunzip -c "$KROOT/boot/vmlinuz-$KREL" > "$KIMG"
    else
        cp "$KROOT/boot/vmlinuz-$KREL" "$KIMG"
    fi
    rm -rf "$KROOT"    # the modules (~400 MB) are not needed
}

build_module() {
    rm -rf "$MODDIR" && mkdir -p "$MODDIR/src"
    # lib/test_vmalloc.c from the linux-source package of the same version
    dpkg-deb --fsys-tarfile "$DEBS"/linux-source-"$KSERIES"_"$KPKG"_all.deb |
        tar -xO "./usr/src/linux-source-$KSERIES.tar.xz" |
        tar -xJ -C "$MODDIR/src" "linux-source-$KSERIES/lib/test_vmalloc.c"
    local s=$MODDIR/src/linux-source-$KSERIES
    # __vmalloc_node_noprof is exported only to the in-tree module: resolved with a kprobe
    (cd "$s" && patch -s -p1 < "$HERE/test_vmalloc-anchor.patch")
    cp "$s/lib/test_vmalloc.c" "$MODDIR/"
    echo 'obj-m := test_vmalloc.o' > "$MODDIR/Kbuild"
    # CONFIG_DEBUG_INFO_BTF_MODULES= : skip module BTF (needs pahole, not needed)
    make -s -C "$HROOT/usr/src/linux-headers-$KREL" M="$MODDIR" \
        CONFIG_DEBUG_INFO_BTF_MODULES= modules >&2
    aarch64-linux-gnu-strip --strip-debug "$MODDIR/test_vmalloc.ko"
}

build_initramfs() {
    rm -rf "$IRD" "$WORK/busybox" && mkdir -p "$IRD"/{bin,proc,sys,dev,tmp}
    dpkg -x "$DEBS"/busybox-static_*_arm64.deb "$WORK/busybox"
    cp "$WORK/busybox/bin/busybox" "$IRD/bin/busybox"
    cp "$MODDIR/test_vmalloc.ko" "$IRD/test_vmalloc.ko"
    # one-shot finit_module loader (busybox insmod would run the test twice)
    aarch64-linux-gnu-gcc-12 -O2 -static -nostdlib -ffreestanding \
        -fno-stack-protector -o "$IRD/bin/tvload" "$HERE/tvload.c"
    install -m 755 "$HERE/init" "$IRD/init"
    (cd "$IRD" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$INITRD"
}

# What the module and the initramfs are built from: each is rebuilt when its inputs change.
module_id() {
    echo "$(sha256sum < "$HERE/test_vmalloc-anchor.patch" | cut -c1-16) $KABI $KPKG"
}
initramfs_id() {
    echo "$(cat "$HERE/init" "$HERE/tvload.c" | sha256sum | cut -c1-16) $(module_id)"
}

prepare() {
    local t0=$SECONDS mod ird
    mod=$(module_id)
    ird=$(initramfs_id)
    if [[ -s $KIMG && -s $MODDIR/test_vmalloc.ko && $(cat "$MODDIR.stamp" 2>/dev/null) == "$mod" &&
          -s $INITRD && $(cat "$STAMP" 2>/dev/null) == "$ird" ]]; then
        log "Linux $KREL and the test_vmalloc initramfs are cached in $WORK"
        return
    fi
    mkdir -p "$WORK"
    host_tools
    download
    if [[ ! -s $KIMG || ! -s $MODDIR/test_vmalloc.ko || $(cat "$MODDIR.stamp" 2>/dev/null) != "$mod" ]]; then
        log "building test_vmalloc.ko against linux-headers-$KREL in $WORK"
        extract
        build_module
        echo "$mod" > "$MODDIR.stamp"
    fi
    build_initramfs
    echo "$ird" > "$STAMP"
    log "prepared in $((SECONDS - t0)) s: $KIMG, $INITRD"
}

# --- boots ---------------------------------------------------------------------------------------

# boot LOG TIMEOUT QEMU-ARGS...: one QEMU run, serial output to LOG between HOST: lines.
boot() {
    local logf=$1; shift
    mkdir -p "$(dirname "$logf")"
    {
        echo "HOST: $(date -u +%FT%TZ) $(qemu-system-aarch64 --version | head -1)"
        echo "HOST: loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "HOST: $*"
    } > "$logf"
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    timeout "$TIMEOUT" "$@" < /dev/null >> "$logf" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    local wall
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    echo "HOST: qemu rc=$rc wall_s=$wall" >> "$logf"
    log "  ${logf#"$OUT"/}: rc=$rc, $wall s"
}

# boot_ours LOG SMP [QEMU-ARGS...]
boot_ours() {
    local logf=$1 smp=$2; shift 2
    boot "$logf" qemu-system-aarch64 -M virt -cpu "$CPU" -smp "$smp" -m "$MEM" -nographic \
        -no-reboot -semihosting -kernel "$IMG" \
        -append "test_vmalloc.suite=seed test_vmalloc.loop_scale=$SCALE test_vmalloc.nr_threads=1 test_vmalloc.sequential_test_order=1" "$@"
}

# boot_linux LOG SMP [QEMU-ARGS...]
boot_linux() {
    local logf=$1 smp=$2; shift 2
    local tv="" k
    for k in $TV_COMMON; do tv+=" tv.$k"; done
    boot "$logf" qemu-system-aarch64 -M virt -cpu "$CPU" -smp "$smp" -m "$MEM" -nographic \
        -no-reboot -kernel "$KIMG" -initrd "$INITRD" \
        -append "$LINUX_ARGS${tv} tvb.settle=$SETTLE tvb.rows=$LINUX_ROWS" "$@"
}

report() {
    "$TVTOOL" linux report --out "$OUT" --plan "$PLAN" --loop-scale "$SCALE"
}

main() {
    [[ -x $TVTOOL ]] || die "$TVTOOL missing (make tools)"
    [[ -s $IMG ]] || die "$IMG missing (make build)"
    prepare
    # NAME:MASK:P:H:LOOPS:NOMINAL per row of the plan, comma-separated (the /init's tvb.rows)
    LINUX_ROWS=$("$TVTOOL" linux rows --plan "$PLAN" --loop-scale "$SCALE" | paste -sd, -)
    [[ -n $LINUX_ROWS ]] || die "no rows in $PLAN"
    rm -rf "$OUT" && mkdir -p "$OUT"
    local t0=$SECONDS r
    {
        echo "start $(date -u +%FT%TZ)"
        echo "loadavg_before $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "nproc $(nproc)"
        echo "cpu_model $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
        echo "qemu $(qemu-system-aarch64 --version | head -1)"
        echo "linux $KREL ($KPKG)"
        echo "guest -M virt -cpu $CPU -m $MEM"
        echo "runs $RUNS"
        echo "icount_runs $ICOUNT_RUNS"
        echo "icount2_runs $ICOUNT2_RUNS"
        echo "scale $SCALE"
        echo "settle $SETTLE"
    } > "$OUT/host.txt"
    log "icount (-smp $ICOUNT_SMP): $ICOUNT_RUNS boot(s) of each kernel"
    for r in $(seq 1 "$ICOUNT_RUNS"); do
        boot_ours "$OUT/icount/ours/run$r.log" "$ICOUNT_SMP" -icount shift=0
        boot_linux "$OUT/icount/linux/run$r.log" "$ICOUNT_SMP" -icount shift=0
    done
    log "icount (-smp $WALL_SMP, for ns per instruction): $ICOUNT2_RUNS boot(s) of each kernel"
    for r in $(seq 1 "$ICOUNT2_RUNS"); do
        boot_ours "$OUT/icount-smp2/ours/run$r.log" "$WALL_SMP" -icount shift=0
        boot_linux "$OUT/icount-smp2/linux/run$r.log" "$WALL_SMP" -icount shift=0
    done
    log "wall-clock (-smp $WALL_SMP): $RUNS boot(s) of each kernel, alternating"
    for r in $(seq 1 "$RUNS"); do
        boot_ours "$OUT/wall/ours/run$r.log" "$WALL_SMP"
        boot_linux "$OUT/wall/linux/run$r.log" "$WALL_SMP"
    done
    {
        echo "loadavg_after $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "boots_s $((SECONDS - t0))"
    } >> "$OUT/host.txt"
    report
}

case "${1:-all}" in
    all) main ;;
    prepare) prepare ;;
    report) report ;;
    *) echo "usage: $0 [all|prepare|report]" >&2; exit 2 ;;
esac
