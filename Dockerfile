# cdc-tracker: run beside the application's PostgreSQL.
#   docker build -t cdc-tracker .
#   docker run -v $PWD/config:/config -e CDC_TRACKER_DSN=... \
#     -e RUDDERSTACK_DATA_PLANE_URL=... -e RUDDERSTACK_WRITE_KEY=... cdc-tracker
FROM python:3.11-slim AS build
# The wal2json row reader is compiled; the image that runs it needs no compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY cdc_tracker ./cdc_tracker
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app cdc-tracker
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY cdc_tracker/examples/rulebook.yaml /config/rulebook.yaml
USER cdc-tracker
WORKDIR /app
# Probes come from outside the container: listen on all of its interfaces.
ENV CDC_TRACKER_RULEBOOK=/config/rulebook.yaml \
    CDC_TRACKER_LOG_FORMAT=json \
    CDC_TRACKER_METRICS_ADDRESS=0.0.0.0:9187 \
    PYTHONUNBUFFERED=1
EXPOSE 9187
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=2)"
VOLUME ["/config"]
ENTRYPOINT ["cdc-tracker"]
CMD ["run"]
