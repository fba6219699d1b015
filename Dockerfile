# The forecast service (`weather serve`), installed exactly as the README installs it.
#
#   docker build -t weather .                                  # CPU (default)
#   docker build -t weather-gpu --build-arg JAX_EXTRA=cuda12 . # NVIDIA GPUs (jax[cuda12])
#   docker run -p 8000:8000 -v "$PWD/data:/app/data" \
#       -e WEATHER_API_KEYS=<sha256 hex digest of your key> weather
#
# The container listens on 0.0.0.0, so it needs API keys (the service refuses a non-loopback
# bind without them). The analysis archive (data/era5sim/test.zarr) and the job results live
# on the mounted data/ volume; the checkpoint ships in weather/assets/.
ARG PYTHON=3.11
FROM python:${PYTHON}-slim

# Empty: CPU jax. "cuda12": jax with its CUDA 12 wheels (run with --gpus all).
ARG JAX_EXTRA=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 weather \
    && mkdir -p /app/data \
    && chown -R weather:weather /app
WORKDIR /app
USER weather

# Dependencies first (cached while only the code changes), then the code; both as the README:
# a virtual environment and `pip install -e .`.
COPY --chown=weather:weather pyproject.toml README.md ./
COPY --chown=weather:weather weather ./weather
COPY --chown=weather:weather service ./service
RUN python3 -m venv .venv \
    && .venv/bin/pip install -e . \
    && if [ -n "$JAX_EXTRA" ]; then .venv/bin/pip install "jax[$JAX_EXTRA]"; fi

ENV PATH=/app/.venv/bin:$PATH \
    WEATHER_HOST=0.0.0.0 \
    WEATHER_PORT=8000 \
    WEATHER_COMPILATION_CACHE_DIR=/app/data/jax-cache

VOLUME ["/app/data"]
EXPOSE 8000

# Liveness only: /readyz turns 200 once the model is compiled, which can take minutes on a CPU.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

CMD ["weather", "serve"]
