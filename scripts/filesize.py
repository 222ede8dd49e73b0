#!/usr/bin/env python3
"""filesize.py [LIMIT]: fails if a Rust source file has more than LIMIT (800) lines of non-test
code. Test code does not count: files named tests.rs (or under a tests/ directory) and inline
`#[cfg(test)] mod ... { }` blocks. Covers the workspace crates, tools/ and fuzz/."""
import os
import re
import subprocess
import sys

limit = int(sys.argv[1]) if len(sys.argv) > 1 else 800
files = subprocess.run(['git', 'ls-files', '*.rs'], capture_output=True, text=True,
                       check=True).stdout.split()
bad = 0
for f in files:
    if not os.path.exists(f) or os.path.basename(f) == 'tests.rs' or '/tests/' in f:
        continue
    lines = open(f).read().split('\n')
    n, i = 0, 0
    while i < len(lines):
        if re.match(r'\s*#\[cfg\(test\)\]', lines[i]) and i + 1 < len(lines) and re.match(
                r'\s*(pub(\([\w:]+\))?\s+)?mod\s+\w+\s*\{', lines[i + 1]):
            depth, i = 0, i + 1
            while i < len(lines):
                depth += lines[i].count('{') - lines[i].count('}')
                i += 1
                if depth <= 0:
                    break
            continue
        n += 1
        i += 1
    if n > limit:
        bad += 1
        print(f'{f}: {n} lines of non-test code (limit {limit})')
print(f'filesize: {len(files)} files, {bad} over {limit} lines')
sys.exit(1 if bad else 0)
