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
# -W ignore: before numpy is installed, torch warns "Failed to initialize NumPy" (harmless here).
torch_version=$(.venv/bin/python -W ignore -c 'import torch; print(torch.__version__)')

# Reinstall the project only when its dependency list changed (a stamp of pyproject.toml).
stamp=.venv/.bratslab-stamp
digest=$(cat pyproject.toml scripts/setup-venv.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest $torch_version" ]; then
  echo "[setup] installing bratslab and its dependencies (torch pinned to $torch_version)"
  constraints=$(mktemp)
  echo "torch==$torch_version" >"$constraints"
  "${pip[@]}" -c "$constraints" -e ".[dev,postgres,s3]"
  rm -f "$constraints"
  # Test-only reference for `evaluate --metric panoptica`: the organisers' own package and
  # panoptica, installed without their pins (numpy<2.3, pandas<3, rich<14 would downgrade what
  # bratslab runs on; panoptica works on the newer ones, which its agreement test checks). Their
  # other needs go in with everything already installed held where it is.
  held=$(mktemp)
  .venv/bin/python -m pip freeze | grep -iE '^(numpy|pandas|rich|scipy|typer|torch|nibabel)==' >"$held"
  "${pip[@]}" -c "$held" 'connected-components-3d>=3.12.3,<4' 'plotly>=5.16.1,<6' \
    'ruamel.yaml>=0.18.6,<1' 'scikit-image>=0.22,<1' 'SimpleITK>=2.2.2,<3' tqdm
  "${pip[@]}" --no-deps 'panoptica==2.1.7' 'brats-evaluation==0.0.10'
  rm -f "$held"
  after=$(.venv/bin/python -W ignore -c 'import torch; print(torch.__version__)')
  if [ "$after" != "$torch_version" ]; then
    echo "[setup] ERROR: torch changed from $torch_version to $after during install" >&2
    exit 1
  fi
  echo "$digest $torch_version" >"$stamp"
fi
echo "[setup] .venv ready (torch $torch_version)"
