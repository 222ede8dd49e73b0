#!/usr/bin/env python3
"""The kernel's hot-code layout: where each hot function starts, measured on the seed suite.

QEMU's TCG chains a translated block (TB) to the next only when the branch target lies on the
same 4 KiB guest page as the block; every branch, call or fall-through into another page (and
every return) goes through `helper_lookup_tb_ptr`, about 16-18 ns each on this host. On real
cores a far call costs i-cache and i-TLB footprint. So the order and the start offset of the hot
functions decide how many of those lookups a loop pays: the fix_size p:1 loop's ten hot
functions span 10 pages although their executed code is 5.5 KiB, and the linker's call-graph
ordering (hfsort/C3) alone left 15 page crossings per loop. This is profile-guided layout (Linux:
CONFIG_AUTOFDO_CLANG / CONFIG_PROPELLER_CLANG since 6.13; the Debian 6.12 kernel we compare
against has neither).

  layout.py generate [--img IMG] [--elf ELF] [--out FILE]
      Boots the image at -smp 2 (the wall-clock comparison's setting) under the tbcount plugin
      twice per row of the seed plan (L and 2L loops, L = nominal x 0.03, mm.vfree=bulk;
      pcpu_alloc_test, which has no loop: L and 2L objects), so the difference is the loop
      alone, without boot, setup and teardown. From the executed blocks
      and the disassembly it derives every control transfer the loop makes (fall-through inside
      a block, taken and not-taken branches, calls; returns always cost a lookup and do not
      count), weighed so that every row counts the same (a row's instructions sum to
      1,000,000). Then it places the hot functions one after another, clusters of callers and
      callees first (C3), each at the start offset within [end of the previous, +4 KiB) that
      crosses the fewest weighed page boundaries, inside the function and to the functions
      already placed, and fills each gap with cold functions (no padding: the image does not
      grow). FILE (default boot/hot-order.txt) lists the resulting order, one linker symbol per
      line; boot/build.rs hands it to lld (--symbol-ordering-file) and linker.ld starts the
      ordered text on a page boundary. Prints the page crossings per loop of the old and the
      new layout for each row.
  layout.py check [--elf ELF] [--file FILE]
      Every symbol of FILE must be defined in the ELF: the names carry rustc's hash, which moves
      with the toolchain, the lock file and a function's signature. Exit status 1 (with the
      names) when some are missing and the file was made with this rustc: run `make layout` to
      measure again. Made with another rustc (its `# rustc:` line), the names cannot match: a
      warning only (the build works; the hot code keeps the linker's order until `make layout`
      runs with this toolchain). A changed function size shifts the functions after it: the
      order then still holds, the offsets only approximately (`make layout` redoes them).
"""
import argparse, bisect, collections, os, re, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import rows  # noqa: E402
from rows import TESTS, llvm_nm, plugin, sh  # noqa: E402
import tomllib  # noqa: E402

DEFAULT_FILE = os.path.join(ROOT, "boot", "hot-order.txt")
ELF = os.path.join(ROOT, "target/aarch64-unknown-none/release/boot")
IMG = os.path.join(ROOT, "target/kernel8.img")
PLAN = os.path.join(ROOT, "tools/plans/seed-table.toml")
PAGE = 4096
SLOTS = PAGE // 4  # start offsets within a page, in instructions
SCALE = 0.03       # loops per row: nominal x SCALE (1-page rows span a purge or two at -smp 2)
# Hot clusters (C3) grow up to this size: beyond it a merged callee would rarely share a page.
CLUSTER_MAX = 3 * PAGE


def functions(elf):
    """(start, size, name) of every sized function symbol, by address (aliases dropped)."""
    out, seen = [], set()
    for line in sh(llvm_nm(), "-S", "--defined-only", elf).splitlines():
        p = line.split(" ", 3)
        if len(p) == 4 and p[2] in "tTwW" and int(p[1], 16) > 0:
            a = int(p[0], 16)
            if a not in seen:
                seen.add(a)
                out.append((a, int(p[1], 16), p[3]))
    out.sort()
    return out


def objdump():
    nm = llvm_nm()
    return nm[: -len("nm")] + "objdump" if nm.endswith("nm") else "llvm-objdump"


COND = re.compile(r"^(b\.\w+|cbn?z|tbn?z)$")


def instructions(elf):
    """address -> (kind, target): kind is call, jump, cond, indirect (ret/br/blr/eret) or
    None (anything else, which falls through)."""
    kinds = {}
    for line in sh(objdump(), "-d", "--no-show-raw-insn", elf).splitlines():
        m = re.match(r"^([0-9a-f]{16}):\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        at, op, rest = int(m.group(1), 16), m.group(2), m.group(3)
        t = re.search(r"0x([0-9a-f]+)", rest)
        target = int(t.group(1), 16) if t else None
        if op == "bl":
            kinds[at] = ("call", target)
        elif op == "b":
            kinds[at] = ("jump", target)
        elif COND.match(op):
            kinds[at] = ("cond", target)
        elif op in ("ret", "br", "blr", "eret", "retaa", "retab"):
            kinds[at] = ("indirect", None)
        else:
            kinds[at] = (None, None)
    return kinds


def run_row(a, so, tmp, row, loops):
    """Executions of every block (start, instructions) of one boot, over every vCPU."""
    m = re.match(r"(\S+) p:(\d+) h:(\d) l:(\d+)", row)
    test, p, h = m.group(1), m.group(2), m.group(3)
    # pcpu_alloc_test has no loop (nr_pcpu_objects allocations and frees): vary those instead.
    n = (f"test_vmalloc.nr_pcpu_objects={loops} test_vmalloc.test_loop_count=1"
         if test == "pcpu_alloc_test" else f"test_vmalloc.test_loop_count={loops}")
    cmd = (f"test_vmalloc.run_test_mask={1 << TESTS.index(test)} test_vmalloc.nr_pages={p} "
           f"test_vmalloc.use_huge={h} {n} "
           "test_vmalloc.nr_threads=1 test_vmalloc.sequential_test_order=1")
    counts, log = os.path.join(tmp, "tb.txt"), os.path.join(tmp, "boot.log")
    rows.SMP = "2"  # the wall-clock comparison's setting
    rows.qemu(so, counts, log, ["-semihosting", "-kernel", a.img, "-append", cmd],
              lambda rc, text: rc == 0 and "Summary:" in text)
    blocks = collections.Counter()
    for line in open(counts):
        _, va, n, ex, _ = line.split()
        blocks[(int(va, 16), int(n))] += int(ex)
    return blocks


def row_transfers(b1, b2, loops, kinds):
    """Control transfers per loop of one row, {(from, to): count}, from the blocks of an L-
    and a 2L-loop boot: inside a block execution flows to the next instruction; at its end to
    the branch target and/or the next instruction (a conditional branch is taken as often as
    its block ran and the block after it did not). Returns (transfers, instructions/loop)."""
    per = collections.Counter()
    for k, ex in b2.items():
        d = (ex - b1.get(k, 0)) / loops
        if d > 0:
            per[k] = d
    starts = collections.Counter()
    for (va, _), d in per.items():
        starts[va] += d
    moves = collections.Counter()
    insns = 0.0
    for (va, n), d in per.items():
        insns += n * d
        for i in range(n - 1):
            moves[(va + 4 * i, va + 4 * i + 4)] += d
        end = va + 4 * (n - 1)
        kind, target = kinds.get(end, (None, None))
        if kind in ("call", "jump"):
            moves[(end, target)] += d
        elif kind == "cond":
            fall = min(d, starts.get(end + 4, 0.0))
            if fall > 0:
                moves[(end, end + 4)] += fall
            if d - fall > 0:
                moves[(end, target)] += d - fall
        elif kind is None:
            moves[(end, end + 4)] += d
    return moves, insns


class Layout:
    def __init__(self, funcs):
        self.funcs = funcs
        self.starts = [f[0] for f in funcs]

    def fn(self, va):
        i = bisect.bisect_right(self.starts, va) - 1
        if i >= 0 and va < self.funcs[i][0] + self.funcs[i][1]:
            return i
        return None


def crossings(moves, where):
    """Transfers per loop that cross a page, with function i starting at where[i]."""
    n = 0.0
    for (fa, oa, fb, ob), w in moves.items():
        if fa in where and fb in where and (where[fa] + oa) // PAGE != (where[fb] + ob) // PAGE:
            n += w
    return n


def generate(a):
    funcs = functions(a.elf)
    lay = Layout(funcs)
    kinds = instructions(a.elf)
    plan = tomllib.load(open(a.plan, "rb"))["rows"]
    rows = []  # (row, {(fa, oa, fb, ob): per loop}, instructions per loop)
    with tempfile.TemporaryDirectory() as tmp:
        so = plugin(tmp)
        for row in plan:
            nominal = int(re.search(r"l:(\d+)", row).group(1))
            loops = max(200, int(nominal * SCALE))
            b1 = run_row(a, so, tmp, row, loops)
            b2 = run_row(a, so, tmp, row, 2 * loops)
            moves, insns = row_transfers(b1, b2, loops, kinds)
            fm = collections.Counter()
            for (x, y), w in moves.items():
                fa, fb = lay.fn(x), lay.fn(y)
                if fa is not None and fb is not None:
                    fm[(fa, x - funcs[fa][0], fb, y - funcs[fb][0])] += w
            rows.append((row, fm, insns))
            print(f"layout: {row}: {insns:.0f} instructions a loop", flush=True)

    # Every row counts the same: its transfers per 1,000,000 of its instructions.
    total = collections.Counter()
    heat = collections.Counter()
    for _, fm, insns in rows:
        for k, w in fm.items():
            total[k] += w * 1e6 / insns
            heat[k[0]] += w * 1e6 / insns
            heat[k[2]] += w * 1e6 / insns
    hot = {f for f, h in heat.items() if h >= 1.0}

    # Intra-function transfers: the cost of every start offset (in 4-byte slots) at once. A
    # transfer over [lo, hi) crosses a page when (lo + start) mod PAGE lies in the last
    # hi - lo bytes of a page: a cyclic run of start slots.
    intra = {f: [0.0] * SLOTS for f in hot}
    inter = collections.defaultdict(list)  # f -> [(other, off_in_f, off_in_other, w)]
    for (fa, oa, fb, ob), w in total.items():
        if fa not in hot or fb not in hot:
            continue
        if fa == fb:
            lo, hi = min(oa, ob), max(oa, ob)
            span = hi - lo
            if span >= PAGE:
                for s in range(SLOTS):
                    intra[fa][s] += w
                continue
            first = ((PAGE - span - lo) % PAGE) // 4
            for k in range(span // 4):
                intra[fa][(first + k) % SLOTS] += w
        else:
            inter[fa].append((fb, oa, ob, w))
            inter[fb].append((fa, ob, oa, w))

    # C3: heaviest call edges first, callee's cluster appended to the caller's.
    size = {f: funcs[f][1] for f in hot}
    cluster = {f: [f] for f in hot}
    edges = collections.Counter()
    for (fa, oa, fb, ob), w in total.items():
        if fa in hot and fb in hot and fa != fb:
            edges[(fa, fb)] += w
    for (fa, fb), w in edges.most_common():
        ca, cb = cluster[fa], cluster[fb]
        if ca is cb or sum(size[f] for f in ca) + sum(size[f] for f in cb) > CLUSTER_MAX:
            continue
        if cb[0] != fb:  # only whole clusters headed by the callee move
            continue
        ca.extend(cb)
        for f in cb:
            cluster[f] = ca
    clusters, seen = [], set()
    for f in hot:
        c = cluster[f]
        if id(c) not in seen:
            seen.add(id(c))
            clusters.append(c)
    clusters.sort(key=lambda c: -sum(heat[f] for f in c) / sum(size[f] for f in c))
    order = [f for c in clusters for f in c]

    # Place: each function at the gap that crosses least; cold functions fill the gaps.
    cold = sorted((funcs[i][1], i) for i in range(len(funcs))
                  if i not in hot and funcs[i][2].startswith("_ZN"))
    cold_sizes = [s for s, _ in cold]
    used = [False] * len(cold)

    def fill(gap, commit):
        """Cold functions (largest first) that fit in `gap` bytes: (bytes filled, their ids)."""
        got, ids, left, taken = 0, [], gap, set()
        j = bisect.bisect_right(cold_sizes, left) - 1
        while left > 0 and j >= 0:
            if not used[j] and j not in taken and cold_sizes[j] <= left:
                ids.append(j)
                taken.add(j)
                left -= cold_sizes[j]
                got += cold_sizes[j]
                j = bisect.bisect_right(cold_sizes, left) - 1
                continue
            j -= 1
        if commit:
            for j in ids:
                used[j] = True
        return got, ids

    # The last byte of each function that the loops execute: a function whose hot part fits in
    # what is left of the current page can join the functions it calls or is called by there.
    hot_end = collections.Counter()
    for (fa, oa, fb, ob), w in total.items():
        if fa in hot:
            hot_end[fa] = max(hot_end[fa], oa + 4)
        if fb in hot:
            hot_end[fb] = max(hot_end[fb], ob + 4)

    def next_function(remaining, where, pos):
        """The unplaced function with the heaviest transfers to the functions on the current
        page whose hot part still fits on it; else the next in C3 order."""
        page, room = pos // PAGE, PAGE - pos % PAGE
        best, best_w = remaining[0], 0.0
        for c in remaining:
            if hot_end[c] > room:
                continue
            w = sum(x[3] for x in inter[c] if x[0] in where and where[x[0]] // PAGE == page)
            if w > best_w:
                best, best_w = c, w
        return best

    where, out, pos = {}, [], 0
    remaining = list(order)
    while remaining:
        f = next_function(remaining, where, pos)
        remaining.remove(f)
        best = None
        tried = set()
        for g in range(0, PAGE, 4):
            got, _ = fill(g, False)
            if got in tried:
                continue
            tried.add(got)
            s = pos + got
            cost = intra[f][(s % PAGE) // 4]
            for other, of, oo, w in inter[f]:
                if other in where and (s + of) // PAGE != (where[other] + oo) // PAGE:
                    cost += w
            key = (round(cost, 3), got)
            if best is None or key < best[0]:
                best = (key, got)
        got, ids = fill(best[1], True)
        out += [funcs[cold[j][1]][2] for j in ids]
        where[f] = pos + got
        pos = where[f] + size[f]
        out.append(funcs[f][2])

    # Page crossings per loop of each row, in the image measured (its addresses, relative to the
    # first ordered page) and as placed here.
    old = {f: funcs[f][0] for f in range(len(funcs))}
    report = []
    for row, fm, insns in rows:
        report.append((row, crossings(fm, old), crossings(fm, where)))
    with open(a.out, "w") as f:
        f.write("# Hot-code order for lld --symbol-ordering-file (boot/build.rs; linker.ld starts\n"
                "# it on a page boundary): hot functions at the start offsets that cross the\n"
                "# fewest pages on the seed rows' loops at -smp 2, cold functions in the gaps.\n"
                "# Made by scripts/profile-tcg/layout.py generate (make layout); names are the\n"
                "# linker's: `make layout` again when the check (make test) finds some missing.\n"
                f"# rustc: {rustc_version()}\n"
                f"# {len(hot)} hot functions in {pos} bytes ({pos // PAGE + 1} pages)\n"
                "# page crossings per loop (not counting returns), before -> after:\n")
        for row, b, n in report:
            f.write(f"#   {row:45s} {b:7.1f} -> {n:6.1f}\n")
        for name in out:
            f.write(name + "\n")
    for row, b, n in report:
        print(f"layout: {row:45s} page crossings per loop {b:7.1f} -> {n:6.1f}")
    print(f"layout: {len(hot)} hot functions in {pos} bytes -> {a.out}")


def rustc_version():
    return sh("rustc", "-V", cwd=ROOT).strip()


def check(a):
    defined = {name for _, _, name in functions(a.elf)}
    missing = set()
    made_with = None
    for line in open(a.file):
        if line.startswith("# rustc: "):
            made_with = line[len("# rustc: "):].strip()
        line = line.split("#", 1)[0].split()
        if len(line) == 1 and line[0] not in defined:
            missing.add(line[0])
    if missing and made_with != rustc_version():
        print(f"layout: warning: {a.file} was measured with {made_with}, this is "
              f"{rustc_version()}: its symbol names do not apply, so the hot code keeps the "
              "linker's default order (run `make layout` to measure it for this toolchain)",
              file=sys.stderr)
        return
    if missing:
        print(f"layout: {len(missing)} symbol(s) of {a.file} are not in {a.elf} (the hot-code "
              f"layout is stale; run `make layout`):", file=sys.stderr)
        for s in sorted(missing)[:10]:
            print(f"  {s}", file=sys.stderr)
        sys.exit(1)
    print(f"layout: {a.file} matches {os.path.basename(a.elf)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--img", default=IMG)
    g.add_argument("--elf", default=ELF)
    g.add_argument("--out", default=DEFAULT_FILE)
    g.add_argument("--plan", default=PLAN)
    c = sub.add_parser("check")
    c.add_argument("--elf", default=ELF)
    c.add_argument("--file", default=DEFAULT_FILE)
    a = ap.parse_args()
    generate(a) if a.cmd == "generate" else check(a)


if __name__ == "__main__":
    main()
