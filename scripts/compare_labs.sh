#!/usr/bin/env bash
# Nightly: each lab's figures tonight against that lab's last kept run, as a table, Markdown,
# JSON and one "A/B" result in the Allure results about to be rendered.
#   compare_labs.sh PYTHON KEPT_DIR TONIGHT_DIR OUT_DIR ALLURE_RESULTS
# TONIGHT_DIR/<lab>/kvm-figures.json: tonight's figures (each lab job's Allure results);
# KEPT_DIR/<lab>/kvm-figures.json: the last kept run (a CI cache). Writes
# OUT_DIR/<lab>/compare.{txt,md,json}. Tonight's run becomes the kept one unless it regressed
# (a regression stays reported until it is fixed, or accepted with KVM_ACCEPT_FIGURES=yes).
# Exit status 3 when a lab regressed (the pipeline shows it as a warning), else 0.
set -uo pipefail
[ $# -eq 5 ] || { echo "usage: $0 PYTHON KEPT_DIR TONIGHT_DIR OUT_DIR ALLURE_RESULTS" >&2; exit 2; }
py=$1 kept=$2 tonight=$3 out=$4 allure=$5
status=0
mkdir -p "$kept" "$out"
for dir in "$tonight"/*/; do
  lab=$(basename "$dir")
  figures="$dir/kvm-figures.json"
  [ -f "$figures" ] || { echo "compare: $lab: no figures tonight"; continue; }
  mkdir -p "$out/$lab"
  rc=0
  if [ -f "$kept/$lab/kvm-figures.json" ]; then
    "$py" -m pytest_kvm compare "$kept/$lab/kvm-figures.json" "$figures" --out "$out/$lab" \
      --allure-result "$allure" --name "$lab" >"$out/$lab/compare.txt" 2>&1 || rc=$?
    cat "$out/$lab/compare.txt"
    [ "$rc" -ne 1 ] || status=3
    case $rc in
      0|1) ;;
      3) echo "compare: $lab: nothing could be judged (too few samples: KVM_SAMPLES); tonight's run is kept" ;;
      *) echo "compare: $lab: not compared (exit $rc); tonight's run is kept" ;;
    esac
  else
    echo "compare: $lab: no kept run yet; tonight's is kept for the next comparison" |
      tee "$out/$lab/compare.txt"
  fi
  if [ "$rc" -ne 1 ] || [ "${KVM_ACCEPT_FIGURES:-no}" = yes ]; then
    mkdir -p "$kept/$lab" && cp "$figures" "$kept/$lab/kvm-figures.json"
  fi
done
exit "$status"
