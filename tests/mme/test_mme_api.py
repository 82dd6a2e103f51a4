"""The multi-model API as SageMaker calls it (contract.md §2.2), on one real stack per module."""

from __future__ import annotations

import base64
import os
import pickle
import random
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from harness import ENVELOPE, HUGE_FRAME_PICKLE, assert_served_up_to_nginxs_limits, raw_exchange
from mme_support import (
    CSV,
    assert_healthy,
    hostile_tarball,
    load,
    sklearn_model,
    slow_loading,
    tarball,
    user_code_model,
    wait_for,
    xgboost_model,
)


@pytest.fixture(scope="module")
def canary(mme, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model loaded on the module's server, for the good request after each bad one."""
    load(mme, "canary", sklearn_model(tmp_path_factory.mktemp("canary")))
    return "canary"


def test_ping_and_list_answer_before_any_model_is_loaded(mme):
    assert mme.get("/ping").status_code == 200
    response = mme.get("/models")
    assert response.status_code == 200
    assert response.json() == {"models": []}


def test_list_answers_from_the_moment_ping_does(serve_factory, tmp_path):
    server = serve_factory(env={"SAGEMAKER_MULTI_MODEL": "true", "BYOC_CACHE_DIR": str(tmp_path / "cache")})
    # serve_factory returns at the first /ping 200; the manager may still be importing frameworks.
    response = server.get("/models", timeout=2)
    assert response.status_code == 200 and response.json() == {"models": []}


def test_load_answers_200_once_loaded_and_the_model_then_serves(mme, tmp_path):
    model = sklearn_model(tmp_path / "model")
    body = load(mme, "iris-1", model)
    assert body["modelName"] == "iris-1" and body["modelUrl"] == str(model) and body["state"] == "ready"
    # No polling: a 200 means loaded and warmed, so the very next invoke is served.
    response = mme.post("/models/iris-1/invoke", **CSV)
    assert response.status_code == 200, response.text
    assert response.json() == [1]
    described = mme.get("/models/iris-1").json()
    assert described["modelName"] == "iris-1" and described["modelUrl"] == str(model)
    assert described["memoryBytes"] > 0
    assert {"modelName": "iris-1", "modelUrl": str(model)} in mme.get("/models").json()["models"]


def test_duplicate_load_returns_409(mme, tmp_path):
    model = sklearn_model(tmp_path / "model")
    load(mme, "dup", model)
    response = mme.post("/models", json={"model_name": "dup", "url": str(model)})
    assert response.status_code == 409
    assert response.json()["type"] == "model_already_loaded" and response.json()["model"] == "dup"
    assert_healthy(mme, "dup")


def test_a_model_still_loading_is_not_listed_and_cannot_be_deleted(mme, tmp_path):
    model = slow_loading(user_code_model(tmp_path / "model", "slow"), 1.5)
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(mme.post, "/models", json={"model_name": "slowpoke", "url": str(model)})
        wait_for(lambda: "(it is loading)" in mme.get("/models/slowpoke").json()["error"])
        assert mme.get("/models/slowpoke").status_code == 404
        assert "slowpoke" not in [m["modelName"] for m in mme.get("/models").json()["models"]]
        deleted = mme.delete("/models/slowpoke")
        assert deleted.status_code == 404 and "loading" in deleted.json()["error"]
        assert loading.result().status_code == 200
    assert mme.post("/models/slowpoke/invoke", **CSV).json()[0] == "slow"
    assert_healthy(mme, "slowpoke")


def test_missing_artifact_returns_404_and_nothing_is_registered(mme, canary, tmp_path):
    response = mme.post("/models", json={"model_name": "ghost", "url": str(tmp_path / "nowhere")})
    assert response.status_code == 404
    assert response.json()["type"] == "artifact_not_found"
    assert mme.get("/models/ghost").status_code == 404
    assert_healthy(mme, canary)


def _refused(path: str) -> bool:
    try:
        os.stat(path)
    except PermissionError:
        return True
    return False


# On this project's machines even root is refused pid 1's /proc links, so / and /proc fail fast and the
# same way each time; where root may read them, their walk would go on through the whole tree.
PROC_1_REFUSED = pytest.mark.skipif(not _refused("/proc/1/cwd"), reason="this machine lets root read /proc/1/cwd")


TOO_LONG_PATH, TOO_LONG_NAME = "/" + "a" * 5000, "/tmp/" + "a" * 300 + "/model"


@pytest.mark.parametrize(
    "url, message",
    [
        (TOO_LONG_PATH, f"cannot read {TOO_LONG_PATH}: File name too long"),
        (TOO_LONG_NAME, f"cannot read {TOO_LONG_NAME}: File name too long"),
        pytest.param("/proc/1/cwd", "cannot read /proc/1/cwd: Permission denied", marks=PROC_1_REFUSED),
        # Refused while the files under the url are counted for the memory estimate:
        pytest.param("/", "cannot read /proc/1/cwd (in /): Permission denied", marks=PROC_1_REFUSED),
        pytest.param("/proc", "cannot read /proc/1/cwd (in /proc): Permission denied", marks=PROC_1_REFUSED),
    ],
    ids=["path-too-long", "name-too-long", "refused", "root", "proc"],
)
def test_url_the_filesystem_refuses_returns_400_with_the_path_and_reason(mme, canary, url, message):
    response = mme.post("/models", json={"model_name": "refused", "url": url})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == message and response.json()["type"] == "unusable_artifact"
    assert mme.get("/models/refused").status_code == 404
    assert_healthy(mme, canary)


@pytest.mark.parametrize(
    "make_url",
    [
        lambda tmp: str(tmp),  # an empty directory
        lambda tmp: (tmp / "model.joblib").write_bytes(random.Random(2).randbytes(512)) and str(tmp),  # not a model
        lambda tmp: (tmp / "model.pkl").write_bytes(HUGE_FRAME_PICKLE) and str(tmp),  # unpickling raises MemoryError
        lambda tmp: (tmp / "model.joblib").write_bytes(pickle.dumps({"weights": [1, 2]})) and str(tmp),  # data, no model
        lambda tmp: "relative/path",
        lambda tmp: (tmp / "notes.txt").write_text("hi") and str(tmp / "notes.txt"),  # a file, not an archive
        lambda tmp: (tmp / "model.tar.gz").write_bytes(b"not gzip") and str(tmp / "model.tar.gz"),
    ],
    ids=["empty-dir", "garbage-model", "huge-length-field", "not-a-model", "relative", "plain-file", "corrupt-archive"],
)
def test_unusable_artifact_returns_400_with_a_reason(mme, tmp_path, make_url):
    response = mme.post("/models", json={"model_name": "broken", "url": make_url(tmp_path)})
    assert response.status_code == 400, response.text
    assert response.json()["error"] and response.json()["code"] == 400
    assert mme.get("/models/broken").status_code == 404
    # A failed load leaves nothing behind: the same name loads fine afterwards.
    load(mme, "broken", sklearn_model(tmp_path / "good"))
    assert_healthy(mme, "broken")
    assert mme.delete("/models/broken").status_code == 200


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "bad\x01name", "", "x" * 300, ".hidden", "a..b", "tab\tname"])
def test_invalid_model_names_are_rejected_with_400_before_touching_a_path(mme, canary, tmp_path, name):
    model = sklearn_model(tmp_path / "model")
    before = set(os.listdir(mme.run_dir / "models"))
    response = mme.post("/models", json={"model_name": name, "url": str(model)})
    assert response.status_code == 400, response.text
    assert set(os.listdir(mme.run_dir / "models")) == before
    assert not (tmp_path / "escape").exists()
    assert_healthy(mme, canary)


def test_body_without_model_name_or_url_returns_400(mme, canary):
    assert mme.post("/models", data="not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert mme.post("/models", json={"url": "/tmp"}).status_code == 400
    assert mme.post("/models", json={"model_name": "nourl"}).status_code == 400
    assert_healthy(mme, canary)


@pytest.mark.parametrize("body", ["[" * 5000 + "]" * 5000, '{"model_name":' * 3000], ids=["nested-lists", "nested-objects"])
def test_load_body_nested_too_deep_to_parse_returns_400(mme, canary, body):
    response = mme.post("/models", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == 'the body must be JSON: {"model_name": "...", "url": "..."}'
    assert_healthy(mme, canary)


DEEP = "[" * 300 + "]" * 300  # parses, but orjson writes at most 254 levels: it must not reach the manager's RPC


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"model_name": "deep", "url": %s}' % DEEP, '"url" must be a non-empty string'),
        ('{"model_name": %s, "url": "/tmp"}' % DEEP, '"model_name" must be a non-empty string'),
    ],
    ids=["url", "model_name"],
)
def test_load_fields_nested_deeper_than_the_manager_rpc_writes_return_400(mme, canary, body, message):
    response = mme.post("/models", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == message
    assert_healthy(mme, canary)


def test_load_body_is_json_whatever_its_content_type(mme, canary, tmp_path):
    # `curl -X POST .../models -d '{...}'` (the README's example) sends application/x-www-form-urlencoded.
    body = '{"model_name": "curl-style", "url": "%s"}' % sklearn_model(tmp_path / "m")
    response = mme.post("/models", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert mme.post("/models/curl-style/invoke", **CSV).status_code == 200
    assert mme.delete("/models/curl-style").status_code == 200
    assert_healthy(mme, canary)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_load_body_may_come_in_any_json_encoding(mme, canary, tmp_path, encoding):
    # A file saved with a byte order mark or as UTF-16, sent by `curl -d @body.json`: json reads both.
    body = '{"model_name": "encoded", "url": "%s"}' % sklearn_model(tmp_path / "m")
    response = mme.post("/models", data=body.encode(encoding), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert mme.delete("/models/encoded").status_code == 200
    assert_healthy(mme, canary)


def test_unknown_model_gets_404_json_on_get_delete_and_invoke(mme, canary):
    for response in (mme.get("/models/unknown"), mme.delete("/models/unknown"), mme.post("/models/unknown/invoke", **CSV)):
        assert response.status_code == 404
        assert response.json()["type"] == "model_not_loaded"
        assert response.json()["model"] == "unknown"
    # Answered without trying the socket: a failed connect() is an nginx [crit] line in the container's log.
    assert "models/unknown.sock failed" not in mme.log()
    assert_healthy(mme, canary)


@pytest.mark.parametrize("target", [b"/models/%ff/invoke", b"/models/%22/invoke", b'/models/"x"/invoke', b"/models/a\\b/invoke"])
def test_an_invoke_uri_that_names_no_model_gets_404_json(mme, canary, target):
    request = b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    status, headers, body = raw_exchange(mme, request)
    assert status == 404 and headers["content-type"] == "application/json"
    error = orjson.loads(body)
    assert set(error) == ENVELOPE and error["type"] == "not_found"
    assert_healthy(mme, canary)


@pytest.mark.parametrize("path", ["/models", "/models/canary", "/execution-parameters"])
def test_a_request_head_nginx_forwards_reaches_the_management_routes(mme, canary, path):
    assert_served_up_to_nginxs_limits(mme, "GET", path)
    assert_healthy(mme, canary)


def test_delete_unloads_and_later_invokes_get_404(mme, canary, tmp_path):
    load(mme, "gone", sklearn_model(tmp_path / "model"))
    pid = mme.get("/models/gone").json()["pid"]
    response = mme.delete("/models/gone")
    assert response.status_code == 200
    assert response.json()["modelName"] == "gone"
    assert not os.path.exists(f"/proc/{pid}")  # the process holding the model is gone when DELETE answers
    assert mme.post("/models/gone/invoke", **CSV).status_code == 404
    assert all(m["modelName"] != "gone" for m in mme.get("/models").json()["models"])
    assert mme.delete("/models/gone").status_code == 404
    assert "models/gone.sock failed" not in mme.log()
    assert_healthy(mme, canary)


def test_invoke_keeps_the_codecs_accept_and_custom_attributes_of_invocations(mme, tmp_path):
    load(mme, "codecs", sklearn_model(tmp_path / "model"))
    csv_out = mme.post("/models/codecs/invoke", data="0.5,1,-0.3,2\n-3,-3,0,0", headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    assert csv_out.status_code == 200 and csv_out.headers["Content-Type"].startswith("text/csv")
    assert csv_out.text.split() == ["1", "0"]
    as_json = mme.post("/models/codecs/invoke", json={"instances": [[0.5, 1, -0.3, 2]]})
    assert as_json.status_code == 200 and as_json.json() == [1]
    probabilities = mme.post(
        "/models/codecs/invoke", **{**CSV, "headers": {**CSV["headers"], "X-Amzn-SageMaker-Custom-Attributes": "predict_method=predict_proba"}}
    )
    assert probabilities.status_code == 200 and len(probabilities.json()[0]) == 2
    not_acceptable = mme.post("/models/codecs/invoke", **{**CSV, "headers": {**CSV["headers"], "Accept": "image/png"}})
    assert not_acceptable.status_code == 406 and not_acceptable.json()["model"] == "codecs"
    unsupported = mme.post("/models/codecs/invoke", data=b"\x00", headers={"Content-Type": "image/png"})
    assert unsupported.status_code == 415 and unsupported.json()["type"] == "unsupported_content_type"
    assert mme.post("/models/codecs/invoke", data=b"", headers={"Content-Type": "text/csv"}).status_code == 204
    assert_healthy(mme, "codecs")


def test_target_model_header_reaches_the_model_and_the_log(mme, tmp_path):
    header = {"X-Amzn-SageMaker-Target-Model": "fraud/v3/model.tar.gz"}
    load(mme, "targeted", user_code_model(tmp_path / "model", "t"), headers=header)
    response = mme.post("/models/targeted/invoke", **{**CSV, "headers": {**CSV["headers"], **header}})
    assert response.status_code == 200, response.text
    assert response.json() == ["t", "fraud/v3/model.tar.gz"]
    requested = next(line for line in mme.log().splitlines() if "load requested name='targeted'" in line)
    assert "target_model='fraud/v3/model.tar.gz'" in requested, requested


def test_models_with_their_own_inference_py_do_not_collide(mme, tmp_path):
    load(mme, "user-a", user_code_model(tmp_path / "a", "from-a"))
    load(mme, "user-b", user_code_model(tmp_path / "b", "from-b"))
    assert mme.post("/models/user-a/invoke", **CSV).json()[0] == "from-a"
    assert mme.post("/models/user-b/invoke", **CSV).json()[0] == "from-b"


def test_xgboost_model_loads_and_predicts(mme, tmp_path):
    body = load(mme, "xgb", xgboost_model(tmp_path / "model"))
    assert body["handler"] == "xgboost"
    response = mme.post("/models/xgb/invoke", **CSV)
    assert response.status_code == 200, response.text
    assert 0.5 < response.json()[0] < 1.0


def test_list_paginates_across_35_models(mme, tmp_path):
    model = sklearn_model(tmp_path / "model")
    names = [f"page-{i:02d}" for i in range(35)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: load(mme, name, model), names))
    seen, token, pages = [], None, 0
    while True:
        params = {"limit": 10, **({"next_page_token": token} if token else {})}
        body = mme.get("/models", params=params).json()
        pages += 1
        assert len(body["models"]) <= 10
        seen += [m["modelName"] for m in body["models"] if m["modelName"].startswith("page-")]
        token = body.get("nextPageToken")
        if token is None:
            break
        assert pages < 20
    assert sorted(seen) == names and len(seen) == len(set(seen))
    assert pages >= 4
    assert mme.get("/models", params={"limit": "ten"}).status_code == 400
    assert mme.get("/models", params={"limit": 0}).status_code == 400
    bad_token = base64.urlsafe_b64encode(b"\xff\xfe").decode()
    assert mme.get("/models", params={"next_page_token": bad_token}).status_code == 400
    assert_healthy(mme, "page-00")
    with ThreadPoolExecutor(4) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda name: mme.delete(f"/models/{name}"), names))


@pytest.mark.parametrize("params", [{"next_page_token": "!!!!"}, {"limit": 1, "next_page_token": "%%%"}, {"next_page_token": "_w"}])
def test_list_with_a_page_token_this_server_did_not_issue_returns_400(mme, canary, params):
    response = mme.get("/models", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == f"next_page_token={params['next_page_token']!r} is not a token this server issued"
    assert_healthy(mme, canary)


def test_directory_url_is_used_in_place_and_never_written(mme, tmp_path):
    model = sklearn_model(tmp_path / "model")
    snapshot = {p: p.stat().st_mtime_ns for p in [model, *model.rglob("*")]}
    model.chmod(0o555)  # read-only, like /opt/ml/models on SageMaker
    try:
        load(mme, "in-place", model)
        assert mme.post("/models/in-place/invoke", **CSV).status_code == 200
        assert mme.delete("/models/in-place").status_code == 200
    finally:
        model.chmod(0o755)
    assert {p: p.stat().st_mtime_ns for p in [model, *model.rglob("*")]} == snapshot


def test_tar_gz_artifact_is_extracted_and_served(mme, tmp_path):
    archive = tarball(user_code_model(tmp_path / "src", "packed"), tmp_path / "model.tar.gz")
    load(mme, "packed", archive)
    assert mme.post("/models/packed/invoke", **CSV).json()[0] == "packed"
    assert mme.get("/models/packed").json()["modelUrl"] == str(archive)


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, target
    return member


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.LNKTYPE, target
    return member


def _device(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.CHRTYPE
    return member


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../escaped.txt"),
        tarfile.TarInfo("code/../../escaped.txt"),
        tarfile.TarInfo("/tmp/absolute-escape.txt"),
        _symlink("link", "/etc/passwd"),
        _symlink("code/link", "../../outside"),
        _hardlink("hard", "/etc/passwd"),
        _device("dev"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-absolute", "symlink-up", "hardlink-absolute", "device"],
)
def test_tar_slip_archives_are_rejected_with_400(mme, canary, tmp_path, member):
    archive = hostile_tarball(tmp_path / "model.tar.gz", member)
    cache = Path(mme.env["BYOC_CACHE_DIR"])
    before = set(os.listdir(cache))
    response = mme.post("/models", json={"model_name": "slip", "url": str(archive)})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "unsafe_archive"
    # Checked before a single byte is extracted: nothing new in the cache, nothing next to it.
    assert set(os.listdir(cache)) == before
    assert not (cache.parent / "escaped.txt").exists() and not os.path.exists("/tmp/absolute-escape.txt")
    assert mme.get("/models/slip").status_code == 404
    assert_healthy(mme, canary)


def test_the_management_api_works_on_one_thread_workers(mme_factory, tmp_path):
    # BYOC_THREADS=1 puts the Flask management routes on LoopWorkers (http1 framing) instead of gthread.
    mme = mme_factory(BYOC_THREADS="1")
    assert "LoopWorker" in mme.log()
    model = sklearn_model(tmp_path / "model")
    assert load(mme, "one-thread", model)["state"] == "ready"
    assert mme.get("/models").json() == {"models": [{"modelName": "one-thread", "modelUrl": str(model)}]}
    assert mme.get("/models/one-thread").json()["modelName"] == "one-thread"
    assert mme.post("/models/one-thread/invoke", **CSV).json() == [1]
    assert mme.post("/models", json={"model_name": "one-thread", "url": str(model)}).status_code == 409
    assert mme.post("/models", data=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert_healthy(mme, "one-thread")
    assert mme.delete("/models/one-thread").status_code == 200
    assert mme.get("/models/one-thread").status_code == 404
    assert mme.get("/ping").status_code == 200


def test_a_load_request_with_control_characters_is_logged_escaped(mme, canary):
    response = mme.post("/models", json={"model_name": "nul-url", "url": "/tmp/\x00x\nFAKE LINE"})
    assert response.status_code == 400, response.text
    assert "url='/tmp/\\x00x\\nFAKE LINE'" in mme.log()
    assert "\x00" not in mme.log() and "\nFAKE LINE" not in mme.log()  # no forged log line, no NUL for grep
    assert_healthy(mme, canary)
