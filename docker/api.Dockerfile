# TaskAlign API image: CPU only (ONNX inference on CPU, no CUDA libraries).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t taskalign-api .
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    TASKALIGN_HOME=/data TASKALIGN_WORKER=false
WORKDIR /app

# CPU wheel of torch first, so that resolving the project never pulls a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY rules ./rules
COPY zoo ./zoo
COPY service ./service
RUN pip install ".[postgres]" && useradd --create-home --uid 10001 taskalign \
    && mkdir -p /data && chown taskalign /data
USER taskalign

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["taskalign", "serve", "--host", "0.0.0.0", "--port", "8000"]
