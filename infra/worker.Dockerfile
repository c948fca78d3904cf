# A Prefect process worker with this repository installed, as `make setup` installs it.
# Build context is the repository root (see infra/docker-compose.yml).
FROM python:3.11-slim

# git: DVC and the flow's pull steps need this checkout's git history (so .git is copied).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1

# torch and torchvision first, before the code: this multi-GB layer stays cached while
# the code changes. The pinned pair is one build that runs on CPU and on CUDA GPUs.
RUN pip install torch==2.14.1 torchvision==0.29.1

# Flow runs write DVC outputs into the checkout, so they run as its owner, not root.
RUN useradd --create-home --uid 1000 slimline
WORKDIR /opt/slimline
COPY --chown=slimline:slimline . .
RUN pip install -c constraints.txt -e .
USER slimline
CMD ["prefect", "worker", "start", "--pool", "cpu", "--type", "process"]
