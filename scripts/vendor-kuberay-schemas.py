"""Extract the openAPIV3Schema of KubeRay's RayCluster and RayJob CRDs for the manifest tests.

    python scripts/vendor-kuberay-schemas.py PATH/TO/kuberay [--tag v1.7.0]

reads ``ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml`` at the given tag of a
KubeRay git checkout (https://github.com/ray-project/kuberay) and writes the ``v1`` schema of
each as gzipped JSON to ``tests/data/kuberay/<kind>.v1.json.gz`` (the CRD files are ~1 MB of
YAML each; the schemas compress to a few tens of KB). ``tests/unit/infra/test_manifests.py``
validates ``infra/kuberay/*.yaml`` against them, as ``kubeconform`` does with its CRD catalog.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests/data/kuberay"
CRDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path, help="a KubeRay git checkout (or bare repository)")
    ap.add_argument("--tag", default="v1.7.0")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for kind, plural in CRDS.items():
        path = f"ray-operator/config/crd/bases/ray.io_{plural}.yaml"
        text = subprocess.run(
            ["git", "-C", str(args.repo), "show", f"{args.tag}:{path}"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        crd = yaml.safe_load(text)
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = version["schema"]["openAPIV3Schema"]
        doc = {"source": f"kuberay {args.tag} {path}", "schema": schema}
        dst = OUT / f"{kind}.v1.json.gz"
        with gzip.GzipFile(dst, "wb", mtime=0) as f:
            f.write(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        print(f"{dst}: {dst.stat().st_size} bytes")


if __name__ == "__main__":
    main()
