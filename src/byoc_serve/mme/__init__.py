"""Multi-model endpoints: HTTP workers forward /models calls to one model manager, which forks a model
host per loaded model; nginx routes /models/{name}/invoke straight to that host's unix socket."""

from __future__ import annotations

from typing import TYPE_CHECKING

from byoc_serve.config import Settings

if TYPE_CHECKING:
    from byoc_serve.workers import ServingApplication


def build_multi_model(settings: Settings) -> "ServingApplication":
    """The gunicorn application of multi-model mode: workers that hold no model."""
    from byoc_serve.mme.routes import create_mme_app
    from byoc_serve.workers import ServingApplication

    return ServingApplication(settings, create_mme_app(settings))
