#!/usr/bin/env bash
# Generates Go code from proto/ alone (protoc from grpcio-tools + the pinned Go
# plugins) and builds dsclient into OUT_DIR (default: a temp dir). Prints the binary.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${1:-$(mktemp -d)}"
BIN="$(bash "$ROOT/deploy/tools.sh")"
PY="$ROOT/.venv/bin/python"
WKT="$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
rm -rf "$HERE/kiln"
(cd "$ROOT/proto" && "$PY" -m grpc_tools.protoc -I. -I"$WKT" \
  --plugin=protoc-gen-go="$BIN/protoc-gen-go" --go_out="$HERE" --go_opt=module=kiln.dev/gen \
  --plugin=protoc-gen-go-grpc="$BIN/protoc-gen-go-grpc" --go-grpc_out="$HERE" --go-grpc_opt=module=kiln.dev/gen \
  $(find kiln -name '*.proto' | sort))
(cd "$HERE" && go mod tidy >&2 && go vet ./... >&2 && go build -o "$OUT/dsclient" ./dsclient >&2)
echo "$OUT/dsclient"
