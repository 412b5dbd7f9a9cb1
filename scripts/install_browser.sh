#!/usr/bin/env bash
# Installs Debian's headless Chromium, which tests/test_report.py uses to render the build report
# (without it those tests skip, and fail under CI=true). A system package: run it yourself, as root,
# or through `.ci/run` / `make test WITH_BROWSER=1`; scripts/setup.sh never does.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: needs root and apt-get; install Chromium yourself (Debian/Ubuntu:" >&2
    echo "  apt-get install -y --no-install-recommends chromium)" >&2
    exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
     DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    echo "install_browser: installed chromium"
else
    tail -n 5 "$log" >&2
    echo "install_browser: apt-get could not install chromium" >&2
    exit 1
fi
