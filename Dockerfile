# livemig daemons (source-daemon, dest-daemon) and tools (livemig, faultproxy) in one image.
#
# For users with an image registry:  docker compose build   (base python:3.12-slim, deps from PyPI)
# Offline (as CI does, see scripts/compose-e2e): build the wheels on the host first
#   (pip wheel . -w docker/wheels), then pass a local Debian base and PIP_OFFLINE=1:
#   docker compose build --build-arg BASE_IMAGE=livemig-base:bookworm --build-arg PIP_OFFLINE=1
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG PIP_OFFLINE=0
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/livemig/bin:$PATH

COPY pyproject.toml README.md /src/
COPY protocol /src/protocol
COPY vmsim /src/vmsim
COPY netio /src/netio
COPY migration /src/migration
COPY vmm /src/vmm
COPY source_daemon /src/source_daemon
COPY dest_daemon /src/dest_daemon
COPY livemig /src/livemig
COPY faultproxy /src/faultproxy
COPY docker/wheels /wheels

RUN python3 -m venv /opt/livemig \
 && if [ "$PIP_OFFLINE" = "1" ]; then \
      pip install --no-index --find-links /wheels livemig; \
    else \
      pip install /src; \
    fi \
 && rm -rf /wheels /root/.cache

# QMP on 4444, migration on 7777; the fault proxy's control API on 8474.
EXPOSE 4444 7777 8474
HEALTHCHECK --interval=2s --timeout=3s --retries=15 \
  CMD ["livemig", "qmp", "tcp:127.0.0.1:4444", "query-status"]
CMD ["dest-daemon", "--qmp", "tcp:0.0.0.0:4444", "--incoming", "tcp:0.0.0.0:7777"]
