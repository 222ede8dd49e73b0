# mmkernel: a bare-metal arm64 kernel re-implementing Linux's memory management and test_vmalloc.
#
#   make            build target/kernel8.img (one image for QEMU virt, QEMU raspi4b, a real Pi 4)
#   make run        boot it under QEMU virt (BOARD=rpi4: raspi4b), run the default benchmark
#   make test       host unit tests + in-kernel tests under QEMU + boot/fault checks (CI runs this)
#   make bench      page-allocator micro-benchmark under -icount shift=0
#   make setup      install what is missing (Rust target, QEMU >= 9, dtc, the Pi 4 DTB)
#   make gdb        boot virt halted with a gdb stub, attach gdb-multiarch
#   make clean
#
# Variables: BOARD=virt|rpi4  SMP=4  MEM=2G  CPU=cortex-a72  ARGS="bootargs"  TIMEOUT=120

BOARD   ?= virt
SMP     ?= 4
MEM     ?= 2G
CPU     ?= cortex-a72
ARGS    ?=
TIMEOUT ?= 120

TARGET  := aarch64-unknown-none
CACHE   := $(CURDIR)/.cache
PI4_DTB := $(CACHE)/bcm2711-rpi-4-b.dtb
ELF     := target/$(TARGET)/release/boot
IMG     := target/kernel8.img
SYSROOT := $(shell rustc --print sysroot 2>/dev/null)
OBJCOPY := $(SYSROOT)/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy

# Use the prebuilt core/alloc for the target when rustup has it, else build them from rust-src.
HAVE_STD := $(shell rustup target list --installed 2>/dev/null | grep -qx $(TARGET) && echo yes)
ifeq ($(HAVE_STD),yes)
CARGO_KERNEL := cargo build --release -p boot --target $(TARGET)
else
CARGO_KERNEL := RUSTC_BOOTSTRAP=1 cargo build --release -p boot --target $(TARGET) \
	-Zbuild-std=core,alloc,compiler_builtins -Zbuild-std-features=compiler-builtins-mem
endif

QEMU_VIRT  = qemu-system-aarch64 -M virt -cpu $(CPU) -smp $(SMP) -m $(MEM) -nographic -no-reboot -semihosting
# The upstream Pi 4 DTB's stdout-path is the mini UART, QEMU's *second* serial port.
QEMU_RPI4  = qemu-system-aarch64 -M raspi4b -dtb $(PI4_DTB) -display none -monitor none \
             -serial null -serial stdio -no-reboot -semihosting

.PHONY: all build run test test-host test-tools test-kernel bench setup gdb clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO_KERNEL)
	$(OBJCOPY) -O binary $(ELF) $(IMG)
	@echo "built $(IMG) ($$(stat -c %s $(IMG)) bytes)"

ifeq ($(BOARD),rpi4)
run: build
	timeout --foreground $(TIMEOUT) $(QEMU_RPI4) -kernel $(IMG) -append "$(ARGS)"
else
run: build
	timeout --foreground $(TIMEOUT) $(QEMU_VIRT) -kernel $(IMG) -append "$(ARGS)"
endif

test: build test-host test-kernel
	@echo "make test: all passed"

test-host: setup
	bash scripts/dt-fixtures.sh target/dt-fixtures
	DT_FIXTURES=$(CURDIR)/target/dt-fixtures cargo test -p kernel
	@if [ -f tools/Cargo.toml ]; then cd tools && cargo test; fi

test-kernel: build
	bash scripts/kernel-tests.sh $(IMG)

gdb: build
	$(QEMU_VIRT) -kernel $(IMG) -append "$(ARGS)" -s -S & \
	gdb-multiarch -q $(ELF) -ex 'target remote :1234'

clean:
	cargo clean
