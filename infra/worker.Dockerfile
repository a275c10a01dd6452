# The factsmith worker image: a Prefect process worker (and Dask worker, and MLflow server) with factsmith
# installed. Built from the repository root:
#
#   docker build -f infra/worker.Dockerfile -t factsmith-worker:0.1.0 .
#
# torch comes first, from the PyTorch index, so that installing factsmith (torch==2.13.0) finds it satisfied
# instead of pulling the default CUDA build from PyPI (GBs). For GPU nodes build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128   (the CUDA release the nodes' driver supports)
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"

WORKDIR /opt/factsmith
# Dependencies change less often than the code: one layer for them, read from pyproject.toml alone. Besides
# them: the MLflow server's PostgreSQL driver, and boto3 for MLflow's S3 artifact store (clients and server).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "psycopg2-binary>=2.9,<3" "boto3>=1.34,<2" \
    && rm /tmp/requirements.txt

# The source stays here too: deployments name their flows by path (flows/stats_flow.py:sharded_stats).
COPY editing ./editing
COPY validation ./validation
COPY registry ./registry
COPY flows ./flows
COPY sandbox ./sandbox
RUN pip install --no-deps .

# Models, the editing cache (covariance statistics) and the local registry fallback live in FACTSMITH_HOME:
# a volume, so they outlive the container and are shared with the Dask workers.
RUN useradd --create-home --uid 1000 factsmith \
    && mkdir -p /data/factsmith \
    && chown factsmith:factsmith /data/factsmith
ENV FACTSMITH_HOME=/data/factsmith \
    HF_HUB_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1
VOLUME /data/factsmith
USER factsmith

CMD ["prefect", "worker", "start", "--pool", "factsmith", "--type", "process"]
