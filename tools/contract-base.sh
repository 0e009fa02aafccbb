#!/usr/bin/env bash
# Prints the git revision `make check-compat` compares specs/ with:
#   1. CONTRACT_BASE when set (a ref, a commit or a directory);
#   2. otherwise the merge base of HEAD with the main branch (origin/main,
#      else main): what a branch will be merged into;
#   3. on main itself with specs/ unchanged in the work tree, the previous
#      commit, so the commit that last landed is judged against what main
#      held before it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${CONTRACT_BASE:-}" ]; then
  echo "$CONTRACT_BASE"
  exit 0
fi
main=""
for ref in origin/main main; do
  if git rev-parse --verify -q "$ref^{commit}" >/dev/null; then main=$ref; break; fi
done
if [ -z "$main" ]; then
  echo "contract-base: no main branch to compare with; set CONTRACT_BASE to a revision" >&2
  exit 2
fi
base=$(git merge-base HEAD "$main")
if [ "$base" = "$(git rev-parse HEAD)" ] && git diff --quiet HEAD -- specs; then
  if git rev-parse --verify -q "HEAD^{commit}" >/dev/null && git rev-parse --verify -q "HEAD~1^{commit}" >/dev/null; then
    base=$(git rev-parse HEAD~1)
  fi
fi
echo "$base"
