import pytest

from byoc_serve.config import load_settings
from byoc_serve.errors import BadRequest
from byoc_serve.selection import handler_classes, select_handler
from harness import train_sklearn_classifier


def test_artifacts_pick_the_handler(tmp_path):
    train_sklearn_classifier(tmp_path)
    assert select_handler(tmp_path, load_settings({})).name == "sklearn"


def test_user_code_wraps_the_framework_handler(tmp_path):
    train_sklearn_classifier(tmp_path)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text("def predict_fn(data, model):\n    return [1]\n")
    handler = select_handler(tmp_path, load_settings({}))
    assert handler.name == "user_code+sklearn" and handler.fork_safe


def test_sagemaker_program_names_the_script(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "serve_me.py").write_text("def model_fn(model_dir):\n    return 1\n")
    assert select_handler(tmp_path, load_settings({"SAGEMAKER_PROGRAM": "serve_me.py"})).name == "user_code"


def test_unknown_handler_name_is_rejected(tmp_path):
    train_sklearn_classifier(tmp_path)
    with pytest.raises(BadRequest, match="BYOC_HANDLER='keras2'"):
        select_handler(tmp_path, load_settings({"BYOC_HANDLER": "keras2"}))


def test_unrecognised_artifacts_say_what_was_found(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(BadRequest, match="weights.bin"):
        select_handler(tmp_path, load_settings({}))


def test_user_modules_of_two_models_do_not_collide(tmp_path):
    for name, value in (("a", 1), ("b", 2)):
        (tmp_path / name / "code").mkdir(parents=True)
        (tmp_path / name / "code" / "inference.py").write_text(f"def model_fn(model_dir):\n    return {value}\n")
    settings = load_settings({})
    a = select_handler(tmp_path / "a", settings)
    b = select_handler(tmp_path / "b", settings)
    assert a.module is not b.module
    assert (a.hooks["model_fn"].fn("x"), b.hooks["model_fn"].fn("x")) == (1, 2)


def test_third_party_handlers_register_through_the_entry_point_group(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "byoc_const_handler-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: byoc-const-handler\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[byoc_serve.handlers]\nconstant = byoc_const_handler:ConstantHandler\n")
    (site / "byoc_const_handler.py").write_text(
        "from model_handlers.base import Handler\n"
        "class ConstantHandler(Handler):\n"
        "    name = 'constant'\n"
        "    def can_load(self, model_dir):\n"
        "        return (model_dir / 'constant.txt').is_file()\n"
        "    def load(self, model_dir, context):\n"
        "        return float((model_dir / 'constant.txt').read_text())\n"
        "    def predict(self, model, data, context):\n"
        "        return [model] * len(data)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    handler_classes.cache_clear()  # discovered once per process; this test adds a distribution
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "constant.txt").write_text("4.5")
    handler = select_handler(model_dir, load_settings({}))
    assert handler.name == "constant"
    assert select_handler(model_dir, load_settings({"BYOC_HANDLER": "constant"})).name == "constant"
    handler_classes.cache_clear()
