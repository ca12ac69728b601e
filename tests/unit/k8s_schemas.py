"""Offline validation of Kubernetes objects with real validators (no API server can run here).

- Core kinds (ConfigMap, Service, Deployment) and the pod templates inside a LeaderWorkerSet: ``kubernetes-validate``
  (it carries the API's JSON schemas per Kubernetes release) in strict mode (unknown fields are errors, as
  ``kubectl apply``'s default field validation makes them), for the oldest and the newest release checked here.
- LeaderWorkerSet: the CRD's OpenAPI v3 schema of a pinned LWS release (``tests/data/k8s/``, provenance inside),
  validated with ``jsonschema``; every object that lists its properties is closed (strict field validation), and
  ``x-kubernetes-list-map-keys`` (e.g. container names, env names) must be unique as the API server requires.

Server-side dry-run (``kubectl apply --dry-run=server``) would go further (admission, the LWS webhook); it needs a
cluster.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

LWS_SCHEMA_FILE = Path(__file__).parent.parent / "data" / "k8s" / "lws-v0.10.0-leaderworkerset.schema.json"
K8S_VERSIONS = ("1.30.0", "1.37.0")
"""Kubernetes releases whose API schemas the objects must satisfy (LWS v0.10 supports both ends)."""
LWS_GROUP_VERSION = "leaderworkerset.x-k8s.io/v1"


def _closed(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _unique_map_keys(validator: Any, keys: list[str], instance: Any, schema: Any) -> Any:
    if not isinstance(instance, list):
        return
    seen = set()
    for item in instance:
        key = tuple(item.get(k) for k in keys) if isinstance(item, dict) else None
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate {dict(zip(keys, key or ()))} in a list keyed by {keys}")
        seen.add(key)


@lru_cache(maxsize=1)
def lws_validator() -> Any:
    """A validator for LeaderWorkerSet objects from the stored CRD schema."""
    data = json.loads(LWS_SCHEMA_FILE.read_text())
    cls = jsonschema.validators.extend(jsonschema.Draft7Validator,
                                       {"x-kubernetes-list-map-keys": _unique_map_keys})
    return cls(_closed(data["schema"]))


def lws_source() -> dict[str, str]:
    """Where the stored LeaderWorkerSet schema comes from (repository, release, commit, path, sha256)."""
    return json.loads(LWS_SCHEMA_FILE.read_text())["source"]  # type: ignore[no-any-return]


def validate(obj: dict[str, Any]) -> None:
    """Raise on the first schema violation of ``obj`` (a core kind or a LeaderWorkerSet)."""
    if obj["kind"] == "LeaderWorkerSet":
        assert obj["apiVersion"] == LWS_GROUP_VERSION, obj["apiVersion"]
        lws_validator().validate(obj)
        lwt = obj["spec"]["leaderWorkerTemplate"]
        for key in ("leaderTemplate", "workerTemplate"):
            if key in lwt:
                validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{key.lower()}"},
                          "template": lwt[key]})
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
