# shlib.sh — what the shell tests share (sourced after they set $tmp, a scratch folder):
# ok/bad count and print results, expect runs a command (stdout in $tmp/out, stderr in
# $tmp/err) and checks its exit status. $fails counts the failures.
fails=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1" >&2; sed 's/^/  stderr: /' "$tmp/err" | head -5 >&2; fails=$((fails + 1)); }
# expect CODE DESCRIPTION -- COMMAND...: the command exits with CODE
expect() {
  want=$1 what=$2
  shift 3
  "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  [ "$got" = "$want" ] && ok "$what" || bad "$what: '$*' exited $got, expected $want"
}
