#!/usr/bin/env bash
# Lints kiln's contracts with buf (STANDARD rules) and checks their formatting.
set -euo pipefail
cd "$(dirname "$0")/../proto"
BIN="$(bash ../deploy/tools.sh)"
"$BIN/buf" lint
"$BIN/buf" format --diff --exit-code
echo "protos: lint and format clean"
