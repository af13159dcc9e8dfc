#!/usr/bin/env bash
# Coverage-guided fuzzing of every voicegate::fuzz target with cargo-fuzz
# (libFuzzer), each for FUZZ_RUNS executions (default 10 million), growing
# the committed corpus in fuzz/corpus/<target>/ with what it finds.
#   make fuzz                       # all targets, 10 M executions each
#   FUZZ_RUNS=100000 make fuzz      # a quick pass
#   FUZZ_TARGETS="rtp wav" make fuzz
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
# Needs a nightly toolchain (rustup toolchain install nightly) and
# cargo-fuzz (cargo install cargo-fuzz); both come from the registries.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${FUZZ_RUNS:-10000000}"
TARGETS="${FUZZ_TARGETS:-sip_request sdp_offer digest rtp wav config}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
# Rust is memory-safe: no sanitizer (twice the speed); debug assertions stay
# on, so an integer overflow is a crash.
cargo +nightly fuzz build -s none --debug-assertions
# Run the built binaries directly: `cargo fuzz run` would rebuild first.
bin_dir=fuzz/target/$(rustc -vV | awk '/^host/{print $2}')/release
status=0
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t"
  max_len=4096
  case "$t" in wav) max_len=16384 ;; config) max_len=16384 ;; esac
  log="fuzz/artifacts/$t.log"
  mkdir -p fuzz/artifacts
  start=$(date +%s)
  if "$bin_dir/$t" "fuzz/corpus/$t" -artifact_prefix="fuzz/artifacts/$t-" \
      -runs="$RUNS" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW)' "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/')
  printf 'fuzz %-12s %s  executions: %s  coverage: %s  corpus: %s files  %ss\n' \
    "$t" "$result" "${execs:-?}" "${cov:-?}" "$(ls "fuzz/corpus/$t" | wc -l)" "$(( $(date +%s) - start ))"
  if [ "$result" = CRASH ]; then tail -40 "$log"; fi
  # Keep the committed corpus small: only inputs that add coverage.
  min="fuzz/artifacts/$t.min"
  rm -rf "$min"; mkdir -p "$min"
  if "$bin_dir/$t" -merge=1 "$min" "fuzz/corpus/$t" -max_len="$max_len" >"fuzz/artifacts/$t.merge.log" 2>&1; then
    rm -rf "fuzz/corpus/$t" && mv "$min" "fuzz/corpus/$t"
    echo "fuzz $t corpus minimised to $(ls "fuzz/corpus/$t" | wc -l) files"
  fi
done
exit $status
