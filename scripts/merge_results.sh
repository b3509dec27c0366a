#!/usr/bin/env bash
# Merges the Allure results of several labs (one directory each) into one directory, for one
# report: result, container and attachment files have unique names and are copied as they
# are; environment.properties (host-prefixed keys) are concatenated; categories.json is the
# project's own (the same in every lab); each lab's kvm-figures.json stays with it (compare
# reads it per lab: scripts/compare_labs.sh). Usage: merge_results.sh OUT LAB_DIR...
set -euo pipefail
out=$1; shift
[ $# -gt 0 ] || { echo "usage: $0 OUT LAB_RESULTS_DIR..." >&2; exit 2; }
mkdir -p "$out"
for dir in "$@"; do
  [ -d "$dir" ] || { echo "merge_results: no directory $dir" >&2; exit 1; }
  find "$dir" -maxdepth 1 -type f ! -name environment.properties ! -name kvm-figures.json \
    -exec cp -t "$out" {} +
done
for dir in "$@"; do
  if [ -f "$dir/environment.properties" ]; then cat "$dir/environment.properties"; fi
done | sort -u > "$out/environment.properties"
echo "merge_results: $(find "$out" -maxdepth 1 -name '*-result.json' | wc -l) results from $# labs in $out"
