"""code/requirements.txt in multi-model mode: the same check-or-install as a single model, per model."""

from __future__ import annotations

from harness import model_needing_a_package
from mme_support import CSV, load, sklearn_model


def test_each_model_installs_its_own_requirements_and_a_failed_install_is_a_400(mme_factory, tmp_path):
    mme = mme_factory(BYOC_REQUIREMENTS="install")
    load(mme, "needs-dep", model_needing_a_package(tmp_path / "needs-dep", "byoc-fixture-dep==1.0\n"))
    response = mme.post("/models/needs-dep/invoke", **CSV)
    assert response.status_code == 200, response.text
    assert response.json()["tag"] == "from-the-wheel"

    broken = model_needing_a_package(tmp_path / "broken", "byoc-fixture-dep==1.0\nbyoc-not-shipped==2.0\n")
    response = mme.post("/models", json={"model_name": "broken", "url": str(broken)})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "requirements_failed"
    assert "byoc-not-shipped" in response.json()["error"]
    assert mme.get("/models/broken").status_code == 404
    # Nothing else is lost: the server is healthy and the first model still serves.
    assert mme.get("/ping").status_code == 200
    assert mme.post("/models/needs-dep/invoke", **CSV).status_code == 200
    load(mme, "plain", sklearn_model(tmp_path / "plain"))


def test_check_mode_names_the_missing_package_in_the_load_error(mme_factory, tmp_path):
    mme = mme_factory()
    model = model_needing_a_package(tmp_path / "needs-dep", "byoc-fixture-dep==1.0\n")
    response = mme.post("/models", json={"model_name": "needs-dep", "url": str(model)})
    assert response.status_code == 400, response.text
    assert "No module named 'byoc_fixture_dep'" in response.json()["error"]
    assert "BYOC_REQUIREMENTS=install" in response.json()["error"]
    assert mme.get("/ping").status_code == 200
