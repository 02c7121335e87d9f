"""Every RayCluster and RayJob under cluster/kuberay/ validates against KubeRay v1.7.0's CRD
schema (the `v1` openAPIV3Schema the API server checks on `kubectl apply`), closed against
unknown fields, so a misspelt field fails here instead of being pruned silently by the API
server. The schemas are vendored in tests/cluster/schemas/ (README there). Non-Ray manifests
(the claim, the ConfigMap) are checked for shape in test_manifests.py.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "kuberay-v1.7.0"
SCHEMA_FILES = {"RayCluster": "raycluster.v1.schema.json.gz", "RayJob": "rayjob.v1.schema.json.gz"}


def closed(schema):
    """A copy of an OpenAPI v3 schema with `additionalProperties: false` wherever it lists
    `properties` and leaves `additionalProperties` unset, except under
    `x-kubernetes-preserve-unknown-fields: true` (where the API server keeps unknown fields)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("x-kubernetes-preserve-unknown-fields") is True:
        return copy.deepcopy(schema)
    out = {key: closed(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


@functools.cache
def raw_schema(kind: str) -> dict:
    with gzip.open(SCHEMAS / SCHEMA_FILES[kind], "rt") as f:
        return json.load(f)


@functools.cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    """CRD schemas are OpenAPI v3 (a Draft 4 dialect); `format` is not checked."""
    schema = closed(raw_schema(kind))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def errors(doc: dict) -> list[str]:
    found = validator(doc["kind"]).iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in found]


def ray_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in SCHEMA_FILES:
                docs.append((f"{path.name}:{doc['kind']}", doc))
    return docs


RAY_DOCS = ray_docs()


def test_there_are_ray_manifests():
    kinds = {doc["kind"] for _, doc in RAY_DOCS}
    assert kinds == set(SCHEMA_FILES)


def test_vendored_schemas_are_kuberays_v1():
    for kind in SCHEMA_FILES:
        schema = raw_schema(kind)
        assert schema["type"] == "object"
        assert {"apiVersion", "kind", "metadata", "spec", "status"} <= set(schema["properties"])
    # Fields these manifests rely on exist in this release (authOptions.secretName: v1.6).
    cluster_spec = raw_schema("RayCluster")["properties"]["spec"]["properties"]
    assert "secretName" in cluster_spec["authOptions"]["properties"]


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=[name for name, _ in RAY_DOCS])
def test_manifest_validates_against_the_crd(name, doc):
    assert doc["apiVersion"] == "ray.io/v1", name
    assert errors(doc) == [], name


def _get(doc, *path):
    node = doc
    for key in path:
        node = node[key]
    return node


def _cluster_spec(doc):
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _misspell_ray_start_params(doc):
    head = _cluster_spec(doc)["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")


def _misspell_container_field(doc):
    container = _cluster_spec(doc)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")


def _misspell_top_level_spec_field(doc):
    spec = doc["spec"]
    key = "enableInTreeAutoscaling" if doc["kind"] == "RayCluster" else "shutdownAfterJobFinishes"
    spec[key[:-1]] = spec.pop(key)


def _replicas_as_text(doc):
    _cluster_spec(doc)["workerGroupSpecs"][0]["replicas"] = "two"


def _bad_quantity(doc):
    container = _cluster_spec(doc)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["ephemeral-storage"] = "120 GB"


def _env_from_misspelt_ref(doc):
    container = _cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = container["env"][0]
    env["valueFrom"] = {"configMapRef": env["valueFrom"]["configMapKeyRef"]}


def _volume_size_limit_misspelt(doc):
    pod = _cluster_spec(doc)["headGroupSpec"]["template"]["spec"]
    for volume in pod["volumes"]:
        if "sizeLimit" in volume.get("emptyDir", {}):
            volume["emptyDir"]["sizelimit"] = volume["emptyDir"].pop("sizeLimit")


def _auth_mode_unknown(doc):
    _cluster_spec(doc)["authOptions"]["mode"] = "tokens"


BREAKAGES = [
    _misspell_ray_start_params,
    _misspell_container_field,
    _misspell_top_level_spec_field,
    _replicas_as_text,
    _bad_quantity,
    _env_from_misspelt_ref,
    _volume_size_limit_misspelt,
    _auth_mode_unknown,
]


@pytest.mark.parametrize("breakage", BREAKAGES)
@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_schema_rejects_a_broken_manifest(breakage, kind):
    """The validation above can fail: a copy with a misspelt field or a wrong type does not
    pass (it passed before the change)."""
    name, doc = next((n, d) for n, d in RAY_DOCS if d["kind"] == kind)
    broken = copy.deepcopy(doc)
    breakage(broken)
    assert broken != doc
    assert errors(doc) == []
    assert errors(broken), f"{name}: {breakage.__name__} was accepted"


def test_rayjob_misspelt_entrypoint_field_is_rejected():
    _, doc = next((n, d) for n, d in RAY_DOCS if d["kind"] == "RayJob")
    broken = copy.deepcopy(doc)
    broken["spec"]["entryPoint"] = broken["spec"].pop("entrypoint")
    assert errors(broken)


def test_closed_leaves_preserve_unknown_fields_open():
    schema = {
        "type": "object",
        "properties": {
            "strict": {"type": "object", "properties": {"a": {"type": "string"}}},
            "open": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {"type": "string"}},
            },
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    strict = closed(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["strict"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["open"]
    assert strict["properties"]["map"]["additionalProperties"] == {"type": "string"}
    check = jsonschema.Draft4Validator(strict)
    assert check.is_valid({"open": {"a": "x", "b": 1}, "map": {"k": "v"}})
    assert not check.is_valid({"strict": {"a": "x", "b": 1}})
    assert not check.is_valid({"other": 1})
    # The input is not modified.
    assert "additionalProperties" not in schema
