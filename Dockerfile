# MultiTaskUNet: the bundle (training, evaluation, export) and the batch inference CLI in one image.
# Untested here: this repository's machines can neither pull nor build images.
#
#   docker build -t multitaskunet .                              # CPU build of torch (smaller)
#   docker build --build-arg TORCH=cuda -t multitaskunet:cuda .  # CUDA build (run with --gpus all)
#
# The set-up is the README's: `make setup` creates /app/.venv from the pinned requirements.txt, the
# same step `make demo` and `make test` begin with. Nothing is downloaded when a container runs:
# no weights, no data (the built-in synthetic set is generated), no telemetry.
#
# Entry points (the working directory is the bundle, /app/monai_bundle; mount data and models):
#   docker run --rm -v $PWD/models:/app/monai_bundle/models multitaskunet \
#       python -m monai.bundle run training --config_file configs/train.json
#   docker run --rm -v $PWD/models:/app/monai_bundle/models multitaskunet \
#       python -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json']"
#   docker run --rm -v $PWD/models:/app/monai_bundle/models -v /data:/data multitaskunet \
#       python -m scripts.infer /data/study1_dicom/ --out /data/results/
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# cpu: torch from PyTorch's CPU wheel index (torch==2.13.0 resolves to 2.13.0+cpu);
# cuda: torch from PyPI, whose Linux wheels carry the CUDA libraries (the host needs the NVIDIA driver)
ARG TORCH=cpu

RUN apt-get update \
    && apt-get install -y --no-install-recommends make git \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 mtu
WORKDIR /app
RUN chown mtu:mtu /app
USER mtu

# the Python packages first: this layer is rebuilt only when requirements.txt changes
COPY --chown=mtu:mtu requirements.txt Makefile ./
RUN case "$TORCH" in \
        cpu) export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ;; \
        cuda) ;; \
        *) echo "TORCH must be cpu or cuda, got $TORCH" >&2; exit 2 ;; \
    esac \
    && make setup PYTHON=python3 \
    && rm -rf /home/mtu/.cache/pip

COPY --chown=mtu:mtu . .

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_INDEX=1 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    DVC_NO_ANALYTICS=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app/monai_bundle
LABEL org.opencontainers.image.title="MultiTaskUNet" \
      org.opencontainers.image.description="Joint tumor segmentation and diagnosis: MONAI bundle + batch inference CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
CMD ["python", "-m", "scripts.infer", "--help"]
