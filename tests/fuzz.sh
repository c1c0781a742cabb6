#!/usr/bin/env bash
# Fuzzes the parsers of untrusted bytes (fuzz/, cargo-fuzz and libFuzzer):
# each target runs for BERTH_FUZZ_SECONDS (60) from its seed corpus in
# fuzz/corpus/<target>/. New inputs go to a temporary directory, not into the
# repository; a crash leaves its input in fuzz/artifacts/<target>/ and fails
# the run. Called by tests/run-all.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${BERTH_FUZZ_SECONDS:-60}

if ! command -v cargo-fuzz >/dev/null; then
  echo "== installing cargo-fuzz (crates.io)"
  cargo install --locked cargo-fuzz
fi
if ! command -v c++ >/dev/null; then
  # libfuzzer-sys builds libFuzzer itself from its C++ sources.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++
fi
# cargo-fuzz passes -Z flags (sanitizer, coverage): the stable toolchain
# takes them with RUSTC_BOOTSTRAP, and ships the sanitizer runtimes.
export RUSTC_BOOTSTRAP=1

# Optimised, with debug assertions and overflow checks, without a
# sanitizer: the parsers are safe Rust (the unsafe code is in the syscall
# layer, which no target reaches), so AddressSanitizer would find nothing
# there, yet instrumenting the whole dependency tree with it more than
# doubled the build. 16 codegen units instead of cargo-fuzz's 1 for the
# same reason.
fuzz_build=(-O -a -s none --codegen-units 16)
echo "== fuzz: build"
cargo fuzz build "${fuzz_build[@]}"
targets=$(cargo fuzz list)
failed=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  work=$(mktemp -d)
  echo "== fuzz: $t for ${secs}s"
  # -rss_limit_mb: an input that makes a parser allocate without bound fails.
  if ! cargo fuzz run "${fuzz_build[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
      2> >(tail -n 80 >&2); then
    failed+=("$t")
  fi
  rm -rf "$work"
done
if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: $(wc -w <<<"$targets") targets ran ${secs}s each without a crash"
