"""rejected_input: a framework's complaint about a request's data, made fit for a 400 body, and whose it is."""

from __future__ import annotations

from model_handlers.base import MAX_REASON_CHARS, rejected_input
from model_handlers.sklearn import framework_of


def test_the_first_line_is_kept_without_xgboosts_timestamp_and_source_path():
    exc = ValueError("[03:25:47] /workspace/src/data/array_interface.h:499: Unicode-1 is not supported.\nStack trace:\n  [bt] (0) x")
    error = rejected_input("XGBoost", exc)
    assert error.status == 400
    assert error.message == "XGBoost rejected the input: Unicode-1 is not supported."


def test_a_long_reason_is_cut_and_an_empty_one_names_the_exception():
    long = rejected_input("scikit-learn", ValueError("x" * 1000)).message
    assert long.endswith("...") and len(long) == len("scikit-learn rejected the input: ") + MAX_REASON_CHARS
    assert rejected_input("scikit-learn", ValueError()).message == "scikit-learn rejected the input: ValueError"


def test_a_pickled_model_is_named_by_the_library_its_class_comes_from():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from xgboost import Booster, XGBClassifier

    assert framework_of(Pipeline([("model", LogisticRegression())])) == "scikit-learn"
    assert framework_of(XGBClassifier()) == framework_of(Booster()) == "XGBoost"
    assert framework_of(3.0) == "builtins"  # anything else: its top-level package as it is
