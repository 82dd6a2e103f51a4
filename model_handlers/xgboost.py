"""XGBoost models: JSON, UBJSON, legacy binary and pickled artifacts; Booster or the sklearn wrapper."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from byoc_serve.errors import BadRequest
from model_handlers.base import Context, Handler, find_artifact, rejected_input
from model_handlers.sklearn import predict_method, zeros_row

# "xgboost-model" is the SageMaker built-in algorithm's artifact name (binary or pickle).
ARTIFACT_NAMES = ("model.json", "model.ubj", "model.bst", "model.model", "xgboost-model")
ARTIFACT_SUFFIXES = (".json", ".ubj", ".bst")
PICKLE_MAGIC = b"\x80"


class XGBoostHandler(Handler):
    name = "xgboost"
    extra = "xgboost"
    requires = "xgboost"
    fork_safe = True
    # Measured here: a Booster takes about 1.5x its UBJSON size once loaded; JSON artifacts are larger than the model.
    memory_factor = 1.5

    def can_load(self, model_dir: Path) -> bool:
        path = find_artifact(model_dir, ARTIFACT_NAMES, ARTIFACT_SUFFIXES)
        return path is not None and not _is_config_json(path)

    def load(self, model_dir: Path, context: Context) -> Any:
        import xgboost

        path = find_artifact(model_dir, ARTIFACT_NAMES, ARTIFACT_SUFFIXES)
        if path is None:
            raise BadRequest(f"no {' / '.join(ARTIFACT_NAMES)} in {model_dir}")
        if path.read_bytes()[:1] == PICKLE_MAGIC:
            with path.open("rb") as f:
                model = pickle.load(f)
        else:
            model = xgboost.Booster()
            try:
                model.load_model(str(path))
            except xgboost.core.XGBoostError as exc:
                raise BadRequest(f"{path.name} is not a model this XGBoost {xgboost.__version__} can read: {exc}") from exc
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        booster.set_param({"nthread": context.settings.intra_op_threads})
        return model

    def predict(self, model: Any, data: Any, context: Context) -> Any:
        method = predict_method(context)
        try:
            if hasattr(model, "get_booster"):  # the sklearn wrapper (XGBClassifier, XGBRegressor, ...)
                if not hasattr(model, method):
                    raise BadRequest(f"this model has no {method}()")
                return getattr(model, method)(data)
            if _is_sparse(data):
                import xgboost

                return model.predict(xgboost.DMatrix(data))
            return model.inplace_predict(data)
        except (ValueError, TypeError) as exc:  # XGBoostError is a ValueError
            raise rejected_input("XGBoost", exc) from exc


    def warmup_input(self, model: Any) -> Any | None:
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        return zeros_row(booster.num_features())


def _is_sparse(data: Any) -> bool:
    return hasattr(data, "tocsr")


def _is_config_json(path: Path) -> bool:
    """A generic *.json (e.g. a tokenizer config) is not an XGBoost model; model.json always is."""
    if path.suffix != ".json" or path.name == "model.json":
        return False
    with path.open("rb") as f:
        head = f.read(256)
    return b'"learner"' not in head
