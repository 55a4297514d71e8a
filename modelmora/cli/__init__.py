"""The `modelmora` command.

app.py      the Typer app, global options, output helpers, `main`
manage.py   the project: init, add, remove, lock, install, list, show, path, pull, rm, sync
serving.py  the server: serve, run, load, stop, logs, ps, jobs
caching.py  the shared cache: dir, verify, gc, du, list
keys.py     API keys and the audit log: keys create, keys list, keys revoke, audit
versions.py model versions: versions, route, promote, rollback, deprecate
export.py   Kubernetes manifests: export helm, export kserve
bundle.py   offline bundles: bundle create, bundle import, cache export, cache import
"""

from modelmora.cli import bundle, caching, export, keys, manage, serving, versions  # noqa: F401  (importing registers the commands)
from modelmora.cli.app import app, main

__all__ = ["app", "main"]
