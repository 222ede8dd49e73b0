#!/usr/bin/env python3
"""Alternating wall-clock runs of several kernel images: usec/loop (guest avg) and QEMU CPU seconds."""
import subprocess, sys, re, statistics, resource, time, os
loops = int(os.environ.get('LOOPS', '300000')); runs = int(os.environ.get('RUNS', '5'))
imgs = sys.argv[1:]
res = {i: [] for i in imgs}
for r in range(runs):
    for img in imgs:
        args = ['qemu-system-aarch64', '-M', 'virt', '-cpu', 'cortex-a72', '-smp', '2', '-m', '2G', '-nographic', '-no-reboot', '-semihosting', '-kernel', img,
                '-append', f'test_vmalloc.run_test_mask=1 test_vmalloc.nr_pages=1 test_vmalloc.test_loop_count={loops}']
        t0 = resource.getrusage(resource.RUSAGE_CHILDREN); w0 = time.time()
        out = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout
        t1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)
        m = re.search(r'avg: (\d+) usec', out)
        us = int(m.group(1)) / loops if m else float('nan')
        res[img].append((us, cpu))
        print(f"run {r} {os.path.basename(img):20s} {us:6.2f} us/loop  cpu {cpu:5.2f} s  load {open('/proc/loadavg').read().split()[0]}", flush=True)
print()
for img in imgs:
    u = sorted(x[0] for x in res[img]); c = sorted(x[1] for x in res[img])
    print(f"{os.path.basename(img):20s} us/loop min {u[0]:.2f} med {statistics.median(u):.2f} max {u[-1]:.2f} | cpu s min {c[0]:.2f} med {statistics.median(c):.2f} max {c[-1]:.2f}")
base = imgs[0]
for img in imgs[1:]:
    for k, name in ((0, 'us/loop'), (1, 'cpu')):
        r = sorted(res[img][i][k] / res[base][i][k] for i in range(runs))
        q = lambda f: r[min(len(r) - 1, int(f * len(r)))]
        print(f"{os.path.basename(img):20s} / {os.path.basename(base)} {name}: paired ratio median {statistics.median(r):.3f} (IQR {q(0.25):.3f}-{q(0.75):.3f}, n={runs})")
