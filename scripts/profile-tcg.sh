#!/usr/bin/env bash
# Where QEMU TCG spends the host's time while it runs a guest kernel: host perf samples of the
# vCPU threads, split by what translated code called (TB lookups of indirect and cross-page
# branches, softmmu slow paths / TLB fills, exclusives, system-register helpers, ...) and
# attributed to the guest instruction and guest function that ran or called the helper.
# Builds nothing (the kernel image and ELF are inputs).
#
# Usage: scripts/profile-tcg.sh [options] KERNEL_IMAGE [-- QEMU_ARGS...]
#
#   QEMU_ARGS replace the default machine and command line; the script adds
#   `-kernel KERNEL_IMAGE -name tcgprof,debug-threads=on -perfmap`. Every `@LOOPS@` in them is
#   replaced by the loop count (-l, and the two counts of -c). Default:
#     -M virt -cpu cortex-a72 -smp 2 -m 2G -nographic -no-reboot -semihosting
#     -append "test_vmalloc.run_test_mask=1 test_vmalloc.nr_pages=1 test_vmalloc.test_loop_count=@LOOPS@"
#   (fix_size_alloc_test p:1, one worker: the issue's configuration).
#
# Options:
#   -o DIR     output directory (perf.data, serial.log, perf-script.txt, report.txt)
#                                                                   [target/profile-tcg]
#   -l N       loops for the profiled run                          [1000000]
#   -F HZ      perf sampling frequency                             [2999]
#   -D MS      start sampling MS milliseconds after QEMU starts (skip the boot) [0]
#   -e ELF     guest ELF for symbols and disassembly     [<image dir>/aarch64-unknown-none/release/boot]
#   -s FILE    guest symbols in `nm` format instead (e.g. Linux's /proc/kallsyms)
#   -d FILE    guest disassembly (llvm-objdump -d output) to print beside hot instructions
#   -n N       rows per table                                      [25]
#   -c N1,N2   also count calls of the expensive QEMU helpers with uprobes (perf probe + perf
#              stat), in two runs with N1 and N2 loops; prints calls per loop = difference / (N2-N1)
#   -q BIN     QEMU binary                                         [qemu-system-aarch64]
#   -k         keep QEMU's /tmp/perf-PID.map (removed otherwise; perf needs it to name JIT code,
#              so keep it to run `perf report -i DIR/perf.data` yourself later)
#
# Examples:
#   scripts/profile-tcg.sh target/kernel8.img
#   scripts/profile-tcg.sh -c 20000,60000 -l 300000 target/kernel8.img
#   scripts/profile-tcg.sh -s kallsyms.nm -D 5000 -l 300000 Image -- -M virt -cpu cortex-a72 \
#       -smp 2 -m 2G -nographic -no-reboot -initrd initrd.gz -append "console=ttyAMA0 ..."
#
# Needs perf (linux-perf) with perf_event_paranoid <= 1 or root, python3, and QEMU >= 8 (-perfmap).
# QEMU's helpers are exported symbols (the binary is stripped but keeps .dynsym), so perf names
# them without debug symbols; QEMU's static functions show as [unknown] and are named here by
# the nearest named caller.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/target/profile-tcg
LOOPS=1000000
FREQ=2999
DELAY=0
ELF=""
SYMS=""
DIS=""
TOP=25
COUNTS=""
QEMU=qemu-system-aarch64
KEEP=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while getopts "o:l:F:D:e:s:d:n:c:q:kh" opt; do
    case $opt in
        o) OUT=$OPTARG ;; l) LOOPS=$OPTARG ;; F) FREQ=$OPTARG ;; D) DELAY=$OPTARG ;;
        e) ELF=$OPTARG ;; s) SYMS=$OPTARG ;; d) DIS=$OPTARG ;; n) TOP=$OPTARG ;;
        c) COUNTS=$OPTARG ;; q) QEMU=$OPTARG ;; k) KEEP=1 ;; h) usage 0 ;; *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
IMG=$1
shift
[ -f "$IMG" ] || { echo "profile-tcg: no kernel image $IMG" >&2; exit 2; }
[ "${1:-}" = "--" ] && shift
if [ $# -gt 0 ]; then
    QARGS=("$@")
else
    QARGS=(-M virt -cpu cortex-a72 -smp 2 -m 2G -nographic -no-reboot -semihosting
        -append "test_vmalloc.run_test_mask=1 test_vmalloc.nr_pages=1 test_vmalloc.test_loop_count=@LOOPS@")
fi

command -v perf >/dev/null || { echo "profile-tcg: perf not found (apt-get install linux-perf)" >&2; exit 2; }
command -v "$QEMU" >/dev/null || { echo "profile-tcg: $QEMU not found" >&2; exit 2; }
QBIN=$(command -v "$QEMU")
PARANOID=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo 2)
if [ "$(id -u)" != 0 ] && [ "$PARANOID" -gt 1 ]; then
    echo "profile-tcg: perf_event_paranoid is $PARANOID: run as root or 'sysctl kernel.perf_event_paranoid=1'" >&2
    exit 2
fi

# LLVM tools: rustup's (llvm-tools component) first, then PATH.
LLVM_BIN=""
if command -v rustc >/dev/null; then
    LLVM_BIN=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin
fi
tool() {
    if [ -n "$LLVM_BIN" ] && [ -x "$LLVM_BIN/$1" ]; then echo "$LLVM_BIN/$1"
    elif command -v "$1" >/dev/null; then command -v "$1"
    else echo ""; fi
}

if [ -z "$ELF" ] && [ -z "$SYMS" ]; then
    cand=$(dirname "$IMG")/aarch64-unknown-none/release/boot
    [ -f "$cand" ] && ELF=$cand
fi
mkdir -p "$OUT"
if [ -n "$ELF" ]; then
    NM=$(tool llvm-nm)
    OBJDUMP=$(tool llvm-objdump)
    [ -n "$NM" ] || { echo "profile-tcg: llvm-nm not found (rustup component add llvm-tools)" >&2; exit 2; }
    "$NM" -n -C "$ELF" > "$OUT/guest.nm"
    SYMS=$OUT/guest.nm
    if [ -z "$DIS" ] && [ -n "$OBJDUMP" ]; then
        "$OBJDUMP" -d --no-show-raw-insn "$ELF" > "$OUT/guest.dis"
        DIS=$OUT/guest.dis
    fi
fi
[ -n "$SYMS" ] || echo "profile-tcg: no guest symbols (-e ELF or -s FILE): guest addresses only" >&2

MAP=""
PROBES=0
cleanup() {
    if [ "$KEEP" = 0 ] && [ -n "$MAP" ]; then rm -f "$MAP"; fi
    if [ "$PROBES" = 1 ]; then perf probe -q -d 'tcgprof:*' >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

with_loops() { # with_loops N: QARGS with @LOOPS@ replaced, into ARGS
    ARGS=()
    local a
    for a in "${QARGS[@]}"; do ARGS+=("${a//@LOOPS@/$1}"); done
}

# ---- 1. the profiled run --------------------------------------------------------------------
with_loops "$LOOPS"
DELAY_OPT=()
[ "$DELAY" -gt 0 ] && DELAY_OPT=(-D "$DELAY")
echo "profile-tcg: perf record -F $FREQ --call-graph dwarf${DELAY_OPT[*]:+ ${DELAY_OPT[*]}} -- $QEMU -kernel $IMG ${ARGS[*]}" >&2
status=0
perf record -q -F "$FREQ" --call-graph dwarf,4096 "${DELAY_OPT[@]}" -o "$OUT/perf.data" -- \
    "$QBIN" -name tcgprof,debug-threads=on -perfmap -kernel "$IMG" "${ARGS[@]}" \
    > "$OUT/serial.log" 2>&1 < /dev/null || status=$?
if [ "$status" != 0 ]; then
    echo "profile-tcg: perf/QEMU exited with status $status; the end of $OUT/serial.log:" >&2
    tail -5 "$OUT/serial.log" >&2
    [ -s "$OUT/perf.data" ] || exit 1
fi
# QEMU's pid (the vCPU threads' process) names its perf map.
QPID=$(perf script -i "$OUT/perf.data" -F comm,pid 2>/dev/null | awk '/^ *CPU [0-9]+\// {p = $NF} END {print p}' || true)
[ -n "$QPID" ] && [ -f "/tmp/perf-$QPID.map" ] && MAP=/tmp/perf-$QPID.map
[ -n "$MAP" ] || echo "profile-tcg: no QEMU perf map (/tmp/perf-PID.map): JIT code stays unnamed" >&2
grep -aE 'Summary:|All test took' "$OUT/serial.log" | tr -d '\r' | sed 's/^/  guest: /' || true

perf script -i "$OUT/perf.data" -F comm,tid,ip,sym,dso 2>/dev/null > "$OUT/perf-script.txt"

# ---- 2. the report --------------------------------------------------------------------------
python3 - "$OUT/perf-script.txt" "${SYMS:-}" "${DIS:-}" "${MAP:-}" "$FREQ" "$OUT/serial.log" "$TOP" \
    <<'PY' | tee "$OUT/report.txt"
import bisect, collections, os, re, sys
script, symf, disf, mapf, freq, serial, top = sys.argv[1:8]
freq = float(freq); top = int(top)

def tidy(n):  # what llvm-nm -C leaves of legacy Rust mangling inside names
    n = re.sub(r'::h[0-9a-f]{16}$', '', n)
    for a, b in (('$LT$', '<'), ('$GT$', '>'), ('$u20$', ' '), ('$C$', ','), ('$RF$', '&'), ('$BP$', '*'),
                 ('$u7b$', '{'), ('$u7d$', '}'), ('$u27$', "'"), ('$u5b$', '['), ('$u5d$', ']'), ('..', '::')):
        n = n.replace(a, b)
    return n.lstrip('_') if n.startswith('_<') else n
syms = []
if symf:
    for line in open(symf, errors='replace'):
        p = line.split(None, 2)
        if len(p) == 3 and p[1] in 'tTwW':
            syms.append((int(p[0], 16), tidy(p[2].strip())))
syms.sort(); saddr = [a for a, _ in syms]
def gfn(a):
    i = bisect.bisect_right(saddr, a) - 1
    return syms[i][1] if i >= 0 else '(no symbol)'
dis = {}
if disf:
    for line in open(disf, errors='replace'):
        m = re.match(r'^\s*([0-9a-f]{8,16}):\s+(.*)$', line)
        if m:
            dis[int(m.group(1), 16)] = re.sub(r'\s+', ' ', re.sub(r'<.*', '', m.group(2))).strip()
# QEMU's perf map: one line per guest instruction of each TB ("guest-0xADDR"); code TCG puts
# after a TB's body (softmmu slow paths) has no line, and is charged to the line before it.
jit = []
if mapf and os.path.exists(mapf):
    for line in open(mapf):
        p = line.split()
        if len(p) == 3 and p[2].startswith('guest-0x'):
            jit.append((int(p[0], 16), int(p[2][6:], 16)))
jit.sort(); jaddr = [a for a, _ in jit]
stub = set()   # guest addresses charged with out-of-line code after their TB
def jit_guest(host):
    i = bisect.bisect_right(jaddr, host) - 1
    if i >= 0 and host - jit[i][0] < 65536:
        stub.add(jit[i][1])
        return jit[i][1]
    return None

CLASSES = [
    ('TB lookup: helper_lookup_tb_ptr (ret/br/blr, branch to another page, TB end without chaining)', ('helper_lookup_tb_ptr',)),
    ('softmmu slow path: helper_*_mmu (TLB miss -> page-table walk, MMIO)', ('helper_ld', 'helper_st', 'helper_le_', 'helper_be_', 'helper_ret_', 'helper_probe')),
    ('exclusive / atomic: helper_atomic_* (stxr, cas)', ('helper_atomic_', 'helper_paired_cmpxchg', 'cpu_exec_step_atomic')),
    ('system register access check: helper_access_check_cp_reg (mrs/msr with an accessfn)', ('helper_access_check_cp_reg', 'helper_lookup_cp_reg')),
    ('hflags rebuild after msr (DAIF, SCTLR, ...): *rebuild_hflags*', ('helper_rebuild_hflags', 'arm_rebuild_hflags')),
    ('system register read/write: helper_get/set_cp_reg*', ('helper_get_cp_reg', 'helper_set_cp_reg')),
    ('DAIF immediate: helper_msr_i_daif*', ('helper_msr_i_',)),
    ('exception entry/return: helper_exception*', ('helper_exception',)),
    ('TLB maintenance: tlbi helpers, tlb_flush*', ('tlbi_', 'tlb_flush', 'helper_tlbi')),
    ('dc zva: helper_dc_zva', ('helper_dc_zva',)),
    ('other helper', ('helper_',)),
]
thread = collections.Counter(); cls = collections.Counter(); helper = collections.Counter()
leaf = collections.Counter(); gself = collections.Counter(); gall = collections.Counter()
fself = collections.Counter(); fall = collections.Counter()
fhelp = collections.defaultdict(collections.Counter); ghelp = collections.defaultdict(collections.Counter)
mself = collections.Counter(); mhelp = collections.Counter()
total = 0

def mnem(a):
    t = dis.get(a)
    if not t:
        return '(no disassembly)'
    p = t.split()
    m = p[0]
    if m in ('mrs', 'msr') and len(p) > 1:   # the system register matters
        r = (p[2] if m == 'mrs' else p[1]).rstrip(',')
        return f'{m} {r}'
    if m in ('dmb', 'dsb', 'tlbi', 'dc', 'ic') and len(p) > 1:
        return f'{m} {p[1].rstrip(",")}'
    return m

def frame_guest(sym, dso, ip):
    if sym.startswith('guest-0x'):
        return int(sym[6:], 16)
    if dso.startswith('/tmp/perf-') and dso.endswith('.map'):
        return jit_guest(ip)
    return None

def account(comm, chain):
    global total
    thread[comm] += 1
    if not re.match(r'CPU \d+/', comm):
        return
    total += 1
    names = [s for _, s, _ in chain]
    ip0, s0, d0 = chain[0]
    if s0 == '[unknown]':
        named = next((s for _, s, _ in chain if s != '[unknown]'), None)
        lname = f'[static in {os.path.basename(d0)}, under {named}]' if named else f'[unknown in {os.path.basename(d0)}]'
    else:
        lname = s0
    gi = None
    for i, (ip, s, d) in enumerate(chain):
        g = frame_guest(s, d, ip)
        if g is not None:
            gi, ga, exact = i, g, s.startswith('guest-0x')
            break
    if gi == 0:
        leaf['(translated guest code)'] += 1
        cls['translated guest code (the JIT output itself)'] += 1
        gself[ga] += 1; gall[ga] += 1; fself[gfn(ga)] += 1; fall[gfn(ga)] += 1
        mself[mnem(ga)] += 1
        return
    leaf[lname] += 1
    if gi is not None:
        entry = chain[gi - 1][1]
        below = [s for _, s, _ in chain[:gi]]
        if entry == '[unknown]':
            callee = next((s for s in reversed(below) if s != '[unknown]'), None)
            entry = f'[static QEMU code -> {callee}]' if callee else '[static QEMU code]'
        gall[ga] += 1; fall[gfn(ga)] += 1; fhelp[gfn(ga)][entry] += 1; ghelp[ga][entry] += 1
        helper[entry] += 1
        if exact:
            mhelp[mnem(ga)] += 1
        else:
            mhelp['(out-of-line code after a TB: softmmu slow paths)'] += 1
        if 'asm_exc_page_fault' in below:
            cls['host page fault (first touch of guest RAM by QEMU)'] += 1
        elif 'memory_region_dispatch_write' in below or 'memory_region_dispatch_read' in below:
            cls['MMIO: device emulation (memory_region_dispatch_*)'] += 1
        elif entry.startswith('[static') and any(s in below for s in ('arm_cpu_tlb_fill_align', 'tlb_set_page_full', 'get_phys_addr')):
            cls[CLASSES[1][0]] += 1
        else:
            for name, pre in CLASSES:
                if entry.startswith(pre):
                    cls[name] += 1
                    break
            else:
                cls['other code called from translated code'] += 1
        return
    if any(n in ('tb_gen_code', 'tcg_gen_code', 'perf_report_code') for n in names):
        cls['translation (tb_gen_code)'] += 1
    elif 'cpu_exec' in names:
        cls['cpu_exec loop: TB exits, interrupts, lookups outside translated code'] += 1
    elif d0.endswith('kernel.kallsyms]'):
        cls['host kernel'] += 1
    else:
        cls['no translated-code frame (unwinding stopped)'] += 1

comm = None; chain = []
for line in open(script, errors='replace'):
    if line.startswith(('\t', ' ')):
        m = re.match(r'\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$', line)
        if m:
            chain.append((int(m.group(1), 16), re.sub(r'\+0x[0-9a-f]+$', '', m.group(2)), m.group(3)))
        continue
    if comm is not None and chain:
        account(comm, chain)
    chain = []
    m = re.match(r'^(.*?)\s+\d+\s*$', line.rstrip('\n'))
    comm = m.group(1) if m else None
if comm is not None and chain:
    account(comm, chain)

loops = None
for line in open(serial, errors='replace'):
    m = re.search(r'loops: (\d+) avg: (\d+) usec', line)
    if m:
        loops = (loops or 0) + int(m.group(1))
pct = lambda n: 100.0 * n / max(total, 1)
allsamples = sum(thread.values())
print(f"\n== samples: {allsamples} at {freq:.0f} Hz ({allsamples / freq:.2f} s of host CPU); by thread ==")
for k, v in thread.most_common():
    print(f"  {100.0 * v / allsamples:6.2f}%  {k}")
if loops:
    print(f"  vCPU threads: {total / freq / loops * 1e6:.2f} us of host CPU per loop ({loops} loops; boot included unless -D skipped it)")
print("\n== vCPU time by what it was doing (the QEMU function translated code called; inclusive) ==")
for k, v in cls.most_common():
    print(f"  {pct(v):6.2f}%  {k}")
print(f"\n== top {top} host functions, self time (vCPU threads) ==")
for k, v in leaf.most_common(top):
    print(f"  {pct(v):6.2f}%  {k}")
print(f"\n== top {top} QEMU entry points called from translated code (inclusive) ==")
for k, v in helper.most_common(top):
    print(f"  {pct(v):6.2f}%  {k}")
print(f"\n== top {top} guest functions: total = own translated code + helpers it called ==")
print("   total    self  function  [top helpers, % of vCPU time]")
for f, v in fall.most_common(top):
    hs = ', '.join(f"{h} {pct(c):.1f}" for h, c in fhelp[f].most_common(3))
    print(f"  {pct(v):6.2f}% {pct(fself[f]):6.2f}%  {f[:100]}  [{hs}]")
if dis:
    print(f"\n== top {top} guest instruction kinds: total = self (their translated code) + helpers they called ==")
    print("   total    self helpers  kind")
    kinds = collections.Counter({k: mself[k] + mhelp[k] for k in set(mself) | set(mhelp)})
    for k, v in kinds.most_common(top):
        print(f"  {pct(v):6.2f}% {pct(mself[k]):6.2f}% {pct(mhelp[k]):6.2f}%  {k}")
print(f"\n== top {top} guest instructions (total incl. helpers; self = in translated code;")
print("   * = also charged with the out-of-line code (softmmu slow paths) placed after its TB) ==")
for a, v in gall.most_common(top):
    h = ghelp[a].most_common(1)
    hs = f"  <- {h[0][0]} {pct(h[0][1]):.1f}" if h else ''
    mark = '*' if a in stub else ' '
    print(f"  {pct(v):6.2f}% {pct(gself[a]):6.2f}% {mark}{a:#x}  {dis.get(a, '')[:40]:40s} {gfn(a)[:60]}{hs}")
PY

# ---- 3. optional: helper call counts per loop (uprobes) ------------------------------------
if [ -n "$COUNTS" ]; then
    N1=${COUNTS%,*}; N2=${COUNTS#*,}
    HELPERS=(helper_lookup_tb_ptr cpu_get_tb_cpu_state qht_lookup_custom get_page_addr_code_hostp
        helper_atomic_cmpxchgb helper_atomic_cmpxchgl_le helper_atomic_cmpxchgq_le helper_atomic_cmpxchgo_le
        helper_access_check_cp_reg helper_set_cp_reg64 helper_get_cp_reg64 helper_rebuild_hflags_a64
        arm_rebuild_hflags helper_msr_i_daifset helper_msr_i_daifclear helper_exception_return
        helper_stb_mmu helper_ldub_mmu helper_stl_mmu helper_ldul_mmu helper_stq_mmu helper_ldq_mmu
        arm_cpu_tlb_fill_align get_phys_addr probe_access_full_mmu helper_dc_zva tb_gen_code
        tlb_flush_by_mmuidx_all_cpus_synced tlb_flush_page_by_mmuidx_all_cpus_synced
        tlb_flush_range_by_mmuidx_all_cpus_synced)
    perf probe -q -d 'tcgprof:*' >/dev/null 2>&1 || true
    PROBES=1
    missing=()
    for h in "${HELPERS[@]}"; do
        perf probe -q -x "$QBIN" -a "tcgprof:$h=$h" >/dev/null 2>&1 || missing+=("$h")
    done
    [ ${#missing[@]} = 0 ] || echo "profile-tcg: no uprobe on ${missing[*]} (not exported by this QEMU, or probed already: perf probe -l)" >&2
    for n in "$N1" "$N2"; do
        with_loops "$n"
        echo "profile-tcg: counting helper calls, $n loops" >&2
        perf stat -x, -e 'tcgprof:*' -o "$OUT/counts-$n.csv" -- \
            "$QBIN" -kernel "$IMG" "${ARGS[@]}" > "$OUT/counts-$n.log" 2>&1 < /dev/null || true
    done
    python3 - "$OUT/counts-$N1.csv" "$OUT/counts-$N2.csv" "$N1" "$N2" <<'PY' | tee -a "$OUT/report.txt"
import sys
def load(f):
    d = {}
    for l in open(f):
        p = l.strip().split(',')
        if len(p) > 3 and p[2].startswith('tcgprof:'):
            d[p[2].split(':', 1)[1]] = int(p[0]) if p[0].isdigit() else 0
    return d
a, b = load(sys.argv[1]), load(sys.argv[2]); n = int(sys.argv[4]) - int(sys.argv[3])
print(f"\n== QEMU function calls per loop ((calls at {sys.argv[4]} loops - at {sys.argv[3]}) / {n}) ==")
for k in sorted(b, key=lambda k: -(b[k] - a.get(k, 0))):
    v = (b[k] - a.get(k, 0)) / n
    if v >= 0.005:
        print(f"  {v:9.2f}  {k}")
PY
fi

[ "$KEEP" = 0 ] || echo "profile-tcg: kept $MAP for perf report" >&2
echo "profile-tcg: report in $OUT/report.txt (perf data: $OUT/perf.data)" >&2
