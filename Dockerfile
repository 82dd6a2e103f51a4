# CPU image for byoc-serve: slim Python, nginx, the runtime and the frameworks named in FRAMEWORKS.
#
#   docker build --network host -t byoc-serve:cpu .
#   docker build --network host --build-arg FRAMEWORKS=sklearn,xgboost,torch -t byoc-serve:cpu-torch .
#
# Written for the classic builder (no BuildKit-only syntax) so a plain build gives a single-arch
# Docker v2 image, the only manifest type SageMaker CreateModel accepts. `byoc build` does this.
# A torch wheel placed in ./wheels/ is installed instead of the index's; other wheels there are
# offered to pip with --find-links (a newer version on the index still wins).
# `byoc build --requirements FILE` adds FILE as wheels/requirements.txt, pip-installed after the deps
# and constrained to the versions they installed, so a conflicting pin fails the build.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG FRAMEWORKS=sklearn,xgboost
ARG NUMPY_VERSION=1.26.4
# torch: a torch wheel in ./wheels/ wins; else this index, so the CPU image gets CPU wheels
# (PyPI's torch is a multi-GB CUDA build). Empty means plain PyPI.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, from pyproject.toml alone, so code changes do not reinstall frameworks.
# `wheels*` copies the optional wheels/ directory's files next to pyproject.toml (none if absent).
COPY pyproject.toml wheels* /tmp/deps/
RUN set -eux; cd /tmp/deps; touch README.md; \
    case ",${FRAMEWORKS}," in \
      *,torch,*) if ls /tmp/deps/torch-*.whl >/dev/null 2>&1; then pip install /tmp/deps/torch-*.whl; \
                 elif [ -n "${TORCH_INDEX_URL}" ]; then pip install --index-url "${TORCH_INDEX_URL}" torch; fi ;; \
    esac; \
    pip install --find-links /tmp/deps "numpy==${NUMPY_VERSION}" ".[${FRAMEWORKS}]"; \
    pip uninstall -y byoc-serve; \
    if [ -f /tmp/deps/requirements.txt ]; then pip list --format=freeze > /tmp/runtime-constraints.txt; \
      pip install --find-links /tmp/deps -c /tmp/runtime-constraints.txt -r /tmp/deps/requirements.txt; fi

COPY . /tmp/src
RUN pip install --no-deps /tmp/src && pip check

FROM ${BASE_IMAGE}
# The debootstrap base already has nginx; python:3.11-slim does not.
RUN command -v nginx >/dev/null || { apt-get update \
      && apt-get install -y --no-install-recommends nginx \
      && rm -rf /var/lib/apt/lists/*; }
COPY --from=build /opt/venv /opt/venv

LABEL com.amazonaws.sagemaker.capabilities.multi-models=true \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080

# SageMaker starts the container as `docker run IMAGE serve`: exec form, so `serve` is PID 1 and
# receives SIGTERM itself (tini is not allowed); serve accepts the repeated word "serve".
# Debug shells: docker run --rm -it --entrypoint bash IMAGE
ENTRYPOINT ["serve"]
CMD ["serve"]
