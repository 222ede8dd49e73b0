#!/usr/bin/env python3
"""modcycles.py [CRATE_SRC_DIR...]: fails (exit 1) if the modules of a crate depend on each other
in a cycle. Cargo already forbids cycles between crates; this checks inside each crate.

A node is a source file (one module, or a parent module with its inline `mod tests`). An edge
A -> B means A names an item of B: `crate::x::y`, `super::y`, `self::y`, a `use` of a child
module, or a `#[macro_export]` macro defined in B. Paths are resolved as far as the module tree
goes; a name re-exported by a parent (`pub use child::Item`) resolves to the child. Items
defined in the crate root itself (constants like the exit codes) are leaves and make no edge.
`mod` declarations are not edges: a parent declaring its children does not depend on them.
Test code (`#[cfg(test)] mod tests`, tests.rs) is skipped: tests may use anything.
"""
import os
import re
import sys

PATH_RE = re.compile(r'(?<![\w:$])(\$crate|crate|super|self)((?:::\w+)+)')
USE_RE = re.compile(r'^\s*(?:pub(?:\([\w:]+\))?\s+)?use\s+([^;]+);', re.M)
MOD_RE = re.compile(r'^\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([\w:]+\))?\s+)?mod\s+(\w+)\s*;', re.M)
MACRO_DEF_RE = re.compile(r'#\[macro_export\]\s*(?:#\[[^\]]*\]\s*)*macro_rules!\s*(\w+)')
MACRO_USE_RE = re.compile(r'(?<![\w:])(?:\$?crate::)?(\w+)!\s*[\(\{\[]')


def strip(text):
    """Drops comments, string literals and inline `#[cfg(test)] mod tests { ... }` blocks."""
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'/\*.*?\*/', '', text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, i = [], 0
    for m in re.finditer(r'#\[cfg\(test\)\]\s*(?:pub(?:\([\w:]+\))?\s+)?mod\s+\w+\s*\{', text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {'{': 1, '}': -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return ''.join(out)


class Crate:
    def __init__(self, src):
        self.src = src
        root = 'lib.rs' if os.path.exists(os.path.join(src, 'lib.rs')) else 'main.rs'
        self.mods = {(): os.path.join(src, root)}  # module path -> file
        self.text = {}
        self._scan((), os.path.join(src, root), src)
        self.macros = {}
        for path, f in self.mods.items():
            for name in MACRO_DEF_RE.findall(self.raw(f)):
                self.macros[name] = path

    def raw(self, f):
        with open(f) as fh:
            return fh.read()

    def _scan(self, path, f, dirname):
        text = strip(self.raw(f))
        self.text[path] = text
        base = os.path.basename(f)
        child_dir = dirname if base in ('lib.rs', 'main.rs', 'mod.rs') else os.path.join(
            dirname, base[:-3])
        for name in MOD_RE.findall(text):
            for cand in (os.path.join(child_dir, name + '.rs'),
                         os.path.join(child_dir, name, 'mod.rs')):
                if os.path.exists(cand):
                    if name == 'tests':
                        break
                    self.mods[path + (name,)] = cand
                    self._scan(path + (name,), cand, os.path.dirname(cand) if cand.endswith(
                        'mod.rs') else child_dir)
                    break

    def resolve(self, segs):
        """Deepest module of the path; through `pub use` re-exports of the module reached."""
        cur = ()
        for i, s in enumerate(segs):
            if cur + (s,) in self.mods:
                cur = cur + (s,)
                continue
            # a re-export in `cur`: pub use child::...::s (or a glob of a child)
            for m in USE_RE.finditer(self.text.get(cur, '')):
                if not m.group(0).lstrip().startswith('pub'):
                    continue
                u = m.group(1).replace(' ', '').replace('\n', '')
                u = re.sub(r'^self::', '', u)
                head = u.split('::')[0]
                if cur + (head,) in self.mods and (
                        re.search(r'\b%s\b' % re.escape(s), u) or u.endswith('*')):
                    return self.resolve(list(cur) + [x for x in u.split('::') if x != '*'
                                                     and not x.startswith('{')][:-1] or [head])
            return cur
        return cur

    def edges(self):
        g = {p: set() for p in self.mods}
        for path, text in self.text.items():
            targets = set()
            for kind, rest in PATH_RE.findall(text):
                segs = [s for s in rest.split('::') if s]
                if kind in ('crate', '$crate'):
                    base = []
                elif kind == 'super':
                    base = list(path[:-1])
                    while segs and segs[0] == 'super':
                        base, segs = base[:-1], segs[1:]
                else:
                    base = list(path)
                targets.add(self.resolve(base + segs))
            # `use child::...` (uniform paths) and `use {a, b}` groups under crate/super
            for m in USE_RE.finditer(text):
                u = m.group(1).replace(' ', '').replace('\n', '')
                head = u.split('::')[0]
                if path + (head,) in self.mods:
                    targets.add(self.resolve(list(path) + u.split('::')[:-1] or [head]))
                g_m = re.match(r'(crate|super)::((?:\w+::)*)\{(.*)\}$', u)
                if g_m:
                    base = [] if g_m.group(1) == 'crate' else list(path[:-1])
                    pre = [s for s in g_m.group(2).split('::') if s]
                    for item in re.split(r',(?![^{]*\})', g_m.group(3)):
                        item = item.split('::')[0].split(' as ')[0].strip()
                        if item and item != 'self':
                            targets.add(self.resolve(base + pre + [item]))
            for name in MACRO_USE_RE.findall(text):
                if name in self.macros:
                    targets.add(self.macros[name])
            for t in targets:
                if t != path and t != () and t in g:
                    g[path].add(t)
        return g


def sccs(g):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def main():
    dirs = sys.argv[1:] or sorted(
        [os.path.join('crates', d, 'src') for d in os.listdir('crates')]) + ['kernel/src', 'tools/src']
    bad = 0
    for d in dirs:
        c = Crate(d)
        g = c.edges()
        for comp in sccs(g):
            bad += 1
            names = ['::'.join(p) for p in sorted(comp)]
            print(f'{d}: module cycle: ' + ', '.join(names))
            for p in sorted(comp):
                inside = sorted('::'.join(t) for t in g[p] if t in comp)
                print(f'    {"::".join(p)} -> {", ".join(inside)}')
    n = len(dirs)
    print(f'modcycles: {n} crates, {bad} cycle(s)')
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
