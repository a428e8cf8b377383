#!/usr/bin/env bash
# Create or reuse ./.venv with everything bratslab needs.
#
# torch goes in first and is then pinned as a constraint, because any later resolver step that
# sees an unpinned torch (or a dependency wanting a newer one) would pull a multi-GB CUDA build.
# TORCH_SPEC overrides the build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet)

want=$(echo "$TORCH_SPEC" | sed -n 's/^torch==\([^ ]*\).*/\1/p')
have=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ -z "$have" ] || { [ -n "$want" ] && [ "$have" != "$want" ]; }; then
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "${pip[@]}" $TORCH_SPEC
fi
torch_version=$(.venv/bin/python -c 'import torch; print(torch.__version__)')

# Reinstall the project only when its dependency list changed (a stamp of pyproject.toml).
stamp=.venv/.bratslab-stamp
digest=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest $torch_version" ]; then
  echo "[setup] installing bratslab and its dependencies (torch pinned to $torch_version)"
  constraints=$(mktemp)
  echo "torch==$torch_version" >"$constraints"
  "${pip[@]}" -c "$constraints" -e ".[dev,postgres,s3]"
  rm -f "$constraints"
  after=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
  if [ "$after" != "$torch_version" ]; then
    echo "[setup] ERROR: torch changed from $torch_version to $after during install" >&2
    exit 1
  fi
  echo "$digest $torch_version" >"$stamp"
fi
echo "[setup] .venv ready (torch $torch_version)"
