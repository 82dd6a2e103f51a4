"""Every built-in tabular handler runs a real warm-up prediction before the model counts as ready."""

import logging

import numpy as np
import xgboost

from byoc_serve.config import load_settings
from byoc_serve.servable import Servable
from harness import train_sklearn_classifier


def test_sklearn_warm_up_predicts_on_a_row_of_the_right_width(tmp_path, caplog):
    train_sklearn_classifier(tmp_path, n_features=7)
    with caplog.at_level(logging.INFO, logger="byoc_serve.servable"):
        servable = Servable.load(tmp_path, load_settings({}))
    assert servable.handler.warmup_input(servable.model).shape == (1, 7)
    assert "phase=warm-up ok" in caplog.text and "sample=from signature" in caplog.text


def test_xgboost_warm_up_uses_the_booster_feature_count(tmp_path):
    features = np.random.default_rng(0).random((40, 5))
    booster = xgboost.train({"objective": "reg:squarederror"}, xgboost.DMatrix(features, label=features[:, 0]), 2)
    booster.save_model(str(tmp_path / "model.json"))
    servable = Servable.load(tmp_path, load_settings({}))
    assert servable.handler.warmup_input(servable.model).shape == (1, 5)


def test_an_artifact_sample_takes_precedence(tmp_path, caplog):
    train_sklearn_classifier(tmp_path)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "warmup.csv").write_text("1,2,3,4\n")
    with caplog.at_level(logging.INFO, logger="byoc_serve.servable"):
        Servable.load(tmp_path, load_settings({}))
    assert "sample=code/warmup.csv" in caplog.text
