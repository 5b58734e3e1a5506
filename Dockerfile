# syntax=docker/dockerfile:1
# Build stage: wheels for the gateway and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Run stage: no compilers, no sources, a non-root user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
# The data directory (usage journal, embedded stores) is the gateway's alone; a named volume
# mounted here starts with this owner and mode.
RUN mkdir -p /app/data && chown gateway /app/data && chmod 700 /app/data
USER gateway
WORKDIR /app
ENV LLAMA_GATEWAY_CONFIG=/etc/llama-gateway/gateway.yaml
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health').status != 200)"
ENTRYPOINT ["llama-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
