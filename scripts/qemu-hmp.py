#!/usr/bin/env python3
"""Send human-monitor (HMP) commands to a QEMU started with -monitor unix:SOCK,server,nowait.

Usage: qemu-hmp.py SOCK CMD [CMD...]   prints each command's reply (without the echo).
"""
import re
import socket
import sys

PROMPT = b"(qemu) "


def read_prompt(s):
    buf = b""
    while not buf.endswith(PROMPT):
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        buf += d
    return buf


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip())
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
    read_prompt(s)
    for cmd in sys.argv[2:]:
        s.sendall(cmd.encode() + b"\n")
        out = read_prompt(s).decode(errors="replace")
        # The monitor echoes the command with terminal escapes; keep the lines after it.
        out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out).replace("(qemu) ", "")
        lines = out.splitlines()[1:]
        print("\n".join(l for l in lines if l.strip()))


if __name__ == "__main__":
    main()
