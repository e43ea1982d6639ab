#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs kiln with its pinned dependencies.
# Idempotent: re-installs only when pyproject.toml changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--help" ]]; then
  echo "usage: deploy/install.sh   # create .venv and pip install -e '.[test]'"
  exit 0
fi

PY="${KILN_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "install.sh: Python 3.11 is required (set KILN_PYTHON)" >&2; exit 2; }

if [[ ! -x .venv/bin/python ]]; then
  echo "install.sh: creating .venv with $("$PY" -c 'import sys; print(sys.executable)')"
  "$PY" -m venv .venv
fi
stamp=.venv/.kiln-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "install.sh: installing kiln and its pinned dependencies into .venv (from PyPI; the first time takes a minute or two)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # kiln is installed editable (its code runs from this checkout). Its packages sit side by side at the top level,
  # so setuptools maps them with an import finder and says so in a 10-line warning box that pip relays; the
  # layout is deliberate (pyproject.toml lists the packages), so that one warning is filtered by its text.
  PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e '.[test]'
  echo "$want" > "$stamp"
  echo "install.sh: kiln is installed: .venv/bin/kiln"
fi
