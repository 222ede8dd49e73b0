# mmkernel: a bare-metal arm64 kernel re-implementing Linux's memory management and test_vmalloc.
#
#   make            build target/kernel8.img (one image for QEMU virt, QEMU raspi4b, a real Pi 4)
#   make run        boot it under QEMU virt (BOARD=rpi4: raspi4b), run the default benchmark;
#                   the output is also saved to target/run.log and ends with that boot's
#                   table (tvtool summary: rows, pass/fail, leak lines); exit status = QEMU's
#   make test       lint + host unit tests + in-kernel tests under QEMU + boot/fault checks (CI)
#   make lint       cargo fmt --check, clippy (host crates, tools, target) with -D warnings,
#                   no module cycles, no source file over 800 lines outside tests
#   make bench      the seed table: mm.vfree=single vs bulk, 19 rows x 6 runs, -icount shift=0
#   make bench-wall the same without -icount (wall-clock, this host's noise): 8 runs, one QEMU
#                   at a time, plus the run-to-run spread per row (CV, CI half-width)
#   make bench-pagealloc   page-allocator micro-benchmark (instructions per operation)
#   make bench-smp  SMP scaling, wall clock: nr_threads=N on -smp SMP and one worker on -smp N,
#                   N = 1, 2, 4 .. SMP; per-worker time relative to N = 1 with 95% CIs, beside
#                   Linux 6.12's (16-core host); target/bench/smp/{report.md,report.json,smp.svg}
#                   (BENCH_SMP_RUNS=5 boots per configuration, BENCH_SMP_SCALE=1: 20000 loops)
#   make bench-linux  ours vs Linux 6.12 (Debian's arm64 kernel, downloaded and cached in
#                   .cache/linux-anchor) on the same QEMU, per seed row: instructions per loop
#                   (-icount, -smp 1), wall-clock per loop (-smp 2, alternating boots), ratio
#                   ours/Linux, ns per instruction; target/bench/linux/{report.md,report.json}
#                   (BENCH_LINUX_RUNS=10 wall boots each, BENCH_LINUX_ICOUNT_RUNS=1 at -smp 1 and
#                   BENCH_LINUX_ICOUNT2_RUNS=1 at -smp 2, BENCH_LINUX_SCALE=0.04: 20000 / 4000
#                   loops; about 6-7 minutes once cached); not part of make test
#   make fuzz       every fuzz target (cargo-fuzz, nightly; installed on demand) FUZZ_SECONDS each;
#                   make fuzz-long: 10M device-tree and 1M of every other target
#   make stress     Linux test_vmalloc.sh's stress preset at full strength at -smp 4 (hours under
#                   TCG; STRESS_ARGS="test_vmalloc.test_loop_count=N" cuts it down); log in
#                   target/stress/stress.log; make stress-save (from another shell) saves the
#                   running VM to disk and stops it, the next make stress resumes it;
#                   make stress-status says how far it got
#   make setup      install what is missing (Rust target, QEMU >= 9, dtc, the Pi 4 DTB)
#   make sdcard     target/sdcard.img for a real Pi 4 (MBR, one FAT32 partition: Debian's Pi
#                   firmware, the DTB, kernel8.img, config.txt, cmdline.txt = ARGS) and the same
#                   files in target/sdcard/ (scripts/sdcard.sh; boot/sdcard/config.txt)
#   make gdb        boot virt halted with a gdb stub, attach gdb-multiarch
#   make layout     measure the hot paths on the seed suite and place the hot functions at page
#                   offsets that keep their branches and calls on one page (boot/hot-order.txt,
#                   the linker's symbol order), then relink
#   make profile-rows  per seed row, one loop's instructions by mm component (TCG plugin);
#                   PROFILE_ARGS=--linux adds Linux 6.12's, charged to the same components
#   make clean
#
# Variables: BOARD=virt|rpi4  SMP=4  MEM=2G  CPU=cortex-a72  ARGS="bootargs"  TIMEOUT=120

BOARD   ?= virt
SMP     ?= 4
MEM     ?= 2G
CPU     ?= cortex-a72
# make run's default: the seed suite, scaled to finish in seconds.
ARGS    ?= test_vmalloc.suite=seed test_vmalloc.loop_scale=0.01
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
CARGO_TGT    := cargo
BUILD_STD    :=
else
CARGO_TGT    := RUSTC_BOOTSTRAP=1 cargo
BUILD_STD    := -Zbuild-std=core,alloc,compiler_builtins -Zbuild-std-features=compiler-builtins-mem
endif
CARGO_KERNEL := $(CARGO_TGT) build --release -p boot --target $(TARGET) $(BUILD_STD)

QEMU_VIRT  = qemu-system-aarch64 -M virt -cpu $(CPU) -smp $(SMP) -m $(MEM) -nographic -no-reboot -semihosting
# The upstream Pi 4 DTB's stdout-path is the mini UART, QEMU's *second* serial port.
QEMU_RPI4  = qemu-system-aarch64 -M raspi4b -dtb $(PI4_DTB) -display none -monitor none \
             -serial null -serial stdio -no-reboot -semihosting

.PHONY: lint fuzz fuzz-long stress stress-save stress-status all build sdcard run test test-host test-kernel test-smoke bench bench-wall bench-regression bench-pagealloc bench-smp bench-linux tools setup gdb clean layout profile-rows

TVTOOL := tools/target/release/tvtool

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO_KERNEL)
	$(OBJCOPY) -O binary $(ELF) $(IMG)
	@echo "built $(IMG) ($$(stat -c %s $(IMG)) bytes)"
	@python3 scripts/profile-tcg/layout.py check --elf $(ELF) || echo "warning: hot-code layout stale (make test fails on it)"

layout: build
	python3 scripts/profile-tcg/layout.py generate --img $(IMG) --elf $(ELF)
	$(MAKE) build

PROFILE_ARGS ?=
profile-rows: build
	python3 scripts/profile-tcg/rows.py $(PROFILE_ARGS)

ifeq ($(BOARD),rpi4)
RUN_QEMU = $(QEMU_RPI4)
else
RUN_QEMU = $(QEMU_VIRT)
endif
RUN_LOG := target/run.log
# QEMU's output goes to the terminal and to $(RUN_LOG); then the boot's table. The exit
# status is QEMU's (PIPESTATUS: bash), 124 on a timeout; the table never changes it.
run: private SHELL := /bin/bash
run: build tools
	@mkdir -p $(dir $(RUN_LOG))
	timeout --foreground $(TIMEOUT) $(RUN_QEMU) -kernel $(IMG) -append "$(ARGS)" 2>&1 | tee $(RUN_LOG); \
	rc=$${PIPESTATUS[0]}; \
	echo; $(TVTOOL) summary $(RUN_LOG) --qemu-rc $$rc || true; \
	exit $$rc

test: lint build test-host test-kernel test-smoke
	@echo "make test: all passed"

lint: setup
	cargo fmt --all --check
	cd tools && cargo fmt --check
	rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs
	cargo clippy --all-targets -- -D warnings
	cd tools && cargo clippy --release --all-targets -- -D warnings
	$(CARGO_TGT) clippy --release -p kernel -p boot --target $(TARGET) $(BUILD_STD) -- -D warnings
	python3 scripts/modcycles.py
	python3 scripts/filesize.py 800

test-host: setup
	bash scripts/dt-fixtures.sh target/dt-fixtures
	DT_FIXTURES=$(CURDIR)/target/dt-fixtures cargo test
	cd tools && cargo test --release

tools: setup
	cd tools && cargo build --release

# Every test_vmalloc test once at -smp 1 and 4 for both vfree variants: fails on a failed
# test, a leak line reporting a loss, a parse error or a missing row.
test-smoke: build tools
	$(TVTOOL) run tools/plans/smoke.toml --out target/smoke

bench: build tools
	$(TVTOOL) run tools/plans/seed-table.toml --out target/bench/seed-table

# Wall-clock (no -icount) seed table: measures this host's noise, see tools/README.md.
bench-wall: build tools
	$(TVTOOL) run tools/plans/seed-wall.toml --out target/bench/seed-wall --jobs 1 --spread

# SMP scaling (tools/plans/smp-scaling.toml, `tvtool smp`): one QEMU at a time; each run
# starts from an empty target/bench/smp. SMP above 8 boots every configuration with
# -M virt,gic-version=3. With fewer host cores than SMP the N-worker series measures host
# contention (the report says so).
BENCH_SMP_RUNS  ?= 5
BENCH_SMP_SCALE ?= 1
bench-smp: build tools
	rm -rf target/bench/smp
	$(TVTOOL) smp tools/plans/smp-scaling.toml --smp $(SMP) --runs $(BENCH_SMP_RUNS) \
	  --loop-scale $(BENCH_SMP_SCALE) --out target/bench/smp

# Ours vs Linux 6.12 on the same QEMU (scripts/bench-linux.sh): downloads Debian's arm64 kernel,
# headers and the cross compiler once (cache: .cache/linux-anchor), builds test_vmalloc.ko out of
# tree, then boots both kernels; each run starts from an empty target/bench/linux.
BENCH_LINUX_RUNS         ?= 10
BENCH_LINUX_ICOUNT_RUNS  ?= 1
BENCH_LINUX_ICOUNT2_RUNS ?= 1
BENCH_LINUX_SCALE        ?= 0.04
BENCH_LINUX_SETTLE       ?= 5
bench-linux: build tools
	BENCH_LINUX_RUNS=$(BENCH_LINUX_RUNS) BENCH_LINUX_ICOUNT_RUNS=$(BENCH_LINUX_ICOUNT_RUNS) \
	  BENCH_LINUX_ICOUNT2_RUNS=$(BENCH_LINUX_ICOUNT2_RUNS) BENCH_LINUX_SCALE=$(BENCH_LINUX_SCALE) \
	  BENCH_LINUX_SETTLE=$(BENCH_LINUX_SETTLE) CPU=$(CPU) MEM=$(MEM) \
	  OUT=$(CURDIR)/target/bench/linux bash scripts/bench-linux.sh

# Fuzzing (scripts/fuzz.sh installs cargo-fuzz if missing). make test replays the committed
# corpus through the same checks on stable (cargo test -p fuzz-checks).
FUZZ_TARGETS ?=
fuzz:
	bash scripts/dt-fixtures.sh target/dt-fixtures
	bash scripts/fuzz.sh $(FUZZ_TARGETS)

fuzz-long:
	bash scripts/dt-fixtures.sh target/dt-fixtures
	FUZZ_RUNS=1000000 FUZZ_RUNS_dt=10000000 FUZZ_SANITIZER=none FUZZ_SANITIZER_kva=address \
	  bash scripts/fuzz.sh

# test_vmalloc.sh stress: nr_threads = CPUs, test_repeat_count = 20, every test, Linux's loop
# count (1000000) unless STRESS_ARGS says otherwise; no timeout. Fails on a failed test or a
# LOST leak line (exit status 1).
STRESS_SMP  ?= 4
STRESS_ARGS ?=
# Resumable (scripts/stress.sh): `make stress-save` from another shell writes the running VM to
# target/stress/state.gz and stops it; the next `make stress` continues the same boot.
stress: build
	STRESS_SMP=$(STRESS_SMP) MEM=$(MEM) CPU=$(CPU) bash scripts/stress.sh run $(IMG) "$(STRESS_ARGS)"
stress-save:
	bash scripts/stress.sh save
stress-status:
	bash scripts/stress.sh status

bench-regression: build tools
	$(TVTOOL) run tools/plans/regression.toml --out target/bench/regression

bench-pagealloc: build
	timeout 300 qemu-system-aarch64 -M virt -cpu $(CPU) -smp 1 -m $(MEM) -nographic -no-reboot -semihosting \
	  -icount shift=0 -kernel $(IMG) -append "bench=pagealloc"

test-kernel: build
	python3 scripts/profile-tcg/layout.py check --elf $(ELF)
	bash scripts/kernel-tests.sh $(IMG)

# A bootable SD card for a real Pi 4 (scripts/sdcard.sh installs mtools, dosfstools and fdisk
# and fetches Debian's raspi-firmware on first use); cmdline.txt holds ARGS, as make run's -append.
sdcard: build
	ARGS="$(ARGS)" bash scripts/sdcard.sh

gdb: build
	@command -v gdb-multiarch >/dev/null || { S=; [ "$$(id -u)" = 0 ] || S=sudo; \
	  DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq gdb-multiarch >/dev/null; }
	$(QEMU_VIRT) -kernel $(IMG) -append "$(ARGS)" -s -S & \
	gdb-multiarch -q $(ELF) -ex 'target remote :1234'

clean:
	cargo clean
