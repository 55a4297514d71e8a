"""`modelmora serve`: the HTTP server, its scheduler, and the worker processes that run the models.

Nothing is imported here: `python -m modelmora.serve.worker` runs in every worker process, and the
package manager never imports this package.
"""
