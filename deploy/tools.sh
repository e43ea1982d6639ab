#!/usr/bin/env bash
# Installs the pinned Go tools kiln's tests and checks use, into
# ${KILN_TOOLS_BIN:-~/.cache/kiln/bin}, from the Go module proxy:
#   protoc-gen-go, protoc-gen-go-grpc  (generate a Go client from proto/ in the contract test)
#   grpcurl                            (list services by reflection, call health checks)
#   buf                                (lint the .proto files)
# Idempotent: a tool is rebuilt only when its pinned version changes. Prints the bin dir.
set -euo pipefail
if [[ "${1:-}" == "--help" ]]; then sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi

BIN="${KILN_TOOLS_BIN:-$HOME/.cache/kiln/bin}"
mkdir -p "$BIN"
command -v go >/dev/null || { echo "tools.sh: Go is required" >&2; exit 1; }

TOOLS=(
  "protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12"
  "protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2"
  "grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4"
  "buf github.com/bufbuild/buf/cmd/buf@v1.61.0"
)
for entry in "${TOOLS[@]}"; do
  name="${entry%% *}"; pkg="${entry#* }"
  stamp="$BIN/.$name.version"
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$pkg" ]]; then continue; fi
  if [[ -n "${KILN_TOOLS_ONLY:-}" && " $KILN_TOOLS_ONLY " != *" $name "* ]]; then continue; fi
  GOBIN="$BIN" GOFLAGS=-mod=mod go install "$pkg" >&2
  echo "$pkg" > "$stamp"
done
echo "$BIN"
