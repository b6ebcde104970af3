# The streamlearn worker (and the simulator, same image), for docker-compose.yml:
#   docker compose build worker
# CPU-only torch keeps the image small; the repository is installed as a package.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.2"

# dependencies first (cached while only the code changes), then the code
COPY pyproject.toml README.md ./
RUN mkdir -p pipeline consumers state \
    && touch pipeline/__init__.py consumers/__init__.py state/__init__.py \
    && pip install . \
    && pip uninstall -y streamlearn
COPY pipeline ./pipeline
COPY consumers ./consumers
COPY state ./state
COPY dashboards/docker ./dashboards/docker
RUN pip install --no-deps .

RUN useradd --system --create-home --uid 10001 streamlearn \
    && mkdir -p /var/lib/streamlearn && chown streamlearn /var/lib/streamlearn
USER streamlearn
VOLUME ["/var/lib/streamlearn"]
EXPOSE 9108
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2)" || exit 1
CMD ["streamlearn", "worker", "--config", "/app/dashboards/docker/worker.toml"]
