#!/usr/bin/env python3
"""Per-loop guest profile from two tbcount runs (loops N1 and N2): TB executions, instruction
classes, TB-ending kinds, per function."""
import sys, re, bisect, collections
import os
ALLCPU = os.environ.get('ALLCPU') == '1'
dis, nm, f1, n1, f2, n2 = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
insn = {}
for line in open(dis):
    m = re.match(r'^([0-9a-f]{16}):\s+(\S+)\s*(.*)$', line)
    if m:
        insn[int(m.group(1), 16)] = (m.group(2), m.group(3))
syms = []
for line in open(nm):
    p = line.rstrip('\n').split(' ', 2)
    if len(p) == 3 and p[1] in 'tTwW':
        syms.append((int(p[0], 16), p[2]))
syms.sort(); saddr = [s[0] for s in syms]
def sym(a):
    i = bisect.bisect_right(saddr, a) - 1
    return syms[i][1] if i >= 0 else '?'
def load(f):
    d = collections.Counter(); meta = {}
    for line in open(f):
        c, va, n, ex, last = line.split()
        if c != '0' and not ALLCPU: continue
        va = int(va, 16); d[(va, int(n))] += int(ex); meta[(va, int(n))] = int(last, 16)
    return d, meta
d1, m1 = load(f1); d2, m2 = load(f2)
dn = n2 - n1
per = {k: (d2[k] - d1.get(k, 0)) / dn for k in d2}
per = {k: v for k, v in per.items() if v > 0.001}
def cls(mn, ops):
    if mn in ('ldaxr','ldxr','ldaxrb','ldxrb','ldaxrh','ldxrh','ldaxp','ldxp'): return 'load-exclusive'
    if mn in ('stxr','stlxr','stxrb','stlxrb','stxrh','stlxrh','stxp','stlxp'): return 'store-exclusive'
    if mn in ('ldar','ldarb','ldarh','ldapr'): return 'load-acquire'
    if mn in ('stlr','stlrb','stlrh'): return 'store-release'
    if mn == 'clrex': return 'clrex'
    if mn == 'mrs': return 'mrs ' + ops.split(',')[1].strip().lower()
    if mn == 'msr': return 'msr ' + ops.split(',')[0].strip().lower()
    if mn in ('isb','dsb','dmb','tlbi','dc','ic','wfe','wfi','sev','sevl','yield','hvc','svc','brk','hlt','eret'): return mn + (' ' + ops if mn in ('dsb','dmb','tlbi','dc') else '')
    if mn in ('ret','br','blr'): return 'indirect ' + mn
    if mn in ('bl',): return 'bl'
    return None
tot_insn = 0; tot_tb = 0
classes = collections.Counter(); ends = collections.Counter(); byfn = collections.Counter(); byfn_tb = collections.Counter()
for (va, n), ex in per.items():
    tot_tb += ex; tot_insn += ex * n
    f = sym(va); byfn[f] += ex * n; byfn_tb[f] += ex
    for i in range(n):
        a = va + 4 * i
        mn, ops = insn.get(a, ('?', ''))
        c = cls(mn, ops)
        if c: classes[c] += ex
    mn, ops = insn.get(va + 4 * (n - 1), ('?', ''))
    if mn in ('ret', 'br', 'blr'): k = 'indirect (' + mn + ') -> lookup_tb_ptr'
    elif mn in ('b', 'bl') or mn.startswith('b.') or mn in ('cbz','cbnz','tbz','tbnz'):
        tgt = re.match(r'(?:\w+,\s*)*0x([0-9a-f]+)', ops.split('<')[0].strip().split()[-1] if ops else '')
        k = 'direct branch ' + ('bl' if mn == 'bl' else 'b/cond')
    elif mn in ('msr', 'isb', 'mrs', 'dsb', 'tlbi', 'wfi', 'wfe', 'hvc', 'svc', 'eret', 'dc'): k = 'ends at ' + mn + ' ' + (ops.split(',')[0] if mn == 'msr' else '')
    else: k = 'other (' + mn + ')'
    ends[k] += ex
print(f"per loop: {tot_insn:.0f} guest instructions in {tot_tb:.0f} TB executions ({tot_insn/tot_tb:.1f} insns/TB)")
print("\nTB endings per loop:")
for k, v in ends.most_common(): print(f"  {v:9.1f}  {k}")
print("\nnotable instruction classes per loop:")
for k, v in classes.most_common(): print(f"  {v:9.1f}  {k}")
print("\nfunctions (instructions per loop, TB executions per loop):")
for f, v in byfn.most_common(40): print(f"  {v:8.1f} {byfn_tb[f]:7.1f}  {f[:110]}")
