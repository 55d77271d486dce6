#!/usr/bin/env bash
# Runs every test of the workspace. Tests that need something this machine lacks (QEMU, a
# guest image) skip loudly and say what is missing.
#
# With KUBEVIRT_RS_TEST_RUNNER=nextest and cargo-nextest: each test in its own process,
# the tests of all binaries side by side, under .config/nextest.toml's `ci` profile (test
# groups, priorities, timeouts, stop at the first failure); docs/testing.md. Without it:
# `cargo test`. Arguments are passed on: `scripts/test.sh -E 'package(kubevirt-launcher)'`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

# cargo test by default: measured on the CI machine, nextest's process per test costs more
# than it saves (the api crate's ~100 table tests each pay its setup again; 142 of 634
# tests after 14 minutes). KUBEVIRT_RS_TEST_RUNNER=nextest opts in (docs/testing.md).
if [ "${KUBEVIRT_RS_TEST_RUNNER:-cargo}" != nextest ]; then
  exec cargo test --workspace --locked "$@"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: cargo-nextest is not installed; running cargo test" >&2
  exec cargo test --workspace --locked "$@"
fi

# True when a doc comment holds a code block rustdoc would compile (no language, or rust
# with its attributes): nextest does not run doctests, `cargo test --doc` does. None today.
has_doctests() {
  grep -rhE --include='*.rs' '^\s*//[/!]\s*```' crates/*/src |
    awk '{
      if (!open) {
        lang = $0; sub(/^[^`]*```/, "", lang); gsub(/[[:space:]]/, "", lang)
        if (lang == "" || lang ~ /^(rust|should_panic|no_run|compile_fail|edition|test_harness|standalone_crate)/) found = 1
      }
      open = !open
    } END { exit !found }'
}

# The whole suite: the demo guest builds while the tests compile, where the tests look for it
# and under the lock they take (kubevirt_testsupport::build_guest); the first test that needs
# it would otherwise wait for the build.
prebuild=
if [ $# -eq 0 ]; then
  target=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  guest=${KUBEVIRT_RS_GUEST_DIR:-${target:+$target/tmp/guest}}
  # the arm64 and s390x guests (kubevirt_testsupport::guest_dir_arm64, guest_dir_s390x) after
  # it: one apt at a time
  if [ -n "$guest" ] && mkdir -p "$guest" "$guest-arm64" "$guest-s390x" 2>/dev/null; then
    { flock "$guest/.build.lock" guest/build.sh "$guest" || s=$?
      flock "$guest-arm64/.build.lock" guest/build.sh --arch arm64 "$guest-arm64" || s=$?
      flock "$guest-s390x/.build.lock" guest/build.sh --arch s390x "$guest-s390x" || s=$?
      exit "${s:-0}"; } &
    prebuild=$!
  fi
fi

status=0
cargo nextest run --workspace --locked --profile ci "$@" || status=$?
# Doctests with the whole suite only: nextest's arguments (-E ...) are not cargo test's.
if [ "$status" -eq 0 ] && [ $# -eq 0 ] && has_doctests; then
  cargo test --doc --workspace --locked || status=$?
fi
if [ -n "$prebuild" ]; then
  wait "$prebuild" || echo "test: building a demo guest failed (the tests that need it said so)" >&2
fi
exit "$status"
