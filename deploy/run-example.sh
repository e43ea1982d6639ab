#!/usr/bin/env bash
# Installs kiln (if needed) and runs the guestbook example, App Engine's canonical guestbook
# (webapp2, Jinja2, ndb, users; examples/guestbook), with `kiln dev` on the embedded datastore:
# http://127.0.0.1:8080/ . The first start installs its libraries and Google's SDK once (cached in
# ~/.cache/kiln). Extra arguments go to `kiln dev`, e.g. --port 8081 or --clear-datastore.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec .venv/bin/kiln dev examples/guestbook "$@"
