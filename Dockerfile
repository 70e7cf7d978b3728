# The llmops-stream worker and CLI (`llmops-stream run`, `loadgen`, `report`, ...).
#   docker build -t llmops-stream:local .
#   docker run --rm llmops-stream:local run --bootstrap-servers kafka:9092 --clickhouse http://clickhouse:8123
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Every dependency ships manylinux wheels (numpy, numba, chdb, hnswlib, orjson, msgspec...),
# so no compiler is needed in the image.
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY agents ./agents
COPY schemas ./schemas
RUN pip install . && rm -rf /src

RUN useradd --system --create-home --uid 10001 llmops
USER llmops
WORKDIR /home/llmops
# the agents' eval-set refresh files and table store (LLMOPS_REFRESH_DIR and
# LLMOPS_AGENTS_DATA_DIR in docker-compose.yml), owned by this user: a named volume mounted
# there starts with the image directory's owner
RUN mkdir -p /home/llmops/eval-refresh /home/llmops/agents-data
# numba caches compiled kernels next to the installed modules by default, which this
# unprivileged user cannot write; the embedded chDB default path lives in $HOME too.
ENV NUMBA_CACHE_DIR=/home/llmops/.cache/numba

EXPOSE 9464
ENTRYPOINT ["llmops-stream"]
CMD ["--help"]
