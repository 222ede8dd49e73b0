#!/usr/bin/env python3
"""The kernel's hot-code layout: a call graph measured on the seed suite, for the linker.

QEMU's TCG chains a translated block to the next only when the branch target lies on the same
4 KiB guest page; every call to a function on another page (and every return) goes through
`helper_lookup_tb_ptr`, about 16 ns each on this host, and on real cores a call to a far
function costs i-cache and i-TLB footprint. So the functions that call each other on the hot
paths should sit next to each other. This is profile-guided layout (Linux: CONFIG_AUTOFDO_CLANG
/ CONFIG_PROPELLER_CLANG since 6.13; the Debian 6.12 kernel we compare against has neither).

  layout.py generate [--img IMG] [--elf ELF] [--out FILE]
      Boots the image at -smp 1 under the tbcount plugin once per row of the seed plan (loops x
      0.002, mm.vfree=bulk), counts each executed call (a block ending in `bl`, or in a `b` to
      the start of another function), weighs each row's calls so that every row counts the
      same (a row's calls sum to 1,000,000), and writes "caller callee weight" lines with the
      linker's symbol names to FILE (default boot/hot-calls.txt), heaviest first. boot/build.rs hands the file
      to lld (--call-graph-ordering-file), which places callers next to callees (hfsort/C3).
  layout.py check [--elf ELF] [--file FILE]
      Every symbol of FILE must be defined in the ELF: the names carry rustc's hash, which moves
      with the toolchain, the lock file and a function's signature. Exit status 1 (with the
      names) when some are missing and the file was made with this rustc: run `make layout` to
      measure the graph again. Made with another rustc (its `# rustc:` line), the names cannot
      match: a warning only (the build works; the layout is the linker's default until `make
      layout` runs with this toolchain).
"""
import argparse, bisect, collections, os, re, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from rows import TESTS, llvm_nm, plugin, qemu, sh  # noqa: E402
import tomllib  # noqa: E402

DEFAULT_FILE = os.path.join(ROOT, "boot", "hot-calls.txt")
ELF = os.path.join(ROOT, "target/aarch64-unknown-none/release/boot")
IMG = os.path.join(ROOT, "target/kernel8.img")
PLAN = os.path.join(ROOT, "tools/plans/seed-table.toml")


def functions(elf):
    out = []
    for line in sh(llvm_nm(), "--defined-only", elf).splitlines():
        p = line.split(" ", 2)
        if len(p) == 3 and p[1] in "tTwW":
            out.append((int(p[0], 16), p[2]))
    out.sort()
    return out


def objdump():
    nm = llvm_nm()
    od = nm[: -len("nm")] + "objdump" if nm.endswith("nm") else "llvm-objdump"
    return od


def row_blocks(a, so, tmp, row):
    """Executions of each block-ending instruction address in one row's boot."""
    m = re.match(r"(\S+) p:(\d+) h:(\d) l:(\d+)", row)
    test, p, h, nominal = m.group(1), m.group(2), m.group(3), int(m.group(4))
    cmd = (f"test_vmalloc.run_test_mask={1 << TESTS.index(test)} test_vmalloc.nr_pages={p} "
           f"test_vmalloc.use_huge={h} test_vmalloc.test_loop_count={max(20, nominal // 500)} "
           "test_vmalloc.nr_threads=1 test_vmalloc.sequential_test_order=1 hz=0")
    counts = os.path.join(tmp, "tb.txt")
    qemu(so, counts, os.path.join(tmp, "boot.log"), ["-semihosting", "-kernel", a.img, "-append", cmd],
         lambda rc, t: rc == 0 and "Summary:" in t)
    last = collections.Counter()
    for line in open(counts):
        _, va, n, ex, _ = line.split()
        last[int(va, 16) + 4 * (int(n) - 1)] += int(ex)
    return last


def generate(a):
    with tempfile.TemporaryDirectory() as tmp:
        so = plugin(tmp)
        rows = [row_blocks(a, so, tmp, r) for r in tomllib.load(open(a.plan, "rb"))["rows"]]
    syms = functions(a.elf)
    addrs = [s for s, _ in syms]

    def fn(va):
        i = bisect.bisect_right(addrs, va) - 1
        return syms[i] if i >= 0 else (0, "?")

    # The branch instruction at each block end: from the disassembly of the text.
    dis = sh(objdump(), "-d", "--no-show-raw-insn", a.elf)
    branch = {}
    for line in dis.splitlines():
        m = re.match(r"^([0-9a-f]{16}):\s+(bl?)\s+0x([0-9a-f]+)", line)
        if m:
            branch[int(m.group(1), 16)] = (m.group(2), int(m.group(3), 16))
    edges = collections.Counter()
    for last in rows:
        calls = collections.Counter()
        for at, ex in last.items():
            if at not in branch:
                continue
            kind, target = branch[at]
            (_, caller), (ts, callee) = fn(at), fn(target)
            # A call, or a tail call (a `b` to the first instruction of another function).
            if caller != callee and (kind == "bl" or target == ts):
                calls[(caller, callee)] += ex
        total = sum(calls.values()) or 1
        for e, n in calls.items():
            edges[e] += n * 1_000_000 / total
    edges = collections.Counter({e: round(w) for e, w in edges.items() if round(w) > 0})
    with open(a.out, "w") as f:
        f.write("# Call graph for lld --call-graph-ordering-file (boot/build.rs): caller callee\n"
                "# weight, measured on the seed rows by scripts/profile-tcg/layout.py generate\n"
                "# (make layout). Names are the linker's; `make layout` again when the check\n"
                "# (make test) finds some missing.\n"
                f"# rustc: {rustc_version()}\n")
        for (c, t), n in edges.most_common():
            f.write(f"{c} {t} {n}\n")
    print(f"layout: {len(edges)} call edges -> {a.out}")


def rustc_version():
    return sh("rustc", "-V", cwd=ROOT).strip()


def check(a):
    defined = {name for _, name in functions(a.elf)}
    missing = set()
    made_with = None
    for line in open(a.file):
        if line.startswith("# rustc: "):
            made_with = line[len("# rustc: "):].strip()
        line = line.split("#", 1)[0].split()
        if len(line) == 3:
            missing |= {s for s in line[:2] if s not in defined}
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
