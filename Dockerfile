# fedxrec's ServerApp (the coordinator) and ClientApp (each site), run by Flower's SuperExec next to
# Flower's official SuperLink and SuperNode images (docker-compose.yml, process isolation).
# The Flower version is the project's pin (pyproject.toml: flwr==1.41.0); Python 3.11 as the project
# requires. The app's dependencies and the default encoder's weights are installed here, because
# the SuperLink runs with runtime dependency installation off and a Flower app bundle carries only
# code and config.
ARG FLWR_VERSION=1.41.0
FROM flwr/superexec:${FLWR_VERSION}-py3.11-ubuntu24.04

WORKDIR /app
# torch first, the CPU build (a looser spec pulls a CUDA build); a GPU site swaps this line.
RUN python -m pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app shared ./shared
COPY --chown=app:app clients ./clients
COPY --chown=app:app server ./server
COPY --chown=app:app simulations ./simulations
RUN python -m pip install --no-cache-dir ".[encoder]"

ENV HF_HUB_OFFLINE=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1

ENTRYPOINT ["flower-superexec"]
