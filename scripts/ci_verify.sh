#!/bin/sh
# ci_verify.sh [--verify-only] SRC DST [REPORT] — the CI recipe of docs/ci.md as a script:
# pack SRC into DST (unless --verify-only), then verify DST against SRC and keep the JSON
# report (default verify-report.json). Exit status: verify's — 0 DST is SRC's conversion
# (identical or within tolerance), 3 differences (listed in the report), 1 could not run, 2
# usage. MOEPACK names the binary (default: moepack on PATH).
set -u
M=${MOEPACK:-moepack}
convert=true
if [ "${1:-}" = "--verify-only" ]; then
  convert=false
  shift
fi
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: ci_verify.sh [--verify-only] SRC DST [REPORT]" >&2
  exit 2
fi
src=$1 dst=$2 report=${3:-verify-report.json}
if $convert; then
  "$M" pack "$src" "$dst" -q || exit $?
fi
"$M" verify "$src" "$dst" --json > "$report"
rc=$?
case $rc in
  0) echo "ci_verify: $dst is the conversion of $src (report: $report)" ;;
  3) echo "ci_verify: $dst differs from the conversion of $src: see $report" >&2 ;;
  *) echo "ci_verify: verify could not run (exit $rc)" >&2 ;;
esac
exit $rc
