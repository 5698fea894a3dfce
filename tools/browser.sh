#!/usr/bin/env bash
# The real browser the review page's test drives: Debian's chromium and chromium-driver, installed from Debian's
# package registry when missing (as root, or through sudo).  Without either, it says so and the test skips
# (outside CI; in CI, where CI is set, the test fails instead).
set -euo pipefail
command -v chromedriver > /dev/null && command -v chromium > /dev/null && exit 0
if [ "$(id -u)" = 0 ]; then as_root=(); elif command -v sudo > /dev/null; then as_root=(sudo -n); else
    echo "tools/browser.sh: chromium and chromium-driver are missing and this user cannot install them" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq chromium chromium-driver > /dev/null
