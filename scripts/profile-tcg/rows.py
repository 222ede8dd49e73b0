#!/usr/bin/env python3
"""Where each seed-table row's instructions go, per loop, by mm component.

Runs every row of a plan (default tools/plans/seed-table.toml) alone, at -smp 1 without icount,
under the tbcount TCG plugin, twice (L and 2L loops); the difference of the two runs' executed
translation blocks, divided by L, is one loop's guest instructions with boot, setup outside the
loop and teardown cancelled out. Each instruction is charged to the function (ELF symbol) it
belongs to, and functions to components by name (COMPONENTS below). Prints a markdown table
(one row per plan row) and, with --top N, each row's N costliest functions.

Usage: scripts/profile-tcg/rows.py [--plan PLAN] [--img IMG] [--elf ELF] [--scale S] [--top N]
                                   [--only SUBSTRING] [--args ARGS] [--smp N]
                                   [--linux [--reuse]] [--out DIR]

--smp N boots N vCPUs and counts the blocks of all of them: our worker runs on CPU 0 (the idle
CPUs execute nothing per loop with hz=0), Linux's test thread is not bound and moves between
CPUs (fix_size p:1 at -smp 2, 2026-12-02: 1803 instructions a loop on CPU 0, 2233 on CPU 1;
counting CPU 0 alone had reported 1803 for Linux). At -smp 2
and more there are several vmap nodes and their per-size pools (Linux node_alloc): a 1-page
vmalloc takes its VA from the pool that the last purge filled. L must then span several purges
(lazy_max_pages / pages per loop loops each: 8192 for a 1-page vmalloc at -smp 2), or the
difference shows the free-tree path instead of the pool's: use --scale 0.1 for the 1-page rows.

--linux measures Linux 6.12 the same way (the kernel, initramfs and test_vmalloc.ko of
`make bench-linux`, prepared by `scripts/bench-linux.sh prepare`; functions named from its
/proc/kallsyms, dumped by one extra boot; first load after 5 s of uptime; init_on_alloc=0
nokaslr): the same table with Linux's functions charged to the same components
(LINUX_COMPONENTS), and a ratio line per row. Linux's pcpu_alloc_test has no loop (35000
objects, fixed): its row is (boot with the row - boot with a 20-loop fix_size row) / 35000;
ours runs nr_pcpu_objects = L and 2L. Both pcpu rows are per object.

--scale multiplies the plan's nominal loops (default 0.004: fix_size p:1 runs 2000 and 4000
loops); --linux-scale does for Linux (default 0.04: its background work, timers and kworkers,
lands in the difference too, so it needs more loops to average out). Needs gcc (for the plugin), llvm-nm (rustup's llvm-tools or LLVM), qemu-system-aarch64.
The plugin counts what the vCPU executed, so the numbers match -icount's instruction counts
(within the tick's few instructions) and do not depend on host load.
"""
import argparse, bisect, collections, os, re, shutil, subprocess, sys, tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# test_vmalloc's test order (run_test_mask bit = index), as kernel/src/bench/test_vmalloc.rs.
TESTS = ["fix_size_alloc_test", "full_fit_alloc_test", "long_busy_list_alloc_test",
         "random_size_alloc_test", "fix_align_alloc_test", "random_size_align_alloc_test",
         "align_shift_alloc_test", "pcpu_alloc_test", "kvfree_rcu_1_arg_vmalloc_test",
         "kvfree_rcu_2_arg_vmalloc_test", "vm_map_ram_test", "no_block_alloc_test", "vrealloc_test"]

# First match wins; patterns are searched in the demangled symbol name.
COMPONENTS = [
    ("test body", r"^kernel::bench::"),
    ("zeroing, memset/memcpy", r"^(memset|memcpy|memmove|compiler_builtins::mem)|::zero_pages$"),
    ("page tables", r"^mm_pgtable::|vmap_pages_range|vunmap_range|vmap_range_noflush|^kernel::mm::pgtable::"),
    ("vmap blocks", r"^kernel::mm::vmap_block::"),
    ("KVA (vmap_area)", r"^mm_kva::|^kernel::mm::kva::|^kernel::mm::vmap_area::"),
    ("page allocator", r"^mm_page_alloc::|^kernel::mm::page_alloc::"),
    ("percpu", r"^mm_percpu::|^kernel::mm::percpu::"),
    ("kmalloc", r"^kernel::mm::kmalloc::|linked_list_allocator|__rust_alloc|__rust_dealloc|__rdl_"),
    ("vmalloc core", r"^kernel::mm::vmalloc::"),
    ("RCU", r"^kernel::rcu::"),
]

# The same components in Linux 6.12's function names (first match wins).
LINUX_COMPONENTS = [
    ("test body", r"_alloc_test$|_vmalloc_test$|^vm_map_ram_test$|^test_func$"),
    ("zeroing, memset/memcpy", r"^(__)?(memset|memcpy|memmove|clear_page|copy_page)"),
    ("vmap blocks", r"vb_alloc|vb_free|vm_map_ram|vm_unmap_ram|vmap_block|purge_fragmented"),
    ("page tables", r"vmap_pages|vmap_range|vunmap_|vmap_small|vmap_p[tmu4]e?d?_range|vmap_try_huge"
                    r"|p[tmu4]e?d?_alloc|__p[tmu4]e?d_alloc|flush_cache_vmap|arch_sync_kernel|"
                    r"set_pte|p[mu]d_set_huge|p[mu]d_clear_huge|p[mu]d_free_p|flush_tlb_kernel"
                    r"|__flush_tlb|pgtable"),
    ("KVA (vmap_area)", r"vmap_area|find_vmap_lowest|va_clip|merge_or_add|insert_vmap|unlink_va|"
                        r"link_va|augment|purge_vmap|node_alloc|node_pool|decay_va_pool|"
                        r"reclaim_and_purge|drain_vmap|addr_to_node|find_va_links|"
                        r"get_va_next_sibling|adjust_va|va_alloc|^rb_|^__rb_|vmap_lazy|"
                        r"lazy_max_pages|size_to_va_pool|kasan_release_vmalloc"),
    ("percpu", r"pcpu|percpu"),
    ("page allocator", r"alloc_pages|free_pages|free_page|rmqueue|get_page_from_freelist|"
                       r"__free_one_page|free_unref|pcp|zone|buddy|split_page|prep_new_page|"
                       r"post_alloc_hook|free_frozen|mod_node_page_state|__mod_node|page_alloc|"
                       r"should_fail_alloc|free_pcppages|__free_contig|move_freepages|"
                       r"^__del_page|^__add_to_free|free_tail_page|page_ref|^expand$|"
                       r"__count_vm_event|__inc_node|__dec_node|__inc_zone|__dec_zone|"
                       r"free_one_page|gfp|watermark|node_dirty|fallback|migratetype|pageblock"),
    ("kmalloc", r"kmalloc|kfree|kmem_cache|slab|kvmalloc|slub|obj_cgroup|__kmem|^kvfree$|"
                r"^kvrealloc|^krealloc"),
    ("vmalloc core", r"vmalloc|vfree|vm_area|get_vm_area|__vunmap|remove_vm_area|find_vm_area|"
                     r"vm_struct|setup_vmalloc_vm|clear_vm_uninitialized|vm_reset_perms|vrealloc"),
    ("RCU", r"rcu"),
]


def sh(*a, **kw):
    return subprocess.run(a, check=True, capture_output=True, text=True, **kw).stdout


def llvm_nm():
    if shutil.which("llvm-nm"):
        return "llvm-nm"
    sysroot = sh("rustc", "--print", "sysroot").strip()
    for dp, _, fs in os.walk(os.path.join(sysroot, "lib", "rustlib")):
        if "llvm-nm" in fs:
            return os.path.join(dp, "llvm-nm")
    sys.exit("rows.py: llvm-nm not found (rustup component add llvm-tools)")


def plugin(out):
    so = os.path.join(out, "tbcount.so")
    src = os.path.join(ROOT, "scripts", "profile-tcg", "tbcount.c")
    if not os.path.exists(so) or os.path.getmtime(so) < os.path.getmtime(src):
        sh("gcc", "-O2", "-shared", "-fPIC", "-o", so, src, "-lpthread")
    return so


class Symbols:
    def __init__(self, pairs):
        self.syms = sorted(pairs)
        self.addrs = [a for a, _ in self.syms]

    def __call__(self, va):
        i = bisect.bisect_right(self.addrs, va) - 1
        return self.syms[i][1] if i >= 0 else "?"


SMP = "1"


def read_counts(counts):
    """Instructions executed per block start address, over every vCPU, from a tbcount file."""
    d = collections.Counter()
    for line in open(counts):
        _, va, n, ex, _ = line.split()
        d[int(va, 16)] += int(n) * int(ex)
    return d


def qemu(so, counts, log, boot_args, ok, reuse=False):
    if reuse and counts and os.path.exists(counts) and os.path.exists(log) \
            and ok(0, open(log, errors="replace").read()):
        return open(log, errors="replace").read(), read_counts(counts)
    args = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", SMP, "-m", "2G",
            "-nographic", "-no-reboot"] + (["-plugin", f"{so},out={counts}"] if counts else []) \
        + boot_args
    with open(log, "w") as f:
        rc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            timeout=3600).returncode
    text = open(log, errors="replace").read()
    if not ok(rc, text):
        sys.exit(f"rows.py: boot failed (QEMU status {rc}), see {log}")
    return text, read_counts(counts) if counts else collections.Counter()


class Ours:
    name = "ours"
    components = COMPONENTS

    def __init__(self, a, so):
        self.a, self.so = a, so
        # A copy: a rebuild while this runs must not pair one image with another's symbols.
        for src, name in ((a.img, "kernel8.img"), (a.elf, "boot.elf")):
            shutil.copyfile(src, os.path.join(a.out, name))
        a.img, a.elf = os.path.join(a.out, "kernel8.img"), os.path.join(a.out, "boot.elf")
        pairs = []
        for line in sh(llvm_nm(), "-C", "--defined-only", a.elf).splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1] in "tTwW":
                pairs.append((int(parts[0], 16), re.sub(r"::h[0-9a-f]{16}$", "", parts[2])))
        self.fn = Symbols(pairs)

    def count(self, tag, test, p, h, loops):
        mask = 1 << TESTS.index(test)
        n = f"test_vmalloc.nr_pcpu_objects={loops} test_vmalloc.test_loop_count=1" \
            if test == "pcpu_alloc_test" else f"test_vmalloc.test_loop_count={loops}"
        cmd = (f"test_vmalloc.run_test_mask={mask} test_vmalloc.nr_pages={p} "
               f"test_vmalloc.use_huge={h} {n} test_vmalloc.nr_threads=1 "
               f"test_vmalloc.sequential_test_order=1 hz=0 {self.a.args}").strip()
        base = os.path.join(self.a.out, f"ours.{tag}.{loops}")
        return qemu(self.so, base + ".tb", base + ".log",
                    ["-semihosting", "-kernel", self.a.img, "-append", cmd],
                    lambda rc, t: rc == 0 and "Summary:" in t)[1]

    def per_loop(self, tag, test, p, h, loops):
        d1 = self.count(tag, test, p, h, loops)
        d2 = self.count(tag, test, p, h, 2 * loops)
        return {va: (d2[va] - d1[va]) / loops for va in set(d1) | set(d2)}


class Linux:
    name = "Linux"
    components = LINUX_COMPONENTS
    ARGS = "console=ttyAMA0 loglevel=8 panic=-1 init_on_alloc=0 nokaslr " \
           "tv.nr_threads=1 tv.sequential_test_order=1"

    def __init__(self, a, so):
        self.a, self.so = a, so
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "bench-linux.sh"), "prepare"],
                       check=True, stdout=sys.stderr)
        work = os.environ.get("BENCH_LINUX_CACHE", os.path.join(ROOT, ".cache", "linux-anchor"))
        self.kimg, self.initrd = os.path.join(work, "Image"), os.path.join(work, "initrd-bench.gz")
        text, _ = qemu(so, None, os.path.join(a.out, "linux.kallsyms.log"),
                       self.boot("tvb.kallsyms=1 tvb.settle=0"),
                       lambda rc, t: "KALLSYMS-END" in t)
        body = text.split("KALLSYMS-BEGIN", 1)[1].split("KALLSYMS-END", 1)[0]
        pairs = []
        for line in body.splitlines():
            parts = line.strip().split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                pairs.append((int(parts[0], 16), parts[2]))
        if len(pairs) < 1000:
            sys.exit("rows.py: no Linux kallsyms in linux.kallsyms.log")
        self.fn = Symbols(pairs)

    def boot(self, extra):
        return ["-kernel", self.kimg, "-initrd", self.initrd, "-append", f"{self.ARGS} {extra}"]

    def count(self, tag, row):
        base = os.path.join(self.a.out, f"linux.{tag}")
        return qemu(self.so, base + ".tb", base + ".log",
                    self.boot(f"tvb.settle=5 tvb.rows={row}"),
                    lambda rc, t: "ANCHOR: done" in t and "Summary:" in t, self.a.reuse)[1]

    def per_loop(self, tag, test, p, h, loops):
        mask = 1 << TESTS.index(test)
        if test == "pcpu_alloc_test":
            d1 = self.count(tag + ".ref", f"fix_size_alloc_test:1:1:0:20:20")
            d2 = self.count(tag, f"{test}:{mask}:1:0:1:1")
            return {va: (d2[va] - d1[va]) / 35000 for va in set(d1) | set(d2)}
        d1 = self.count(f"{tag}.{loops}", f"{test}:{mask}:{p}:{h}:{loops}:{loops}")
        d2 = self.count(f"{tag}.{2 * loops}", f"{test}:{mask}:{p}:{h}:{2 * loops}:{2 * loops}")
        return {va: (d2[va] - d1[va]) / loops for va in set(d1) | set(d2)}


def breakdown(k, per):
    byfn = collections.Counter()
    for va, v in per.items():
        if v:
            byfn[k.fn(va)] += v
    byc = collections.Counter()
    for f, v in byfn.items():
        for c, pat in k.components:
            if re.search(pat, f):
                byc[c] += v
                break
        else:
            byc["other"] += v
    return sum(byfn.values()), byc, byfn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", default=os.path.join(ROOT, "tools/plans/seed-table.toml"))
    ap.add_argument("--img", default=os.path.join(ROOT, "target/kernel8.img"))
    ap.add_argument("--elf", default=os.path.join(ROOT, "target/aarch64-unknown-none/release/boot"))
    ap.add_argument("--scale", type=float, default=0.004)
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--only", default="")
    ap.add_argument("--smp", default="1",
                    help="vCPUs (the worker runs on CPU 0, whose blocks alone are counted; "
                         "-smp 2 is the wall-clock comparison's setting)")
    ap.add_argument("--args", default="", help="extra kernel command line (e.g. mm.vfree=single)")
    ap.add_argument("--linux", action="store_true")
    ap.add_argument("--linux-scale", type=float, default=0.04)
    ap.add_argument("--reuse", action="store_true",
                    help="reuse Linux's counts from an earlier run in --out (they do not depend on our image)")
    ap.add_argument("--out", default=os.path.join(ROOT, "target/profile-tcg/rows"))
    a = ap.parse_args()
    global SMP
    SMP = a.smp
    os.makedirs(a.out, exist_ok=True)
    so = plugin(a.out)
    kernels = [Ours(a, so)] + ([Linux(a, so)] if a.linux else [])
    names = [c for c, _ in COMPONENTS] + ["other"]
    print("| row | kernel | instr/loop | " + " | ".join(names) + " |")
    print("|---|---|---:|" + "---:|" * len(names))
    tops = []
    for row in tomllib.load(open(a.plan, "rb"))["rows"]:
        if a.only and a.only not in row:
            continue
        m = re.match(r"(\S+) p:(\d+) h:(\d) l:(\d+)", row)
        test, p, h, nominal = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        tag = f"{test}-p{p}-h{h}"
        short = test.replace("_alloc_test", "").replace("_vmalloc_test", "").replace("_test", "")
        res = []
        for k in kernels:
            loops = max(20, int(nominal * (a.linux_scale if k.name == "Linux" else a.scale)))
            total, byc, byfn = breakdown(k, k.per_loop(tag, test, p, h, loops))
            res.append((total, byc))
            print(f"| {short} p:{p} h:{h} | {k.name} | {total:.0f} | "
                  + " | ".join(f"{byc[c]:.0f}" for c in names) + " |", flush=True)
            tops.append((f"{row} ({k.name})", total, byfn))
        if len(res) == 2:
            (t0, c0), (t1, c1) = res
            r = lambda x, y: f"{x / y:.2f}" if y >= 1 else "-"
            print(f"| {short} p:{p} h:{h} | ratio | {r(t0, t1)} | "
                  + " | ".join(r(c0[c], c1[c]) for c in names) + " |", flush=True)
    for row, total, byfn in tops if a.top else []:
        print(f"\n{row}: {total:.0f} instructions per loop")
        for f, v in byfn.most_common(a.top):
            print(f"  {v:9.1f}  {f[:120]}")


if __name__ == "__main__":
    main()
