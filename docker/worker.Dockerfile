# TaskAlign GPU worker: CUDA PyTorch base image and onnxruntime-gpu. It claims jobs from
# the shared PostgreSQL database and runs them on the GPU (AMP, channels-last).
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t taskalign-worker .
ARG CUDA_BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${CUDA_BASE}

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TASKALIGN_HOME=/data
WORKDIR /app

COPY pyproject.toml README.md ./
COPY rules ./rules
COPY zoo ./zoo
COPY service ./service
# The project depends on the CPU onnxruntime; swap it for the GPU build (same module name).
RUN pip install ".[postgres]" \
    && pip uninstall -y onnxruntime \
    && pip install "onnxruntime-gpu>=1.18" \
    && python -c "import torch, onnxruntime; print(torch.__version__, onnxruntime.get_available_providers())"

CMD ["taskalign", "worker"]
