"""nginx's own CPU per request with our nginx.conf, for A/B-ing config changes without a worker's noise.

Renders the shipped template (and, with ``--template``, another one) as ``serve`` does, points the
``app`` upstream at a constant answered by a second nginx (bench/serving.py's nginx-proxy backend),
and drives each front in turn with wrk at 1 connection (1-row CSV ``POST /invocations``, rounds of
2 s). Prints, per front, the median over the rounds of its nginx worker's CPU per request (from
/proc) and of wrk's p50, next to the nginx-proxy floor's front: the least a proxying nginx costs.
A worker behind the front would add its own noise of ±10 µs per request; the front's CPU moves by
about ±1 µs between runs.

    .venv/bin/python bench/nginx_front.py
    git show HEAD~1:nginx.conf > /tmp/old.conf && .venv/bin/python bench/nginx_front.py --template /tmp/old.conf
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serving  # noqa: E402

from byoc_serve.config import load_settings  # noqa: E402
from byoc_serve.nginx_conf import NGINX_TEMP_DIRS, render_nginx_conf, template_text  # noqa: E402

WORKER_SOCKET = re.compile(r"unix:\S+/workers/\d+\.sock")


def front(work: Path, name: str, template: str, backend_socket: Path) -> serving.Server:
    """nginx with our config rendered from ``template``, every upstream server being the backend."""
    run = work / f"run-{name}"
    for temp in NGINX_TEMP_DIRS:
        (run / "nginx" / temp).mkdir(parents=True)
    port = serving.free_port()
    settings = load_settings({"BYOC_RUN_DIR": str(run), "SAGEMAKER_BIND_TO_PORT": str(port), "BYOC_MODEL_DIR": str(work)})
    conf = run / "nginx.conf"
    conf.write_text(WORKER_SOCKET.sub(f"unix:{backend_socket}", render_nginx_conf(settings, template)))
    argv = [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf)]
    return serving.Server(name, port, argv, dict(os.environ), work / f"{name}.log")


def nginx_worker(server: serving.Server) -> psutil.Process:
    return psutil.Process(server.proc.pid).children()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, help="another nginx.conf template to compare with the shipped one")
    parser.add_argument("--rounds", type=int, default=8, help="rounds, the fronts in turn (default 8)")
    args = parser.parse_args(argv)
    templates = {"shipped": template_text()}
    if args.template:
        templates[args.template.name] = args.template.read_text()
    with tempfile.TemporaryDirectory(prefix="byoc-nginx-front-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers run as nobody when this runs as root
        body = work / "body.csv"
        body.write_bytes(serving.csv_payload(1))
        script = serving.write_post_script(work / "post.lua", body)
        backend = serving._nginx_server(work, "nginx-backend", serving.NGINX_BACKEND_SERVERS)
        backend_socket = serving._nginx_run_dir(work, "nginx-backend") / "constant.sock"
        fronts = {name: front(work, name, text, backend_socket) for name, text in templates.items()}
        floor = serving._nginx_server(work, "nginx-proxy", serving.NGINX_PROXY_SERVERS, backend=backend_socket.parent)
        fronts["nginx-proxy floor"] = floor
        cpu_us: dict[str, list[float]] = {name: [] for name in fronts}
        p50_us: dict[str, list[float]] = {name: [] for name in fronts}
        try:
            backend.start()
            for server in fronts.values():
                server.start()
                server.wait_ping("/invocations")
                serving.run_wrk(server.port, "/invocations", script, 1, 1)
            for _ in range(args.rounds):
                for name, server in fronts.items():
                    worker = nginx_worker(server)
                    before = sum(worker.cpu_times()[:2])
                    output = serving.run_wrk(server.port, "/invocations", script, 1, 2)
                    used = sum(worker.cpu_times()[:2]) - before
                    requests = int(re.search(r"(\d+) requests in", output).group(1))
                    cpu_us[name].append(used / requests * 1e6)
                    p50_us[name].append(serving.parse_wrk(output, name, 1, 1).p50_ms * 1000)
        finally:
            for server in [*fronts.values(), backend]:
                server.stop()
    print(f"front nginx at 1 connection, {args.rounds} rounds of 2 s; medians (round values)")
    for name in fronts:
        rounds = ", ".join(f"{value:.1f}" for value in cpu_us[name])
        print(f"  {name:20s} CPU {statistics.median(cpu_us[name]):5.1f} µs/request ({rounds})  p50 {statistics.median(p50_us[name]):5.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
