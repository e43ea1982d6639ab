#!/usr/bin/env bash
# Type-checks kiln's hand-written code with mypy --strict (settings in
# pyproject.toml's [tool.mypy]; generated kiln/pb is excluded). Run
# deploy/install.sh first: mypy and the stub packages are in the test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/mypy kiln kiln_platform natscallout datastore_svc deploy router runtime memcache_svc urlfetch_svc mail_svc images_svc cron_svc logs_svc identity_svc taskqueue_svc blobstore_svc console
