#!/usr/bin/env bash
# Commit results/asv and push it to main, rebasing onto concurrent writers; three failed pushes fail
# the job (exit 1) rather than losing the measurement silently. Usage: push-results.sh MACHINE_CLASS
set -euo pipefail
machine="${1:?usage: push-results.sh MACHINE_CLASS}"
git config user.name "github-actions[bot]"
git config user.email "41898282+github-actions[bot]@users.noreply.github.com"
git add results/asv
if git diff --cached --quiet; then
  echo "no new results to push"
  exit 0
fi
git commit -m "asv: results of ${GITHUB_SHA::8} on ${machine} [skip ci]"
for attempt in 1 2 3; do
  if git pull --rebase --quiet origin main && git push origin HEAD:main; then
    exit 0
  fi
  echo "push attempt ${attempt} failed; retrying" >&2
  sleep $((5 * attempt))
done
echo "::error::could not push the asv results of ${GITHUB_SHA::8} after 3 attempts" >&2
exit 1
