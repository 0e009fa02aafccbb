#!/usr/bin/env bash
# Mutation testing of the security rules: cargo-mutants mutates the rule
# functions of the server (token failure rules, identity admission and
# heartbeat judgement, runtime-token and admin-JWT verification, secret
# comparison, the failed-exchange limiter) and counts how many mutants the
# server's tests plus the conformance suite on the local target catch.
# Results: $TARGET/mutants/mutants.out (caught.txt, missed.txt, unviable.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The functions that decide: a mutant elsewhere (Debug, parsing helpers) says little.
rules='(failure_at|status_at|admit|judge_heartbeat|judge_rotation_write|from_rows|effective_status|::verify|constant_time_eq|enrollment_token_matches|parse_enrollment_token|nonce_is_well_formed|RateLimiter::acquire|RateLimiter::settle|fingerprint_hash)'
tests='package(oneprotect-server) | (package(oneprotect-conformance) & test(/every_local_check_passes/))'
# Builds of the mutated copies share one target directory, so only the
# workspace's own crates are rebuilt from one run to the next. The baseline
# (the same tests on the unmutated tree) is `make test`'s job: cargo-mutants
# would run it on the mutated package alone, without the conformance suite.
CARGO_TARGET_DIR="$target/mutants-build" cargo mutants \
  -p oneprotect-server \
  --file server/src/model/rules.rs --file server/src/model/records.rs --file server/src/runtime_token.rs --file server/src/admin_auth.rs \
  --file server/src/secrets.rs --file server/src/ratelimit.rs \
  --re "$rules" \
  --test-tool nextest --test-package oneprotect-server --test-package oneprotect-conformance \
  --output "$target/mutants" --no-shuffle \
  --baseline skip --timeout 300 --build-timeout 900 "$@" \
  -- --lib --test suite --test harness -E "$tests" || status=$?
out="$target/mutants/mutants.out"
caught=$(wc -l < "$out/caught.txt"); missed=$(wc -l < "$out/missed.txt")
unviable=$(wc -l < "$out/unviable.txt"); timeout=$(wc -l < "$out/timeout.txt" 2>/dev/null || echo 0)
viable=$((caught + missed + timeout))
echo "mutants: $caught caught, $missed missed, $timeout timed out (caught by the timeout), $unviable unviable"
[ "$viable" -gt 0 ] && python3 -c "print(f'caught {100*($caught+$timeout)/$viable:.1f}% of {$viable} viable mutants')"
[ "$missed" -gt 0 ] && { echo "missed:"; cat "$out/missed.txt"; }
exit "${status:-0}"
