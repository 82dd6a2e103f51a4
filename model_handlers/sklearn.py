"""scikit-learn models saved with joblib or pickle."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from byoc_serve.config import PREDICT_METHODS
from byoc_serve.errors import BadRequest
from model_handlers.base import Context, Handler, find_artifact, rejected_input

ARTIFACT_NAMES = ("model.joblib", "model.pkl", "model.pickle", "model.sav")
ARTIFACT_SUFFIXES = (".joblib", ".pkl", ".pickle")
# Pickles this handler serves come from these libraries too (XGBoost's and LightGBM's sklearn API).
FRAMEWORK_NAMES = {"sklearn": "scikit-learn", "xgboost": "XGBoost", "lightgbm": "LightGBM"}


class SklearnHandler(Handler):
    name = "sklearn"
    extra = "sklearn"
    requires = "sklearn"
    fork_safe = True
    # Measured here: fitted forests/linear models take 1.1-1.6x their joblib size in RSS.
    memory_factor = 2.0

    def can_load(self, model_dir: Path) -> bool:
        return find_artifact(model_dir, ARTIFACT_NAMES, ARTIFACT_SUFFIXES) is not None

    def load(self, model_dir: Path, context: Context) -> Any:
        path = find_artifact(model_dir, ARTIFACT_NAMES, ARTIFACT_SUFFIXES)
        if path is None:
            raise BadRequest(f"no {' / '.join(ARTIFACT_NAMES)} in {model_dir}")
        model = _unpickle(path)
        if not any(hasattr(model, method) for method in (*PREDICT_METHODS, "inplace_predict")):
            raise BadRequest(f"{path.name} holds a {type(model).__name__}, not a model: it has none of {', '.join(PREDICT_METHODS)}")
        return model

    def predict(self, model: Any, data: Any, context: Context) -> Any:
        method = predict_method(context)
        if method == "predict" and hasattr(model, "inplace_predict") and not hasattr(model, "predict_proba"):
            predict = model.inplace_predict  # a pickled xgboost Booster: no DMatrix needed for arrays
        elif hasattr(model, method):
            predict = getattr(model, method)
        else:
            raise BadRequest(f"this model has no {method}(); choose one of {available_methods(model)}")
        try:
            return predict(data)
        except (ValueError, TypeError) as exc:
            raise rejected_input(framework_of(model), exc) from exc


    def warmup_input(self, model: Any) -> Any | None:
        return zeros_row(getattr(model, "n_features_in_", None))


def _unpickle(path: Path) -> Any:
    import joblib

    if path.suffix == ".joblib":
        return joblib.load(path)
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except pickle.UnpicklingError:
        return joblib.load(path)  # joblib.dump writes arrays outside the pickle stream, and is often used for .pkl


def framework_of(model: Any) -> str:
    """The library a pickled model's class comes from, by its usual name."""
    package = type(model).__module__.partition(".")[0]
    return FRAMEWORK_NAMES.get(package, package)


def zeros_row(n_features: Any) -> Any | None:
    """One all-zeros row for models that know their input width (None when they do not)."""
    if not isinstance(n_features, int) or n_features <= 0:
        return None
    import numpy as np

    return np.zeros((1, n_features))


def predict_method(context: Context) -> str:
    """The per-request custom attribute ``predict_method=...`` wins over BYOC_PREDICT_METHOD."""
    requested = context.custom_attribute("predict_method")
    if requested is not None:
        if requested not in PREDICT_METHODS:
            raise BadRequest(f"predict_method={requested!r} is not one of {', '.join(PREDICT_METHODS)}")
        return requested
    return context.settings.predict_method or "predict"


def available_methods(model: Any) -> str:
    return ", ".join(m for m in PREDICT_METHODS if hasattr(model, m)) or "none"
