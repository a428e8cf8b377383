"""infra/ manifests validated against their schemas, strictly, as ``kubeconform -strict`` does.

- KubeRay's ``RayCluster`` and ``RayJob``: the ``openAPIV3Schema`` of KubeRay's own CRDs
  (vendored gzipped in ``tests/data/kuberay`` by ``scripts/vendor-kuberay-schemas.py``).
  Strict: an object schema that lists its properties admits no others (a misspelled field is an
  error, where the API server would silently prune it).
- Kubernetes' own kinds (``NetworkPolicy``...): ``kubernetes-validate``'s bundled strict schemas.
- The cluster launcher's ``aws.yaml``: the schema Ray ships for ``ray up``.
"""

from __future__ import annotations

import copy
import gzip
import json
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
SCHEMAS = REPO / "tests" / "data" / "kuberay"
KUBERAY = REPO / "infra" / "kuberay"
K8S_VERSION = "1.33"


def _strict(schema: dict) -> dict:
    """Close every object schema that lists its properties (``additionalProperties: false``),
    except where Kubernetes keeps unknown fields on purpose."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for item in schema:
            _strict(item)
    return schema


@cache
def _crd_validator(kind: str) -> jsonschema.Validator:
    with gzip.open(SCHEMAS / f"{kind}.v1.json.gz") as f:
        schema = json.load(f)["schema"]
    return jsonschema.Draft7Validator(_strict(schema))


def _crd_errors(doc: dict) -> list[str]:
    v = _crd_validator(doc["kind"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def _manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}", doc))
    return out


@pytest.mark.parametrize("where,doc", _manifests(), ids=lambda x: x if isinstance(x, str) else "")
def test_manifest_matches_its_schema(where, doc):
    assert doc["apiVersion"] and doc["metadata"]["name"], where
    if doc["apiVersion"] == "ray.io/v1":
        assert _crd_errors(doc) == [], where
    else:
        import kubernetes_validate

        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error


def test_the_strict_crd_check_catches_a_misspelled_and_a_mistyped_field():
    cluster = next(d for w, d in _manifests() if d["kind"] == "RayCluster")
    bad = copy.deepcopy(cluster)
    bad["spec"]["authOptions"]["mod"] = bad["spec"]["authOptions"].pop("mode")
    bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    errors = _crd_errors(bad)
    assert any("authOptions" in e and "'mod'" in e for e in errors), errors
    assert any("maxReplicas" in e for e in errors), errors
    wrong_mode = copy.deepcopy(cluster)
    wrong_mode["spec"]["authOptions"]["mode"] = "password"
    assert any("authOptions.mode" in e for e in _crd_errors(wrong_mode))


def test_kubernetes_kinds_are_checked_strictly_too():
    import kubernetes_validate

    policy = next(d for w, d in _manifests() if d["kind"] == "NetworkPolicy")
    bad = copy.deepcopy(policy)
    bad["spec"]["ingres"] = bad["spec"].pop("ingress")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_cluster_launcher_config_matches_rays_schema():
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    launcher = yaml.safe_load((REPO / "infra" / "ray-cluster" / "aws.yaml").read_text())
    jsonschema.validate(launcher, schema)
    bad = dict(launcher, max_worker=8)  # misspelled top-level key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
