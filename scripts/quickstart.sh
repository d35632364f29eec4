#!/bin/sh
# quickstart.sh demo|test — installs what is missing (Debian, as root), builds, then runs
# the demo job or the whole test suite. README's two quick-start commands call this.
set -eu
cd "$(dirname "$0")/.."
mode=${1:-demo}

pkgs="build-essential meson ninja-build pkg-config libzstd-dev libcjson-dev libxxhash-dev liburing-dev libcmocka-dev openmpi-bin libopenmpi-dev python3-numpy python3-setuptools python3-pip"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "quickstart: installing:$missing"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

werror=false
[ "${CI:-}" = "true" ] && werror=true
# the Python tests need numpy: python3-numpy is Debian's, so when the python3 first on PATH
# (pyenv, a venv) lacks it, the binding is built and tested with Debian's interpreter
py=python3
if ! python3 -c 'import numpy' 2>/dev/null && /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
  py=/usr/bin/python3
fi
if [ ! -f build/build.ninja ]; then
  meson setup build -Dwerror=$werror -Dpython=$py
fi
ninja -C build

case "$mode" in
  demo)
    exec build/moepack demo ;;
  test)
    exec meson test -C build --print-errorlogs --num-processes 2 ;;
  *)
    echo "usage: scripts/quickstart.sh demo|test" >&2; exit 2 ;;
esac
