#!/usr/bin/env bash
# Reproduce one experiment end to end: scripts/reproduce.sh NAME [--tiny] [--parallel N].
# Thin on purpose: the logic lives in `adaptive reproduce` (adaptive/reproduce.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec adaptive reproduce "$@"
