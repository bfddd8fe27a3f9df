#!/usr/bin/env bash
# Install everything the tests need on Debian 12, then run every check and the test suite.
# Works as root (no sudo needed) and as a normal user with sudo. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=""

# need_apt PKG...: install the Debian packages that are not installed yet (apt-get update once).
need_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    APT_UPDATED=1
  fi
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Each area of the suite says what it needs in tests/setup/*.sh (sourced, so need_apt is shared).
for setup in tests/setup/*.sh; do
  # shellcheck source=/dev/null
  source "$setup"
done

(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
