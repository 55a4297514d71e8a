"""`modelmora export kserve`: a ClusterServingRuntime and an InferenceService per locked model.

KServe starts the runtime's container for each InferenceService; ours copies the project's files
from a ConfigMap, installs the lock into the pod's cache, and serves the Open Inference Protocol
(REST, `/v2`) on KServe's port, the InferenceService's model preloaded. Scale to zero needs
KServe's Serverless mode (Knative); RawDeployment keeps at least one replica.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmora import __version__
from modelmora.errors import ModelmoraError
from modelmora.export import (
    CACHE_DIR,
    CONFIG_DIR,
    PROJECT_DIR,
    RUN_AS,
    Deployable,
    cache_size,
    kubernetes_name,
    serve_args,
    write_yaml,
)

KSERVE_PORT = 8080
"""The port KServe (and Knative) sends a predictor's traffic to."""
MODEL_FORMAT = "modelmora"


@dataclass(frozen=True)
class KServeOptions:
    image: str = f"modelmora:{__version__}"
    scale_to_zero: bool = False
    max_replicas: int = 4


def runtime_name(project: Deployable) -> str:
    return kubernetes_name(f"modelmora-{project.name}")


def config_map(project: Deployable) -> dict[str, Any]:
    """The project's modelmora.toml and modelmora.lock, mounted into every predictor."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{runtime_name(project)}-project", "labels": _labels(project)},
        "data": {"modelmora.toml": project.manifest_text, "modelmora.lock": project.lock_text},
    }


def serving_runtime(project: Deployable, options: KServeOptions) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime",
        "metadata": {"name": runtime_name(project), "labels": _labels(project)},
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(KSERVE_PORT),
                "prometheus.kserve.io/path": "/metrics",
            },
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2"],
            "containers": [_container(project, options)],
            "volumes": [
                {
                    "name": "project-files",
                    "configMap": {"name": config_map(project)["metadata"]["name"]},
                },
                {"name": "project", "emptyDir": {}},
                {"name": "cache", "emptyDir": {"sizeLimit": cache_size(project.model_bytes)}},
            ],
        },
    }


def _container(project: Deployable, options: KServeOptions) -> dict[str, Any]:
    start = (
        f"cp {CONFIG_DIR}/modelmora.toml {CONFIG_DIR}/modelmora.lock {PROJECT_DIR}/"
        " && modelmora install --frozen"
        f" && exec modelmora {shlex.join(serve_args(KSERVE_PORT, 0))}"
    )
    return {
        "name": "kserve-container",
        "image": options.image,
        "command": ["sh", "-c"],
        "args": [start],
        "workingDir": PROJECT_DIR,
        "env": [
            {"name": "MODELMORA_HOME", "value": CACHE_DIR},
            _secret_env("MODELMORA_API_KEY", project, "api-key"),
            _secret_env("HF_TOKEN", project, "hf-token"),
        ],
        "ports": [{"name": "http1", "containerPort": KSERVE_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/health", "port": KSERVE_PORT}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": KSERVE_PORT}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS},
        "volumeMounts": [
            {"name": "project-files", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "project", "mountPath": PROJECT_DIR},
            {"name": "cache", "mountPath": CACHE_DIR},
        ],
    }


def _secret_env(variable: str, project: Deployable, key: str) -> dict[str, Any]:
    """From the Secret `RUNTIME-secrets`, if it exists: no key and no token otherwise."""
    secret = {"name": f"{runtime_name(project)}-secrets", "key": key, "optional": True}
    return {"name": variable, "valueFrom": {"secretKeyRef": secret}}


def inference_service(project: Deployable, model: str, options: KServeOptions) -> dict[str, Any]:
    """One model of the lock, served (and preloaded) by the project's runtime."""
    metadata: dict[str, Any] = {"name": kubernetes_name(model), "labels": _labels(project)}
    if options.scale_to_zero:
        metadata["annotations"] = {"serving.kserve.io/deploymentMode": "Serverless"}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {
            "predictor": {
                "minReplicas": 0 if options.scale_to_zero else 1,
                "maxReplicas": options.max_replicas,
                "model": {
                    "modelFormat": {"name": MODEL_FORMAT},
                    "runtime": runtime_name(project),
                    "protocolVersion": "v2",
                    "env": [{"name": "MODELMORA_PRELOAD", "value": model}],
                },
            }
        },
    }


def _labels(project: Deployable) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": project.name, "app.kubernetes.io/managed-by": "modelmora"}


def write_kserve(project: Deployable, output: Path, options: KServeOptions) -> list[Path]:
    """One YAML file per object, named by kind (and model); the files written."""
    written = [
        write_yaml(output / "configmap.yaml", [config_map(project)]),
        write_yaml(output / "clusterservingruntime.yaml", [serving_runtime(project, options)]),
    ]
    names = {kubernetes_name(model): model for model in project.models}
    if len(names) < len(project.models):
        raise ModelmoraError(
            "two models of the lock give the same Kubernetes name",
            "rename one so that their names differ in more than case and punctuation",
        )
    for name, model in sorted(names.items()):
        service = inference_service(project, model, options)
        written.append(write_yaml(output / f"inferenceservice-{name}.yaml", [service]))
    return written
