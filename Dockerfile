# One image for the Procfile's three processes: web (the default CMD), worker and dashboard.
# compose/ runs it once per role and picks the command per service.
FROM python:3.11-slim

# NVIDIA_DRIVER_CAPABILITIES: workers read their GPU through NVML (nvidia-ml-py); given a GPU with the
# `utility` capability, the NVIDIA container toolkit mounts libnvidia-ml.so. No driver in the image.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=utility

# Only what the package build needs; setup.cfg reads README.md (a warning if it is absent).
WORKDIR /src
COPY pyproject.toml setup.cfg README* ./
COPY common ./common
COPY web ./web
COPY worker ./worker
COPY ops ./ops
RUN pip install --no-cache-dir . \
    && rm -rf /src

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/runner runner
USER 10001:10001
WORKDIR /home/runner

EXPOSE 8000
# gunicorn and the worker drain on SIGTERM: SHUTDOWN_GRACE_S, then about 5 s more.
STOPSIGNAL SIGTERM
# The Procfile's web line: gunicorn on PORT (8000), its settings in web/gunicorn_conf.py.
CMD ["llm-runner", "web"]
