"""`modelmora export helm`: a Helm chart that serves the project's lock.

The templates are Helm source kept beside this module (`chart/templates/`); what varies per
project is written here: `Chart.yaml`, `values.yaml` (built by `values`, a pure function) and the
project's `modelmora.toml` and `modelmora.lock` under `files/`, which the chart's ConfigMap holds,
and `values.schema.json`, which Helm checks the values against.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from modelmora import __version__
from modelmora.export import RUN_AS, Deployable, cache_size, write_yaml

Workload = Literal["Deployment", "StatefulSet"]
CHART_VERSION = "0.1.0"


@dataclass(frozen=True)
class ChartOptions:
    image: str = "modelmora"
    tag: str = __version__
    workload: Workload = "Deployment"
    replicas: int = 1


def chart_metadata(project: Deployable) -> dict[str, Any]:
    return {
        "apiVersion": "v2",
        "name": project.name,
        "description": f"ModelMora serving the models of {project.name}'s modelmora.lock",
        "type": "application",
        "version": CHART_VERSION,
        "appVersion": __version__,
    }


def values(project: Deployable, options: ChartOptions) -> dict[str, Any]:
    """values.yaml: every knob with the default that fits this project."""
    return {
        "image": {"repository": options.image, "tag": options.tag, "pullPolicy": "IfNotPresent"},
        "workload": options.workload,
        "replicas": options.replicas,
        "server": {"httpPort": project.http_port, "grpcPort": project.grpc_port},
        "extraArgs": [],
        "service": {"type": "ClusterIP"},
        "resources": {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"memory": "4Gi"},
        },
        "cache": {
            "size": cache_size(project.model_bytes),
            "storageClass": "",
            "existingClaim": "",
            "readOnlyInServer": not project.writes_cache,
        },
        "apiKey": {"secretName": "", "key": "api-key"},
        "hfToken": {"secretName": "", "key": "token"},
        "autoscaling": {
            "enabled": False,
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetCPUUtilizationPercentage": 70,
            "queueDepth": {"enabled": False, "averageValue": "4"},
        },
        "runAsUser": RUN_AS,
        "terminationGracePeriodSeconds": 60,
        "fullnameOverride": "",
    }


def values_schema() -> dict[str, Any]:
    """values.schema.json: Helm refuses values that break it, at install, upgrade and lint."""
    text, count = {"type": "string"}, {"type": "integer", "minimum": 1}
    port = {"type": "integer", "minimum": 0, "maximum": 65535}
    secret = _object({"secretName": text, "key": text})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        **_object(
            {
                "workload": {"enum": ["Deployment", "StatefulSet"]},
                "replicas": count,
                "server": _object({"httpPort": {**port, "minimum": 1}, "grpcPort": port}),
                "cache": _object(
                    {
                        "size": text,
                        "storageClass": text,
                        "existingClaim": text,
                        "readOnlyInServer": {"type": "boolean"},
                    }
                ),
                "apiKey": secret,
                "hfToken": secret,
                "autoscaling": _object(
                    {
                        "enabled": {"type": "boolean"},
                        "minReplicas": count,
                        "maxReplicas": count,
                        "targetCPUUtilizationPercentage": count,
                    }
                ),
            }
        ),
    }


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def write_chart(project: Deployable, output: Path, options: ChartOptions) -> list[Path]:
    """Write the chart into `output` (made if missing); the files written, sorted."""
    templates = output / "templates"
    shutil.rmtree(templates, ignore_errors=True)  # a template dropped since the last export
    for template in (resources.files("modelmora.export") / "chart" / "templates").iterdir():
        _write(templates / template.name, template.read_text())
    _write(output / "files" / "modelmora.toml", project.manifest_text)
    _write(output / "files" / "modelmora.lock", project.lock_text)
    write_yaml(output / "Chart.yaml", [chart_metadata(project)])
    write_yaml(output / "values.yaml", [values(project, options)])
    _write(output / "values.schema.json", json.dumps(values_schema(), indent=2) + "\n")
    return sorted(path for path in output.rglob("*") if path.is_file())


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
