# FreshNets: one image for the API, the workers and the one-shot migration.
#   docker build -t freshnets .                                   # CPU torch (default)
#   docker build -t freshnets:cuda --build-arg TORCH_VARIANT=cu126 .  # a CUDA build of torch
# TORCH_VARIANT picks the PyTorch wheel index (https://download.pytorch.org/whl/<variant>):
# "cpu", or a CUDA tag such as cu126 or cu128 matching the host's driver.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FRESHNETS_DATA_DIR=/data

RUN useradd --create-home --uid 1000 freshnets \
    && mkdir -p /data && chown freshnets:freshnets /data

# torch first, from the chosen index, in its own layer: the largest download, rarely changed.
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

WORKDIR /srv/freshnets
COPY pyproject.toml README.md ./
COPY freshcore ./freshcore
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . && python -c "import freshcore, app.main, worker.tasks"

USER freshnets
VOLUME ["/data"]
EXPOSE 8000

# The API by default; docker-compose.yml gives the worker and the migration their own commands.
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
