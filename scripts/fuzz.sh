#!/usr/bin/env bash
# fuzz.sh [TARGET...]: run the cargo-fuzz (libFuzzer) targets of fuzz/ one after another, each
# for FUZZ_SECONDS (default 60; FUZZ_SECONDS_<target>, e.g. FUZZ_SECONDS_dt=600, overrides it
# for one target), one process each (-j1 style: the machine is shared). Targets: dt, cmdline,
# page_alloc, kva (all by default). Prints executions, time and findings per target and exits
# non-zero if any target found something (a crash, a failed check, a timeout, a leak, an OOM);
# the failing input is left in fuzz/artifacts/<target>/ -- reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# or, once copied into fuzz/corpus/<target>/, with plain `cargo test -p fuzz-checks`.
#
# Needs the `nightly` toolchain (already installed; this script never installs toolchains) and
# cargo-fuzz, which it installs with `cargo install cargo-fuzz --locked` if missing (about two
# minutes on two cores). New inputs libFuzzer finds go to fuzz/corpus-work/<target>/ (not
# committed); fuzz/corpus/<target>/ (committed, replayed by `cargo test -p fuzz-checks`) is only
# read. For dt, the generated blobs of $DT_FIXTURES (default target/dt-fixtures, from
# scripts/dt-fixtures.sh: QEMU virt, raspi4b and the upstream Pi 4 DTB) seed the run too.
#
# Other knobs: FUZZ_RUNS / FUZZ_RUNS_<target> (stop after that many executions instead of a
# time), FUZZ_SANITIZER / FUZZ_SANITIZER_<target> (address by default; "none" runs 2-3x faster
# but only catches what Rust's own checks catch: fine for code without `unsafe`), FUZZ_ARGS
# (extra libFuzzer flags).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECONDS_DEFAULT=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-address}
DT_FIXTURES=${DT_FIXTURES:-$ROOT/target/dt-fixtures}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(dt cmdline page_alloc kva)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing (cargo-fuzz needs it for the sanitizer flags)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)..."
  t0=$(date +%s)
  cargo install cargo-fuzz --locked || { echo "fuzz: cargo-fuzz install failed" >&2; exit 2; }
  echo "fuzz: cargo-fuzz installed in $(( $(date +%s) - t0 )) s"
fi

echo "fuzz: building ${TARGETS[*]} (release + debug assertions)"
mkdir -p target
for t in "${TARGETS[@]}"; do
  var=FUZZ_SANITIZER_$t
  case $t in page_alloc|kva) build=(-a --no-trace-compares) ;; *) build=(-a) ;; esac
  cargo +nightly fuzz build "${build[@]}" -s "${!var:-$SANITIZER}" "$t" >/dev/null 2>target/fuzz-build.log \
    || { cat target/fuzz-build.log >&2; echo "fuzz: build of $t failed" >&2; exit 2; }
done

declare -a SUMMARY
found=0
for t in "${TARGETS[@]}"; do
  var=FUZZ_SECONDS_$t
  secs=${!var:-$SECONDS_DEFAULT}
  var=FUZZ_RUNS_$t
  runs=${!var:-${FUZZ_RUNS:-}}
  var=FUZZ_SANITIZER_$t
  san=${!var:-$SANITIZER}
  # The operation decoders of page_alloc and kva take every byte modulo a range, so comparison
  # tracing gains them no coverage and costs most of their throughput (a callback per compare
  # in the allocators' loops).
  case $t in page_alloc|kva) build=(-a --no-trace-compares) ;; *) build=(-a) ;; esac
  work=fuzz/corpus-work/$t
  mkdir -p "$work" "fuzz/artifacts/$t" target
  seeds=(fuzz/corpus/"$t")
  # Input size bounds the cost of one execution: device trees up to the raspi4b blob's 73 KiB;
  # operation sequences up to 192 bytes (about 40 operations); command lines up to 4 KiB.
  case $t in dt) maxlen=80000 ;; cmdline) maxlen=4096 ;; *) maxlen=192 ;; esac
  if [ "$t" = dt ] && [ -d "$DT_FIXTURES" ]; then
    # The generated blobs up to max_len (the 1 MiB QEMU virt ones are in fuzz/corpus/dt cut to
    # their content).
    rm -rf target/fuzz-dt-fixtures && mkdir -p target/fuzz-dt-fixtures
    find "$DT_FIXTURES" -maxdepth 1 -name '*.dtb' -size -"$maxlen"c -exec cp {} target/fuzz-dt-fixtures/ \;
    seeds+=(target/fuzz-dt-fixtures)
  fi
  log=target/fuzz-$t.log
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  limit=(-max_total_time="$secs")
  [ -z "$runs" ] || limit=(-runs="$runs" -max_total_time=86400)
  echo "fuzz: $t: ${runs:+$runs runs}${runs:-${secs}s}, sanitizer $san (log $log)"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  cargo +nightly fuzz run "${build[@]}" -s "$san" "$t" "$work" "${seeds[@]}" -- \
    "${limit[@]}" -max_len="$maxlen" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(grep -o '#[0-9]*' "$log" | tail -1 | tr -d '#')
  execs=${execs:-0}
  elapsed=$(awk "BEGIN{printf \"%.0f\", $end - $start}")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "$work" -type f | wc -l)
  new=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
  if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
    found=1
    what=$(grep -m1 -E '^(==[0-9]+==ERROR|thread .* panicked|ERROR: libFuzzer|SUMMARY:)' "$log")
    art=$(grep -oE "fuzz/artifacts/$t/[^ ]+" "$log" | head -1)
    SUMMARY+=("$(printf '%-11s %12s execs %6ss  FINDING (exit %s): %s %s' "$t" "$execs" "$elapsed" "$rc" "${what:-see $log}" "$art")")
    sed -n '/panicked at/,+3p' "$log" | head -8
  else
    SUMMARY+=("$(printf '%-11s %12s execs %6ss  %s/s  cov %s  corpus %s  no finding' "$t" "$execs" "$elapsed" \
      "$(awk "BEGIN{printf \"%.0f\", $execs / ($elapsed > 0 ? $elapsed : 1)}")" "${cov:-?}" "$corpus")")
  fi
  echo "${SUMMARY[-1]}"
done

echo "fuzz: summary"
printf '  %s\n' "${SUMMARY[@]}"
exit $found
