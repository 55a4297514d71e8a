"""`modelmora export helm|kserve`: Kubernetes manifests that serve the project's lock.

Both read `modelmora.toml` and a fresh `modelmora.lock` (run `modelmora lock` first) and write
plain files to review and commit; nothing talks to a cluster. See docs/deployment.md.
"""

from __future__ import annotations

from pathlib import Path

import typer

from modelmora import __version__
from modelmora.cli.app import app, current_project, say, warn
from modelmora.ray.export import export_ray  # noqa: TID253 - imports no ray: the config's plan only

export_app = typer.Typer(
    help="Write Kubernetes manifests (a Helm chart, KServe resources) for the project.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(export_app, name="export")


@export_app.command("helm")
def helm(
    output: Path = typer.Option(Path("chart"), "--output", "-o", help="Folder of the chart."),
    image: str = typer.Option("modelmora", help="Image repository (built from the Dockerfile)."),
    tag: str | None = typer.Option(None, help="Image tag [default: ModelMora's version]."),
    statefulset: bool = typer.Option(
        False, "--statefulset", help="A StatefulSet whose replicas keep their cache on a volume."
    ),
    replicas: int = typer.Option(1, min=1, help="Replicas when autoscaling is off."),
) -> None:
    """Write a Helm chart: Deployment (or StatefulSet), Service, HPA, ConfigMap."""
    from modelmora.export import deployable
    from modelmora.export.helm import ChartOptions, Workload, write_chart

    workload: Workload = "StatefulSet" if statefulset else "Deployment"
    options = ChartOptions(image, tag or __version__, workload, replicas)
    project = deployable(current_project())
    _warn_local(project.local_models, "fill the cache volume first (values: cache.existingClaim)")
    written = write_chart(project, output, options)
    say(f"Wrote a Helm chart ({len(written)} files) to {output}; `helm install NAME {output}`")


@export_app.command("kserve")
def kserve(
    output: Path = typer.Option(Path("kserve"), "--output", "-o", help="Folder of the YAML files."),
    image: str | None = typer.Option(None, help="Image [default: modelmora:VERSION]."),
    scale_to_zero: bool = typer.Option(
        False, "--scale-to-zero", help="minReplicas 0: needs KServe's Serverless mode (Knative)."
    ),
) -> None:
    """Write a KServe ClusterServingRuntime, a ConfigMap and an InferenceService per model."""
    from modelmora.export import deployable
    from modelmora.export.kserve import KServeOptions, write_kserve

    options = KServeOptions(image or f"modelmora:{__version__}", scale_to_zero)
    project = deployable(current_project())
    _warn_local(project.local_models, "put them in the image or use hf:// or pkg:// sources")
    written = write_kserve(project, output, options)
    say(f"Wrote {len(written)} KServe files to {output}; `kubectl apply -f {output}`")


def _warn_local(models: tuple[str, ...], fix: str) -> None:
    if models:
        names = ", ".join(models)
        warn(
            f"{names}: from a local folder, which `modelmora install` in a pod cannot reach; {fix}"
        )


export_app.command("ray")(export_ray)
