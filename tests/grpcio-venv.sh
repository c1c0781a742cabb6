#!/usr/bin/env bash
# Makes target/grpcio-venv: Debian's python3 with grpcio and grpcio-tools
# from PyPI, the third-party CRI client of tests/cri_grpcio.rs. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/grpcio-venv
want="grpcio==1.85.1 grpcio-tools==1.85.1"
if [[ -x $venv/bin/python ]] && $venv/bin/python -c 'import grpc, grpc_tools' 2>/dev/null; then
  exit 0
fi
mkdir -p target
/usr/bin/python3 -m venv "$venv"
# shellcheck disable=SC2086
"$venv/bin/pip" install --quiet --disable-pip-version-check $want
