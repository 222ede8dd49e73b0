#!/usr/bin/env bash
# make stress: Linux test_vmalloc.sh's stress preset (nr_threads = CPUs, test_repeat_count = 20,
# every test, 1,000,000 loops) in one boot, resumable across interruptions.
#
# Usage: scripts/stress.sh run  IMG "EXTRA BOOT ARGS"   start, or resume a saved run
#        scripts/stress.sh save                         save the running VM and stop it
#        scripts/stress.sh status                       what is running or saved, and how far
#
# Under TCG on a small host the full preset takes hours (about 2.5 h on 2 cores). `save` stops
# the VM and writes its whole state (RAM, CPUs, devices: QEMU's migration stream, gzip'ed) to
# $DIR/state.gz, then quits QEMU; the next `run` restarts QEMU with `-incoming` from it and the
# same boot continues where it stopped, appending to the same log. Nothing in the guest sees
# the pause but its clock (guest time stops while saved). A run is resumed only with the image
# and command line it started with (checked); to start afresh remove $DIR.
#
# Files in $DIR (default target/stress): kernel8.img (the image under test, copied at start),
# cmdline, stress.log (the serial console, appended by every segment), segments (one line per
# start, resume, save and end, with seconds run), state.gz while saved, mon.sock while running.
# Exit status: the kernel's (0 all passed; 1 a test failed or a leak line said LOST), 3 when
# saved, 2 on a usage or setup error.
set -euo pipefail
DIR=${STRESS_DIR:-target/stress}
SMP=${STRESS_SMP:-4}
MEM=${MEM:-2G}
CPU=${CPU:-cortex-a72}
here=$(cd "$(dirname "$0")" && pwd)
hmp() { python3 "$here/qemu-hmp.py" "$DIR/mon.sock" "$@"; }
die() { echo "stress: $*" >&2; exit 2; }
now() { date -u +%FT%TZ; }

run() {
    local img=$1 extra=${2:-}
    local cmdline="test_vmalloc.suite=stress${extra:+ $extra}"
    mkdir -p "$DIR"
    local qemu=(qemu-system-aarch64 -M virt -cpu "$CPU" -smp "$SMP" -m "$MEM" -nographic
        -no-reboot -semihosting -kernel "$DIR/kernel8.img" -append "$cmdline"
        -monitor "unix:$DIR/mon.sock,server,nowait"
        -chardev "file,id=ser0,path=$DIR/stress.log,append=on" -serial chardev:ser0)
    if [ -S "$DIR/mon.sock" ] && hmp "info status" > /dev/null 2>&1; then
        die "a stress VM is already running ($DIR/mon.sock); scripts/stress.sh status"
    fi
    rm -f "$DIR/mon.sock"
    local resume=0
    if [ -f "$DIR/state.gz" ]; then
        cmp -s "$img" "$DIR/kernel8.img" ||
            die "$DIR/state.gz was saved from another kernel image; remove $DIR to start afresh"
        [ "$(cat "$DIR/cmdline")" = "$cmdline" ] ||
            die "$DIR/state.gz was saved with \"$(cat "$DIR/cmdline")\"; remove $DIR to start afresh"
        resume=1
        echo "stress: resuming the saved run ($(grep -c '^save' "$DIR/segments") saves, $(total) s run so far); log: $DIR/stress.log"
        echo "resume $(now)" >> "$DIR/segments"
        qemu+=(-incoming "exec:gzip -dc $DIR/state.gz")
    else
        rm -f "$DIR/stress.log" "$DIR/segments"
        cp "$img" "$DIR/kernel8.img"
        echo "$cmdline" > "$DIR/cmdline"
        echo "start $(now) $(git -C "$here/.." describe --always --dirty 2>/dev/null || echo '?')" >> "$DIR/segments"
        echo "stress: $cmdline at -smp $SMP; log: $DIR/stress.log (scripts/stress.sh save pauses it to disk)"
    fi
    rm -f "$DIR/saved"
    local t0 rc
    t0=$(date +%s)
    "${qemu[@]}" < /dev/null > "$DIR/qemu.out" 2>&1 &
    local q=$!
    tail -n +1 -F "$DIR/stress.log" --pid=$q 2> /dev/null &
    local t=$!
    if [ $resume = 1 ]; then
        # -incoming leaves the VM paused (it was stopped when saved): continue it once loaded.
        # A `cont` before the state is loaded would be lost (the stream says "stopped").
        local st=""
        for _ in $(seq 1 600); do
            st=$(hmp 'info status' 2> /dev/null || true)
            case "$st" in
            *inmigrate*|"") ;;
            *running*) break ;;
            *paused*) hmp cont > /dev/null ;;
            esac
            sleep 1
        done
        case "$st" in *running*) ;; *) echo "stress: warning: the resumed VM is not running ($st)" >&2 ;; esac
    fi
    set +e
    wait $q
    rc=$?
    set -e
    wait $t 2> /dev/null || true
    rm -f "$DIR/mon.sock"
    local secs=$(( $(date +%s) - t0 ))
    if [ -f "$DIR/saved" ]; then
        echo "save $(now) seconds=$secs" >> "$DIR/segments"
        echo "stress: saved to $DIR/state.gz after $(total) s; run 'make stress' again to resume"
        exit 3
    fi
    if grep -q "terminating on signal" "$DIR/qemu.out"; then
        echo "killed $(now) seconds=$secs" >> "$DIR/segments"
        die "QEMU was killed: $(cat "$DIR/qemu.out"); the run is lost (a saved state is resumed only when 'save' wrote it)"
    fi
    echo "end $(now) rc=$rc seconds=$secs" >> "$DIR/segments"
    rm -f "$DIR/state.gz"
    echo "stress: exit status $rc after $(total) s of running ($(grep -c '^save' "$DIR/segments") saves)"
    exit $rc
}

total() { grep -o 'seconds=[0-9]*' "$DIR/segments" 2> /dev/null | awk -F= '{ s += $2 } END { print s + 0 }'; }

save() {
    { [ -S "$DIR/mon.sock" ] && hmp "info status" > /dev/null 2>&1; } ||
        die "no stress VM is running ($DIR/mon.sock)"
    hmp stop > /dev/null
    rm -f "$DIR/state.gz.new"
    hmp "migrate \"exec:gzip -1 > $DIR/state.gz.new\"" > /dev/null
    local s=""
    for _ in $(seq 1 1200); do
        s=$(hmp "info migrate" | grep -i "migration status" || true)
        case "$s" in *completed*) break ;; *failed*|*cancelled*) die "saving failed: $s (the VM stays stopped; 'cont' in its monitor)" ;; esac
        sleep 1
    done
    case "$s" in *completed*) ;; *) die "saving did not complete: $s" ;; esac
    sync
    mv "$DIR/state.gz.new" "$DIR/state.gz"
    touch "$DIR/saved"
    hmp quit > /dev/null 2>&1 || true
    echo "stress: saved ($(du -h "$DIR/state.gz" | cut -f1)); run 'make stress' to resume"
}

status() {
    [ -d "$DIR" ] || { echo "stress: nothing in $DIR"; return; }
    if [ -S "$DIR/mon.sock" ] && hmp "info status" > /dev/null 2>&1; then echo "stress: running"; 
    elif [ -f "$DIR/state.gz" ]; then echo "stress: saved ($DIR/state.gz)"; 
    else echo "stress: not running"; fi
    cat "$DIR/segments" 2> /dev/null || true
    echo "run so far: $(total) s; setup lines: $(grep -c 'setup' "$DIR/stress.log" 2> /dev/null || true) (8 in all: each worker prints one when it has done its 20 repeats of full_fit, and of long_busy_list)"
    tail -n 3 "$DIR/stress.log" 2> /dev/null || true
}

case "${1:-}" in
run) [ $# -ge 2 ] || die "usage: $0 run IMG [EXTRA_ARGS]"; run "$2" "${3:-}" ;;
save) save ;;
status) status ;;
*) die "usage: $0 run IMG [EXTRA_ARGS] | save | status" ;;
esac
