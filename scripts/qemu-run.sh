#!/usr/bin/env bash
# qemu-run.sh ELF: cargo's runner for aarch64-unknown-none (.cargo/config.toml), so that
# `cargo krun` boots the kernel: objcopy the ELF to an arm64 Image beside it, then QEMU virt.
# Environment: ARGS (bootargs; default: make run's seed suite), SMP (4), MEM (2G), CPU
# (cortex-a72). The exit status is the kernel's (semihosting SYS_EXIT).
set -euo pipefail
elf=$1
shift
sysroot=$(rustc --print sysroot)
objcopy="$sysroot/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy"
[ -x "$objcopy" ] || objcopy="$sysroot/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-objcopy"
img="${elf%/*}/kernel8.img"
"$objcopy" -O binary "$elf" "$img"
exec qemu-system-aarch64 -M virt -cpu "${CPU:-cortex-a72}" -smp "${SMP:-4}" -m "${MEM:-2G}" \
  -nographic -no-reboot -semihosting -kernel "$img" \
  -append "${ARGS:-test_vmalloc.suite=seed test_vmalloc.loop_scale=0.01}" "$@"
