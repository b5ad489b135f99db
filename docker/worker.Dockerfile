# TaskAlign GPU worker: a CUDA PyTorch base and onnxruntime-gpu; the same roles as the CPU
# image (docker/entrypoint.sh), normally `worker`. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t taskalign-gpu .
# Not built on the project's CI machines (no GPU, no Docker Hub); the CPU image, built
# the same way, is (tests/deploy).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 TASKALIGN_HOME=/data TASKALIGN_DATA_DIR=/datasets
COPY docker/certs/ /etc/taskalign/certs/
RUN if [ -f /etc/taskalign/certs/ca-certificates.crt ]; then \
        printf '[global]\ncert = /etc/taskalign/certs/ca-certificates.crt\n' > /etc/pip.conf; fi
WORKDIR /app
COPY docker/constraints.txt /app/docker/constraints.txt
COPY pyproject.toml README.md ./
COPY rules ./rules
COPY zoo ./zoo
COPY service ./service
COPY docker/entrypoint.sh /usr/local/bin/taskalign-entrypoint
# The base's CUDA torch stays; the project's CPU onnxruntime is swapped for the GPU build
# (same module name).
RUN grep -v -E '^(onnxruntime|torch)==' docker/constraints.txt > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt ".[postgres,ray]" \
    && pip uninstall -y onnxruntime \
    && pip install "onnxruntime-gpu>=1.18" \
    && useradd --create-home --uid 10001 taskalign \
    && mkdir -p /data /datasets && chown taskalign /data
USER taskalign
VOLUME /data
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD taskalign-entrypoint health
ENTRYPOINT ["taskalign-entrypoint"]
CMD ["worker"]
