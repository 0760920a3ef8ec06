# TDB service image. CPU by default:
#   docker build -t tdb .
#   docker run -p 50051:50051 -p 8080:8080 tdb         # serves the embedded toy model; the web app
#                                                      # and gRPC-Web on http://localhost:8080/
#   docker run -p 50051:50051 -v /models:/models tdb --model gpt2=/models/gpt2
# GPU (a CUDA base image and a CUDA build of torch):
#   docker build -t tdb:cuda --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --gpus all -p 50051:50051 tdb:cuda --device cuda

ARG BASE_IMAGE=python:3.11-slim

# The web app (clients/web), built in a Node stage from its pinned package-lock.json; only the
# static files (dist/) reach the final image, where `tdb serve --http-port` serves them at /.
FROM node:20-slim AS web
WORKDIR /web
RUN npm install -g npm@11 --no-audit --no-fund
COPY clients/web/package.json clients/web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY clients/web/ ./
RUN npm run build

FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_DISABLE_TELEMETRY=1 TDB_HOST=0.0.0.0 TDB_PORT=50051 TDB_LOG_FORMAT=json \
    TDB_HTTP_PORT=8080 TDB_WEB_DIR=/app/clients/web/dist

# CUDA base images ship without pip; install Python when it is missing.
RUN if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && \
      rm -rf /var/lib/apt/lists/*; fi && \
    python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY clients/python /app/clients/python
RUN pip install /app/clients/python
COPY pyproject.toml README.md /app/
COPY tdb_core /app/tdb_core
COPY adapters /app/adapters
COPY services /app/services
COPY benchmarks /app/benchmarks
RUN pip install /app
COPY --from=web /web/dist /app/clients/web/dist

RUN useradd --create-home --uid 10001 tdb
USER tdb
EXPOSE 50051 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; sys.exit(0 if g.HealthStub(grpc.insecure_channel('localhost:50051')).Check(h.HealthCheckRequest(), timeout=3).status == 1 else 1)"
ENTRYPOINT ["tdb", "serve"]
