#!/usr/bin/env bash
# Installs Debian's chromium + chromium-driver for the dashboard's real-browser test
# (tests/test_browser.py). Nothing here downloads a browser from anywhere but the Debian archive.
# Idempotent: does nothing when both are already present.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

bash "$(dirname "$0")/apt-install.sh" chromium chromium-driver
