#!/usr/bin/env bash
# Runs the protocol fuzz targets, each for SECONDS, one after another.
#
#   scripts/fuzz.sh SECONDS [TARGET...]     (default: every target in fuzz/Cargo.toml)
#
# Uses cargo-fuzz (installed if missing) on stable Rust with RUSTC_BOOTSTRAP=1, which
# unlocks the nightly-only flags (-Zsanitizer=address) cargo-fuzz passes. The grown
# corpus stays in fuzz/corpus/<target>/ (only seed-* files are committed); crashes go to
# fuzz/artifacts/<target>/. Set FUZZ_JOBS=N to run N targets at once (default 1).
# Exits non-zero if any target crashed or timed out.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -O
mkdir -p logs

run_one() {
    local target=$1 log="logs/$1.log" rc=0
    mkdir -p "corpus/$target"
    local before
    before=$(find "corpus/$target" -type f | wc -l)
    cargo fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    local after execs
    after=$(find "corpus/$target" -type f | wc -l)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    if [[ $rc -eq 0 ]]; then
        echo "$target: ok, ${seconds}s, $execs execs, corpus $before -> $after files"
    else
        echo "$target: FAILED (exit $rc), $execs execs, corpus $before -> $after files; see fuzz/$log and fuzz/artifacts/$target/"
        grep -m5 -E 'panicked|ERROR|SUMMARY' "$log" | sed 's/^/    /' || true
    fi
    return $rc
}

jobs=${FUZZ_JOBS:-1}
status=0
pids=()
for target in "${targets[@]}"; do
    run_one "$target" &
    pids+=($!)
    if [[ ${#pids[@]} -ge $jobs ]]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
exit $status
