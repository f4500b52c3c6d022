# fedagg container image.
#
# Two ways to build it, one Dockerfile:
#
#   docker build .   (or podman build .)   from a fresh clone, with network access: the `wheels-index` stage builds
#       fedagg's wheel from this source tree and downloads its runtime dependencies from the package index, at the
#       versions pinned in constraints.txt. Needs BuildKit (Docker's default builder) or podman/buildah, which build
#       only the stages the target needs.
#   scripts/build-image   (`make image`; what the tests use): hermetic. The script builds the wheel and downloads
#       the dependencies on the host into .cache/image/wheels/ and builds with `--build-arg WHEELS=wheels-context
#       --network none`: the `wheels-context` stage copies those wheels and nothing reaches the network.
#
# Either way the `build` stage installs the wheels with --no-index into a virtual environment, and the runtime
# stage gets that environment only (no compiler, no pip). The base image is an ordinary python:3.11-slim-bookworm,
# or the debootstrap'd stand-in made by scripts/make-base-image where no registry is reachable (it provides
# Debian's python3.11 as /usr/bin/python3); build with --pull=never there.
#
#   ports    50051 federation gRPC (mTLS, collaborators)   50052 ops gRPC (health, reflection; plaintext)
#            50053 Prometheus /metrics (HTTP)
#   files    /etc/fedagg/fedagg.yaml (config, read-only)    /etc/fedagg/tls/ (a kubernetes.io/tls secret)
#            /var/lib/fedagg (state and models: a volume)   /tmp (scratch: a tmpfs/emptyDir)
#   runs as  10001:10001, read-only root filesystem friendly, SIGTERM drains and exits 0.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
# The stage the wheels come from: wheels-index (the default: built and downloaded here; network needed) or
# wheels-context (.cache/image/wheels/, put there by scripts/build-image; no network needed). The default is
# written in the FROM below (not here) because buildah, when it skips unused stages, resolves FROM with the
# --build-arg values only.
ARG WHEELS

# --- wheels from the source tree and the package index (the default) -----------------------------------------
# hadolint cannot tell that the `wheels` stage below (FROM a build argument) uses this stage, and checks it as if it
# were an image of its own; its wheels reach the image only through the build stage and the labelled runtime stage.
# hadolint ignore=DL3049
FROM ${PYTHON_IMAGE} AS wheels-index
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY service/ service/
# A throwaway venv provides pip (the stand-in base has ensurepip only). fedagg's wheel is built from the sources
# (setuptools comes from the index, build isolation); every runtime dependency is downloaded as a binary wheel at
# its constraints.txt version, next to it.
RUN python3 -m venv /tmp/pip \
 && /tmp/pip/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /tmp/pip/bin/pip download --no-cache-dir --only-binary=:all: --dest /wheels --constraint constraints.txt \
      "fedagg[server] @ file://$(ls /wheels/fedagg-*.whl)"

# --- wheels downloaded on the host by scripts/build-image (WHEELS=wheels-context; no network) ----------------
# hadolint ignore=DL3049
FROM scratch AS wheels-context
COPY .cache/image/wheels/ /wheels/

FROM ${WHEELS:-wheels-index} AS wheels

# --- build: a virtual environment from the wheels -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG VERSION=0.1.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY --from=wheels /wheels/ /wheels/
# ensurepip (python3-venv) provides pip offline. Every package comes from /wheels, binary only; pip fails the
# build if anything fedagg needs is missing there. Then the environment is slimmed: pip and setuptools go (the
# runtime installs nothing), and so do test suites and the kubernetes client's asyncio twin (kubernetes/aio,
# 68 MB; fedagg uses the synchronous client). Every fedagg module is imported after the pruning, as a check.
RUN python3 -m venv /opt/fedagg \
 && /opt/fedagg/bin/pip install --no-cache-dir --no-index --only-binary=:all: --find-links=/wheels \
      "fedagg[server]==${VERSION}" \
 && /opt/fedagg/bin/pip uninstall --yes --quiet pip setuptools \
 && site=/opt/fedagg/lib/python3.11/site-packages \
 && rm -rf "$site/kubernetes/aio" "$site/kubernetes/test" \
 && find "$site" -depth -type d -name tests -path "$site/numpy/*" -exec rm -rf {} + \
 && /opt/fedagg/bin/python -c "import importlib, pkgutil, fedagg; [importlib.import_module(m.name) for m in pkgutil.walk_packages(fedagg.__path__, 'fedagg.') if not m.name.endswith('__main__')]" \
 && /opt/fedagg/bin/fedagg --version

# --- runtime --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# A named user for tools that look the UID up; the numeric IDs are what Kubernetes' runAsNonRoot checks.
# The state directory belongs to it (a mounted volume replaces it; fsGroup 10001 keeps that writable). The mount
# points of the chart's volumes exist already, so that the runtime never has to create them.
RUN groupadd --gid 10001 fedagg \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/fedagg --shell /usr/sbin/nologin fedagg \
 && mkdir -p /etc/fedagg/config /etc/fedagg/tls /etc/fedagg/openfl /etc/fedagg/model /var/lib/fedagg \
 && chown 10001:10001 /var/lib/fedagg \
 && chmod 0750 /var/lib/fedagg

COPY --from=build /opt/fedagg /opt/fedagg

ENV PATH=/opt/fedagg/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

USER 10001:10001
WORKDIR /var/lib/fedagg
EXPOSE 50051/tcp 50052/tcp 50053/tcp 50054/tcp
STOPSIGNAL SIGTERM
# Liveness of the process on the ops port (container engines that honour HEALTHCHECK; Kubernetes ignores it and
# uses the chart's native gRPC probes instead).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/opt/fedagg/bin/fedagg", "health", "--address", "localhost:50052", "--timeout", "3"]
ENTRYPOINT ["/opt/fedagg/bin/fedagg"]
CMD ["serve", "--config", "/etc/fedagg/fedagg.yaml"]

# Metadata last, so that a new revision does not invalidate the layers above.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="fedagg" \
      org.opencontainers.image.description="Federated-learning aggregator speaking OpenFL's aggregator gRPC protocol" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
