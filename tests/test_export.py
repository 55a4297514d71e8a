"""`modelmora export helm|kserve`, validated offline as a cluster would validate them.

- Kubernetes objects: `kubernetes-validate` (the API's JSON schemas, bundled) in strict mode, so an
  unknown field fails as it would with `kubectl apply --validate=strict`.
- KServe's objects: the openAPIV3Schema of KServe's CRDs (tests/fixtures/kserve/, source and
  commit in extract.py there), with jsonschema, plus a walk that refuses fields the schema does not
  name (the API server's strict field validation; plain jsonschema would let them through).
- The chart: linted and rendered by Helm itself, embedded as a library (helm-python-sdk): no helm
  binary, no cluster, no network.
Nothing here ran against a real cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from clirun import Result
from modelfactory import build_embedding_model

KUBERNETES = "1.35.0"
FIXTURES = Path(__file__).parent / "fixtures" / "kserve"
CliRun = Callable[..., Result]


@pytest.fixture
def locked_project(tmp_path: Path, cli_run: CliRun) -> Path:
    """Two locked models (one from the Hub's form, for KServe names) and a gRPC port."""
    build_embedding_model(tmp_path / "tiny-bert")
    root = tmp_path / "demo"
    root.mkdir()
    (root / "modelmora.toml").write_text(
        '[project]\nname = "Demo_Project"\n\n[serve]\ngrpc_port = 8001\n\n'
        '[models.bert]\nsource = "../tiny-bert"\ntask = "embedding"\n\n'
        '[models.Other_Bert]\nsource = "../tiny-bert"\ntask = "embedding"\n'
    )
    cli_run("lock", cwd=root)
    return root


def validate_kubernetes(document: Mapping[str, Any]) -> None:
    kubernetes_validate.validate(dict(document), KUBERNETES, strict=True)


def documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


# --- Helm ---------------------------------------------------------------------------------------


@pytest.fixture
def chart(locked_project: Path, cli_run: CliRun) -> Path:
    result = cli_run("export", "helm", "-o", "chart", cwd=locked_project)
    assert "Wrote a Helm chart" in result.stdout
    assert result.stderr.startswith("warning: Other_Bert, bert: from a local folder, which")
    return locked_project / "chart"


def render(chart: Path, values: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The chart's objects by kind, as `helm template demo CHART` prints them."""
    with helm.Chart.load(chart) as loaded:
        rendered = loaded.render(values=dict(values or {}), name="demo", namespace="ml")
    objects = [document for text in rendered.values() for document in documents(text)]
    by_kind = {document["kind"]: document for document in objects}
    assert len(by_kind) == len(objects)
    return by_kind


VARIANTS = {
    "default": ({}, {"ConfigMap", "Deployment", "Service"}),
    "statefulset": ({"workload": "StatefulSet"}, {"ConfigMap", "StatefulSet", "Service"}),
    "shared read-only cache": (
        {"cache": {"existingClaim": "models"}, "apiKey": {"secretName": "keys"}},
        {"ConfigMap", "Deployment", "Service"},
    ),
    "autoscaled on queue depth": (
        {"autoscaling": {"enabled": True, "queueDepth": {"enabled": True}}},
        {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"},
    ),
}


def test_the_chart_lints_clean(chart: Path) -> None:
    report = helm.lint(chart, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []  # 1: "icon is recommended"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_valid_kubernetes(chart: Path, variant: str) -> None:
    values, kinds = VARIANTS[variant]
    objects = render(chart, values)
    assert set(objects) == kinds
    for document in objects.values():
        validate_kubernetes(document)


def test_the_pod_installs_then_serves_frozen_offline(chart: Path, locked_project: Path) -> None:
    objects = render(chart, {"hfToken": {"secretName": "hf"}, "apiKey": {"secretName": "keys"}})
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (install,) = pod["initContainers"]
    assert install["args"][0].endswith("&& exec modelmora install --frozen")
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in (
        install["env"]
    )
    (server,) = pod["containers"]
    assert server["command"] == ["modelmora"]
    args = "serve --host 0.0.0.0 --port 8000 --frozen --offline --grpc-port 8001"
    assert server["args"] == args.split()
    assert {"name": "MODELMORA_HOME", "value": "/cache"} in server["env"]
    key = {"secretKeyRef": {"name": "keys", "key": "api-key"}}
    assert {"name": "MODELMORA_API_KEY", "valueFrom": key} in server["env"]
    assert server["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert {"name": "cache", "mountPath": "/cache", "readOnly": True} in server["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    ports = objects["Service"]["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in ports] == [("http", 8000), ("grpc", 8001)]
    data = objects["ConfigMap"]["data"]
    assert data["modelmora.toml"] == (locked_project / "modelmora.toml").read_text()
    assert data["modelmora.lock"] == (locked_project / "modelmora.lock").read_text()


def test_a_shared_cache_is_mounted_read_only_and_not_installed_into(chart: Path) -> None:
    pod = render(chart, {"cache": {"existingClaim": "models"}})["Deployment"]["spec"]["template"]
    (install,) = pod["spec"]["initContainers"]
    assert "modelmora install" not in install["args"][0]
    claim = {"claimName": "models", "readOnly": True}
    assert {"name": "cache", "persistentVolumeClaim": claim} in pod["spec"]["volumes"]


def test_a_statefulset_keeps_its_cache_on_a_claim(chart: Path) -> None:
    values = {"workload": "StatefulSet", "cache": {"size": "20Gi", "storageClass": "fast"}}
    objects = render(chart, values)
    (claim,) = objects["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    volumes = objects["StatefulSet"]["spec"]["template"]["spec"]["volumes"]
    assert "cache" not in [volume["name"] for volume in volumes]
    with pytest.raises(helm.HelmError, match="use workload: Deployment"):
        render(chart, {"workload": "StatefulSet", "cache": {"existingClaim": "models"}})


@pytest.mark.parametrize(
    "values",
    [{"workload": "Deploy"}, {"replicas": 0}, {"autoscaling": {"maxReplicas": "many"}}],
    ids=["workload", "replicas", "autoscaling"],
)
def test_helm_refuses_values_that_break_the_schema(chart: Path, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError, match="values don't meet the specifications"):
        render(chart, values)


def test_the_hpa_scales_on_cpu_and_queue_depth(chart: Path) -> None:
    values = {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 9}}
    hpa = render(chart, values)["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 9)
    assert [metric["type"] for metric in hpa["metrics"]] == ["Resource"]
    values["autoscaling"]["queueDepth"] = {"enabled": True, "averageValue": "8"}
    hpa = render(chart, values)["HorizontalPodAutoscaler"]["spec"]
    pods = hpa["metrics"][1]["pods"]
    assert pods["metric"]["name"] == "modelmora_queue_depth"
    assert pods["target"] == {"type": "AverageValue", "averageValue": "8"}


def test_exports_are_deterministic(locked_project: Path, cli_run: CliRun) -> None:
    def exported() -> dict[str, bytes]:
        cli_run("export", "helm", "-o", "out/helm", "--statefulset", cwd=locked_project)
        cli_run("export", "kserve", "-o", "out/kserve", cwd=locked_project)
        out = locked_project / "out"
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    first = exported()
    assert first == exported() and len(first) == 15


def test_a_stale_lock_is_one_line(locked_project: Path, cli_run: CliRun) -> None:
    manifest = locked_project / "modelmora.toml"
    manifest.write_text(manifest.read_text().replace("[models.Other_Bert]", "[models.third]"))
    result = cli_run("export", "helm", cwd=locked_project, code=1)
    assert result.stderr.startswith("error: modelmora.lock is out of date")


# --- KServe -------------------------------------------------------------------------------------


def crd_schema(kind: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((FIXTURES / f"{kind}.schema.json").read_text())
    return record


def unknown_fields(value: Any, schema: Mapping[str, Any], where: str = "") -> Iterator[str]:
    """Fields the schema does not declare, where it does not keep unknown ones."""
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(item, extra, f"{where}.{key}")
            elif properties is not None or extra is False:
                yield f"{where}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{where}[{index}]")


def validate_crd(document: Mapping[str, Any]) -> None:
    record = crd_schema(document["kind"])
    assert document["apiVersion"] == f"{record['group']}/{record['version']}"
    jsonschema.Draft4Validator(record["openAPIV3Schema"]).validate(document)
    assert list(unknown_fields(document, record["openAPIV3Schema"])) == []
    validate_kubernetes({"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]})


@pytest.mark.parametrize("scale_to_zero", [False, True])
def test_kserve_objects_match_kserve_crds(
    locked_project: Path, cli_run: CliRun, scale_to_zero: bool
) -> None:
    flags = ["--scale-to-zero"] if scale_to_zero else []
    cli_run("export", "kserve", "-o", "kserve", *flags, cwd=locked_project)
    out = locked_project / "kserve"
    assert sorted(p.name for p in out.iterdir()) == [
        "clusterservingruntime.yaml",
        "configmap.yaml",
        "inferenceservice-bert.yaml",
        "inferenceservice-other-bert.yaml",
    ]
    (config_map,) = documents((out / "configmap.yaml").read_text())
    validate_kubernetes(config_map)
    (runtime,) = documents((out / "clusterservingruntime.yaml").read_text())
    validate_crd(runtime)
    (container,) = runtime["spec"]["containers"]
    pod = {"containers": [container], "volumes": runtime["spec"]["volumes"]}
    validate_kubernetes({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod})
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert container["args"][0].endswith(
        "&& modelmora install --frozen && exec modelmora serve --host 0.0.0.0 --port 8080 "
        "--frozen --offline"
    )
    (service,) = documents((out / "inferenceservice-other-bert.yaml").read_text())
    validate_crd(service)
    predictor = service["spec"]["predictor"]
    assert predictor["minReplicas"] == (0 if scale_to_zero else 1)
    assert predictor["model"]["env"] == [{"name": "MODELMORA_PRELOAD", "value": "Other_Bert"}]
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"] == "modelmora-demo-project"
    mode = service["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    assert mode == ("Serverless" if scale_to_zero else None)


def test_the_crd_check_catches_a_wrong_field() -> None:
    """The strict walk is what makes the CRD check worth having: a typo does not pass."""
    service = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
               "metadata": {"name": "x"}, "spec": {"predictor": {"minReplica": 0}}}  # fmt: skip
    with pytest.raises(AssertionError, match=r"predictor\.minReplica"):
        validate_crd(service)
    service["spec"]["predictor"] = {"minReplicas": "zero"}
    with pytest.raises(jsonschema.ValidationError):
        validate_crd(service)
