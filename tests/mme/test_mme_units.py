"""The multi-model building blocks on their own: admission, budget detection, names, archives, the disk
cache, s3 fetching (AWS stood in for by botocore's Stubber) and the shared activity page."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Iterator

import boto3
import psutil
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from byoc_serve.archives import (
    ArtifactNotFound,
    DiskCache,
    InsufficientDisk,
    UnsafeArchive,
    download_s3,
    extract_archive,
    inspect_archive,
    reading_artifact,
    resolve_url,
    s3_object_size,
)
from byoc_serve.config import MIB, Settings
from byoc_serve.errors import BadRequest, InsufficientMemory
from byoc_serve.memory import MemoryBudget, Resident, container_memory_limit, plan_admission
from byoc_serve.mme.activity import Activity
from byoc_serve.mme.host import as_load_failure, bind_server, fetch_artifact, serve
from byoc_serve.mme.names import max_name_length, validate_model_name
from byoc_serve.mme.registry import ModelRecord, Registry

BUDGET = MemoryBudget(100 * MIB, "test")


def resident(name: str, mib: int, last_used: float, busy: bool = False) -> Resident:
    return Resident(name, mib * MIB, last_used, busy)


def test_admission_fits_without_evicting():
    assert plan_admission(BUDGET, 30 * MIB, [resident("a", 40, 1)], committed=20 * MIB, policy="lru") == []


def test_sagemaker_policy_refuses_instead_of_evicting():
    with pytest.raises(InsufficientMemory, match="unload a model"):
        plan_admission(BUDGET, 30 * MIB, [resident("a", 80, 1)], committed=0, policy="sagemaker")


def test_lru_evicts_idle_models_oldest_first_until_it_fits():
    residents = [resident("new", 30, 9), resident("old", 30, 1), resident("mid", 30, 5)]
    assert plan_admission(BUDGET, 50 * MIB, residents, committed=0, policy="lru") == ["old", "mid"]


def test_lru_skips_busy_models_and_refuses_when_only_busy_ones_would_make_room():
    residents = [resident("busy-old", 40, 1, busy=True), resident("idle", 40, 5)]
    assert plan_admission(BUDGET, 40 * MIB, residents, committed=0, policy="lru") == ["idle"]
    with pytest.raises(InsufficientMemory, match="1 busy"):
        plan_admission(BUDGET, 70 * MIB, residents, committed=0, policy="lru")


def test_a_model_larger_than_the_budget_is_refused_under_every_policy():
    for policy in ("lru", "sagemaker"):
        with pytest.raises(InsufficientMemory, match="larger than the whole budget"):
            plan_admission(BUDGET, 101 * MIB, [], committed=0, policy=policy)


def write_cgroups(root: Path, v2: str | None = None, v1: str | None = None) -> Path:
    if v2 is not None:
        (root / "memory.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "memory").mkdir()
        (root / "memory" / "memory.limit_in_bytes").write_text(v1 + "\n")
    proc = root / "proc-self-cgroup"
    proc.write_text("4:memory:/\n0::/\n")
    return proc


def test_budget_comes_from_cgroup_v2_memory_max_minus_the_reserve(tmp_path):
    proc = write_cgroups(tmp_path, v2=str(2048 * MIB))
    assert container_memory_limit(tmp_path, proc) == (2048 * MIB, "cgroup v2 memory.max")
    budget = MemoryBudget.detect(Settings(memory_reserve_bytes=256 * MIB), tmp_path)
    assert budget.total == 1792 * MIB and "cgroup v2" in budget.source


def test_budget_falls_back_to_cgroup_v1_then_host_memory(tmp_path):
    proc = write_cgroups(tmp_path, v2="max", v1=str(1024 * MIB))
    assert container_memory_limit(tmp_path, proc) == (1024 * MIB, "cgroup v1 memory.limit_in_bytes")
    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    proc = write_cgroups(unlimited, v1="9223372036854771712")  # v1's "no limit"
    assert container_memory_limit(unlimited, proc) == (psutil.virtual_memory().total, "host memory")


def test_budget_setting_overrides_detection(tmp_path):
    write_cgroups(tmp_path, v2=str(2048 * MIB))
    assert MemoryBudget.detect(Settings(memory_budget_bytes=300 * MIB), tmp_path) == MemoryBudget(300 * MIB, "BYOC_MEMORY_BUDGET_MB")


@pytest.mark.parametrize("mode, status", [("0", 400), ("1", 400), ("2", 507)])
def test_a_memory_error_while_loading_is_a_507_only_when_the_kernel_refuses_for_lack_of_free_memory(tmp_path, mode, status):
    (tmp_path / "overcommit_memory").write_text(mode + "\n")
    failure = as_load_failure(MemoryError(), tmp_path / "overcommit_memory")
    assert failure.status == status
    assert ("corrupt" in failure.message) == (status == 400)


def test_model_names_accept_opaque_hashes_and_refuse_paths(tmp_path):
    assert validate_model_name("a1b2c3d4e5f6", tmp_path) == "a1b2c3d4e5f6"
    assert validate_model_name("model_v1.2-beta", tmp_path) == "model_v1.2-beta"
    for bad in ("../x", "x/y", "a..b", "\x00", "", "-leading", None, 42):
        with pytest.raises(BadRequest):
            validate_model_name(bad, tmp_path)


def test_model_names_must_fit_a_unix_socket_path():
    run_dir = Path("/tmp") / ("r" * 40)
    limit = max_name_length(run_dir)
    assert len(str(run_dir / "models" / ("x" * limit))) + len(".sock") == 107
    validate_model_name("x" * limit, run_dir)
    with pytest.raises(BadRequest, match="socket path"):
        validate_model_name("x" * (limit + 1), run_dir)


def test_pages_follow_name_order_and_skip_nothing_when_models_come_and_go(tmp_path):
    registry = Registry()
    source = resolve_url(str(tmp_path))
    for name in ("c", "a", "d", "b"):
        registry.add(ModelRecord(name, source, state="ready"))
    registry.add(ModelRecord("loading", source))
    first = registry.page("2", None)
    assert [m["modelName"] for m in first["models"]] == ["a", "b"]
    registry.remove(registry.get("a"))  # an unload between two calls
    second = registry.page(2, first["nextPageToken"])
    assert [m["modelName"] for m in second["models"]] == ["c", "d"] and "nextPageToken" not in second


@pytest.mark.parametrize("token", ["!!!!", "%%%", "_w", "YQ==", "YR", "YSBi"], ids=["not-base64", "percents", "not-utf8", "padded", "odd-bits", "not-a-name"])
def test_a_page_token_this_server_did_not_issue_is_refused(tmp_path, token):
    registry = Registry()
    registry.add(ModelRecord("a", resolve_url(str(tmp_path)), state="ready"))
    registry.add(ModelRecord("b", resolve_url(str(tmp_path)), state="ready"))
    assert registry.page(1, registry.page(1, None)["nextPageToken"])["models"][0]["modelName"] == "b"
    with pytest.raises(BadRequest, match="not a token this server issued"):
        registry.page(1, token)


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            member.size = len(data) if member.isfile() else 0
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, target
    return member


@pytest.mark.parametrize(
    "member",
    [
        link("model.bin", "weights/model.bin", tarfile.SYMTYPE),  # inside, but SageMaker cannot extract it
        link("weights/copy.bin", "weights/model.bin", tarfile.LNKTYPE),
    ],
)
def test_links_are_refused_even_inside_the_archive(tmp_path, member):
    archive = make_tar(tmp_path / "model.tar.gz", [(tarfile.TarInfo("weights/model.bin"), b"w" * 5000), (member, b"")])
    with pytest.raises(UnsafeArchive, match="SageMaker cannot extract links"):
        inspect_archive(archive)


def test_unsafe_members_are_named_in_the_error(tmp_path):
    archive = make_tar(tmp_path / "model.tar.gz", [(link("code/evil", "../../../etc/shadow", tarfile.SYMTYPE), b"")])
    with pytest.raises(UnsafeArchive, match="code/evil"):
        inspect_archive(archive)


def test_urls_are_classified_before_anything_is_read(tmp_path):
    assert resolve_url(str(tmp_path)).kind == "directory"
    assert resolve_url("s3://my-bucket/models/model.tar.gz").kind == "s3"
    with pytest.raises(BadRequest):
        resolve_url("s3://my-bucket/models/prefix/")
    with pytest.raises(BadRequest):
        resolve_url("file:///etc")
    with pytest.raises(ArtifactNotFound):
        resolve_url(str(tmp_path / "missing"))


def test_what_the_filesystem_refuses_about_a_url_is_the_urls_fault(tmp_path):
    too_long = str(tmp_path / ("a" * 300))
    with pytest.raises(BadRequest, match=f"^cannot read {too_long}: File name too long$") as refused:
        resolve_url(too_long)
    assert refused.value.kind == "unusable_artifact"
    with pytest.raises(BadRequest, match=r"^cannot read /m/w \(in /m\): Permission denied$"):
        with reading_artifact("/m"):
            raise PermissionError(errno.EACCES, "Permission denied", "/m/w")
    with pytest.raises(ArtifactNotFound, match=r"^no model artifact at /m/w \(in /m\)$"):
        with reading_artifact("/m"):  # a file removed while it was being read
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/m/w")


def test_disk_cache_deletes_unused_copies_lru_first_and_keeps_used_ones(tmp_path):
    cache = DiskCache(tmp_path / "cache", budget=3000)
    source = resolve_url(str(tmp_path))
    keys = {name: DiskCache.key(name, source) for name in "abcd"}
    for name in "abc":
        cache.reserve(keys[name], 1000, name).mkdir()
        cache.complete(keys[name], 1000)
    cache.release(keys["b"], "b")
    cache.release(keys["a"], "a")  # a was released last, b is the least recently used
    cache.reserve(keys["d"], 1000, "d")
    assert sorted(cache.copies) == sorted([keys["a"], keys["c"], keys["d"]])
    assert not (tmp_path / "cache" / keys["b"]).exists()
    assert cache.lookup(keys["a"], "a") == tmp_path / "cache" / keys["a"]  # a reload finds its copy
    with pytest.raises(InsufficientDisk, match=str(tmp_path / "cache")):
        cache.reserve(DiskCache.key("e", source), 1000, "e")  # a, c, d are all in use


def test_disk_cache_refuses_more_than_the_free_space_even_without_a_budget(tmp_path):
    cache = DiskCache(tmp_path / "cache", budget=None)
    with pytest.raises(InsufficientDisk, match="bytes needed"):
        cache.reserve("0" * 20, 1 << 60, "huge")


@pytest.fixture
def s3():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    with Stubber(client) as stubber:
        yield client, stubber


def test_s3_artifact_is_sized_and_downloaded(s3, tmp_path):
    client, stubber = s3
    payload = os.urandom(3000)
    params = {"Bucket": "models", "Key": "fraud/model.tar.gz"}
    stubber.add_response("head_object", {"ContentLength": len(payload)}, params)
    stubber.add_response("get_object", {"Body": StreamingBody(io.BytesIO(payload), len(payload))}, params)
    assert s3_object_size("s3://models/fraud/model.tar.gz", client) == 3000
    assert download_s3("s3://models/fraud/model.tar.gz", tmp_path / "model.tar.gz", client) == 3000
    assert (tmp_path / "model.tar.gz").read_bytes() == payload
    stubber.assert_no_pending_responses()


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real filesystem that runs out of space (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_disk_that_fills_up_during_extraction_or_download_is_507(full_disk, tmp_path, s3):
    archive = make_tar(tmp_path / "big.tar.gz", [(tarfile.TarInfo("model.joblib"), os.urandom(512 * 1024))])
    with pytest.raises(InsufficientDisk) as caught:
        extract_archive(archive, full_disk / "copy")
    assert caught.value.status == 507 and f"{full_disk} filled up while big.tar.gz was extracted" in caught.value.message
    client, stubber = s3
    payload = archive.read_bytes()
    stubber.add_response("get_object", {"Body": StreamingBody(io.BytesIO(payload), len(payload))},
                         {"Bucket": "models", "Key": "big.tar.gz"})
    with pytest.raises(InsufficientDisk) as caught:
        download_s3("s3://models/big.tar.gz", full_disk / "big.tar.gz", client)
    assert f"{full_disk} filled up while s3://models/big.tar.gz was downloaded" in caught.value.message
    assert not (full_disk / "big.tar.gz").exists()


def test_s3_missing_object_is_404_and_denied_access_is_400(s3):
    client, stubber = s3
    stubber.add_client_error("head_object", service_error_code="404", http_status_code=404)
    with pytest.raises(ArtifactNotFound):
        s3_object_size("s3://models/missing.tar.gz", client)
    stubber.add_client_error("head_object", service_error_code="403", http_status_code=403)
    with pytest.raises(BadRequest, match="cannot read"):
        s3_object_size("s3://models/secret.tar.gz", client)


class ManagerStandIn:
    """The manager's side of a host's load, answered from a real DiskCache."""

    def __init__(self, cache: DiskCache, key: str):
        self.cache, self.key, self.asked = cache, key, []

    def ask(self, event: str, **fields) -> dict:
        self.asked.append((event, fields["bytes"]))
        if event == "need_disk":
            return {"dir": str(self.cache.reserve(self.key, fields["bytes"], "fraud"))}
        self.cache.complete(self.key, fields["bytes"])
        return {}


def test_s3_archive_is_downloaded_checked_and_extracted_into_the_cache(s3, tmp_path):
    client, stubber = s3
    archive = make_tar(tmp_path / "upload.tar.gz", [(tarfile.TarInfo("model.joblib"), b"m" * 2000)])
    payload = archive.read_bytes()
    params = {"Bucket": "models", "Key": "fraud/model.tar.gz"}
    stubber.add_response("head_object", {"ContentLength": len(payload)}, params)
    stubber.add_response("get_object", {"Body": StreamingBody(io.BytesIO(payload), len(payload))}, params)
    source = resolve_url("s3://models/fraud/model.tar.gz")
    cache = DiskCache(tmp_path / "cache", budget=None)
    manager = ManagerStandIn(cache, DiskCache.key("fraud", source))
    model_dir = fetch_artifact(source, manager, client)
    assert (model_dir / "model.joblib").read_bytes() == b"m" * 2000
    assert [event for event, _ in manager.asked] == ["need_disk", "need_disk", "extracted"]
    assert manager.asked[1][1] > manager.asked[0][1]  # room for the download, then for download + extraction
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name != ".lock"] == [model_dir.name]  # no download left


def test_activity_written_by_a_forked_host_is_read_by_the_manager():
    activity = Activity()
    pid = os.fork()
    if pid == 0:
        activity.attach()
        activity.begin()
        activity.begin()
        activity.end()
        os._exit(0)
    os.waitpid(pid, 0)
    assert activity.in_flight() == 1
    assert activity.last_used() > 0
    activity.close()


def test_a_sigterm_that_came_before_the_host_served_ends_it_once_its_request_in_flight_is_done(tmp_path):
    """An unload's SIGTERM can arrive while a new host still starts its threads. With a handler and
    signal.pause(), one that arrived just before pause() left the host asleep until SIGKILL."""
    settings = Settings(threads=2, timeout_s=20)
    activity = Activity()
    server = bind_server(tmp_path / "m.sock", lambda environ, start_response: [], settings)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # as run_host does before "ready"
            os.kill(os.getpid(), signal.SIGTERM)
            activity.attach()
            activity.begin()  # a request in flight, done in 0.5 s
            threading.Timer(0.5, activity.end).start()
            serve(server, activity, settings)
        finally:
            os._exit(1)  # never back into pytest in the child
    server.close()
    deadline = time.monotonic() + 10
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if waited == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the host did not end within 10 s of a pending SIGTERM")
    assert os.waitstatus_to_exitcode(waited[1]) == 0
    assert time.monotonic() - started >= 0.5  # it waited for the request in flight
    assert activity.in_flight() == 0
    activity.close()


def test_a_cache_directory_serves_one_running_server_at_a_time(tmp_path):
    first = DiskCache(tmp_path / "cache", budget=None)
    with pytest.raises(RuntimeError, match="in use by another running serve"):
        DiskCache(tmp_path / "cache", budget=None)
    assert first.copies == {}
