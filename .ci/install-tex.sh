#!/usr/bin/env bash
# Installs Debian's pdflatex (texlive-latex-base, about 40 MB to download) so the test of
# `harness leaderboard --format latex` (tests/test_tables.py) compiles the table it writes.
# Idempotent: does nothing when pdflatex is already present. Measured on a 2-core VM: about
# 2 minutes, most of it dpkg building the formats.
set -euo pipefail

if command -v pdflatex >/dev/null 2>&1; then
    exit 0
fi

bash "$(dirname "$0")/apt-install.sh" texlive-latex-base
