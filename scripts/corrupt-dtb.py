#!/usr/bin/env python3
"""Corrupts a flattened device tree in a way QEMU's own loader does not notice but a careful
parser must: the name offset of the last property of the first node that QEMU leaves alone
(/cpus/cpu@0) is pointed far outside the strings block.
Usage: corrupt-dtb.py IN OUT"""
import struct, sys

data = bytearray(open(sys.argv[1], 'rb').read())
magic, total, off_struct, off_strings, off_rsv, ver, lcv, boot_cpu, size_strings, size_struct = \
    struct.unpack_from('>10I', data, 0)
assert magic == 0xd00dfeed
pos, end = off_struct, off_struct + size_struct
path, target = [], None
while pos < end:
    tok, = struct.unpack_from('>I', data, pos); pos += 4
    if tok == 1:  # FDT_BEGIN_NODE
        nul = data.index(0, pos); name = data[pos:nul].decode(); pos = (nul + 4) & ~3
        path.append(name)
    elif tok == 2:  # FDT_END_NODE
        path.pop()
    elif tok == 3:  # FDT_PROP: len, nameoff
        ln, nameoff = struct.unpack_from('>II', data, pos)
        if '/'.join(path).endswith('cpus/cpu@0'):
            target = pos + 4
        pos = (pos + 8 + ln + 3) & ~3
    elif tok == 9:
        break
if target is None:
    sys.exit('corrupt-dtb: no /cpus/cpu@0 property found')
struct.pack_into('>I', data, target, 0x7ffffff0)
open(sys.argv[2], 'wb').write(data)
