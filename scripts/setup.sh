#!/usr/bin/env bash
# Idempotent install of everything metastream needs into ./.venv (one interpreter for the gateway,
# the supervisor and the MetaGPT task processes, pinned by requirements/constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
step() { printf '==> [%s] %s\n' "$1" "$2"; }

step 1/5 "checking system tools (python 3.11, git, PostgreSQL)"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"need Python 3.11, found {sys.version}"'
if ! command -v git >/dev/null 2>&1; then
  step 1/5 "git missing: installing it with apt-get (MetaGPT needs the git binary)"
  apt-get update -qq && apt-get install -y -qq git
fi
# The tests start a real PostgreSQL server (initdb + pg_ctl in a temp dir); Debian keeps its
# binaries in /usr/lib/postgresql/<version>/bin, off the PATH.
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  step 1/5 "PostgreSQL missing: installing it with apt-get (the tests run a real server)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
else
  step 1/5 "PostgreSQL server binaries present"
fi

if [ ! -x .venv/bin/python ]; then
  step 2/5 "creating virtual environment .venv"
  "$PY" -m venv .venv
else
  step 2/5 "virtual environment .venv exists"
fi

step 3/5 "installing metastream and its dependencies (pinned)"
.venv/bin/pip install --progress-bar off -q -c requirements/constraints.txt \
  -r requirements/metagpt-runtime.txt -e '.[dev]' --config-settings editable_mode=compat 2>&1 | grep -v -E "is ignored: it is neither a file nor a directory|dependency resolver|requires websockets" || true
.venv/bin/python -c 'import fastapi, zmq, msgspec, psutil, sqlalchemy, uvicorn, psycopg, alembic'

step 4/5 "installing MetaGPT 0.8.2 (--no-deps: its own pins cannot resolve here)"
if ! .venv/bin/pip show -q metagpt >/dev/null 2>&1; then
  .venv/bin/pip install --progress-bar off -q --no-deps metagpt==0.8.2 2>&1 | grep -v "is ignored" || true
fi

step 5/5 "checking that MetaGPT imports"
tmp=$(mktemp -d)
mkdir -p "$tmp/config"
printf 'llm:\n  api_type: openai\n  model: offline\n  api_key: unused\n  base_url: http://127.0.0.1:9/v1\n' > "$tmp/config/config2.yaml"
(cd "$tmp" && METAGPT_PROJECT_ROOT="$tmp" "$OLDPWD/.venv/bin/python" -W ignore -c 'import metagpt.team' >/dev/null 2>&1) \
  || { echo "MetaGPT failed to import"; rm -rf "$tmp"; exit 1; }
rm -rf "$tmp"
echo "==> setup complete"
