"""``glae serve``: a web page and a JSON API over ``AgeEstimator`` (the ``serve`` extra).

Layout: ``settings`` (the limits), ``upload`` (size-capped multipart read, type judged by
``glae.imageformats``), ``pool`` (bounded inference threads), ``inference`` (photo -> JSON), ``app``
(routes), ``errors`` (the exception a route turns into a JSON error), ``protocol`` (a deadline for request
headers and a cap on open connections), ``server`` (load once, run uvicorn), ``static/`` (the page),
``client`` (a standard-library client and a server in a child process).
Only ``settings`` is imported here, so ``glae`` works without the extra installed.
"""

from .settings import ServeSettings

__all__ = ["ServeSettings"]
