#!/usr/bin/env bash
# Installs kiln (if needed) and runs the guestbook with `kiln dev` on the embedded
# datastore: http://127.0.0.1:8080/ . Extra arguments go to `kiln dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec .venv/bin/kiln dev examples/guestbook "$@"
