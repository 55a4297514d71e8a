"""The public records of model versions: what `modelmora versions|promote|rollback|deprecate
--json` print and what the server's version routes answer, declared once for both (docs/json.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from modelmora.routing import Route
from modelmora.versions import RouteRecord, RouteUpdate, VersionRecord, VersionsReport


class RouteBody(BaseModel):
    """A model's traffic: each version's share, and an optional shadow."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, int] = Field(
        description='Each version\'s share of the requests, e.g. {"v3": 90, "v2": 10}.'
    )
    shadow: str | None = Field(None, description="A version that gets a copy of some requests.")
    shadow_fraction: float = Field(
        0.0, ge=0, le=1, description="The fraction of requests copied to the shadow."
    )

    def route(self) -> Route:
        return Route(self.weights, self.shadow, self.shadow_fraction)


class VersionBody(BaseModel):
    model: str
    version: str = Field(description="Empty for a model without versions.")
    source: str
    revision: str
    commit: str
    task: str
    created_at: float
    created_by: str
    state: str = Field(description="active, deprecated or archived.")
    share: float = Field(description="Its share of the model's requests, 0 to 1.")
    shadow: bool = Field(description="Whether it is the route's shadow.")


class RouteChangeBody(BaseModel):
    id: int
    at: float
    actor: str
    action: str = Field(description="sync, route, promote, rollback or register.")
    route: RouteBody


class VersionsBody(BaseModel):
    """`GET /models/{model}/versions`, `modelmora versions MODEL --json`."""

    model: str
    route: RouteBody | None = Field(description="None for a model without versions.")
    versions: list[VersionBody]
    history: list[RouteChangeBody] = Field(description="Its routes, oldest first.")


class RouteUpdateBody(BaseModel):
    """What a route change did: `PUT /models/{model}/route`, promote, rollback."""

    model: str
    before: RouteBody
    after: RouteBody


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str


class DeprecateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    undo: bool = Field(False, description="Make a deprecated version active again.")


def route_body(route: Route) -> RouteBody:
    weights = dict(sorted(route.weights.items()))
    return RouteBody(weights=weights, shadow=route.shadow, shadow_fraction=route.shadow_fraction)


def versions_body(report: VersionsReport) -> VersionsBody:
    total = report.route.total if report.route is not None else 100
    return VersionsBody(
        model=report.model,
        route=route_body(report.route) if report.route is not None else None,
        versions=[version_body(record, total) for record in report.versions],
        history=[change_body(record) for record in report.history],
    )


def version_body(record: VersionRecord, total: int) -> VersionBody:
    return VersionBody(
        model=record.model,
        version=record.version,
        source=record.source,
        revision=record.revision,
        commit=record.commit,
        task=record.task,
        created_at=record.created_at,
        created_by=record.created_by,
        state=record.state,
        share=record.weight / total,
        shadow=record.shadow,
    )


def change_body(record: RouteRecord) -> RouteChangeBody:
    return RouteChangeBody(
        id=record.id,
        at=record.at,
        actor=record.actor,
        action=record.action,
        route=route_body(record.route),
    )


def update_body(update: RouteUpdate) -> RouteUpdateBody:
    return RouteUpdateBody(
        model=update.model, before=route_body(update.before), after=route_body(update.after)
    )
