# The stashflow image: `stashflow` is the entrypoint, so the container's command is a subcommand.
#
#   docker build -t stashflow .
#   docker run --rm stashflow --help
#   docker run --rm -p 8081:8081 -v stashflow-data:/data stashflow coordinator --host 0.0.0.0 --data-dir /data
#
# Two stages: the first installs stashflow into a virtualenv (dependencies in a layer of their own, redone
# only when pyproject.toml changes), the second copies that virtualenv, so the final image holds no
# build-time files and no second copy of the source. Plain COPY/RUN only, so the legacy builder that
# Debian's docker-compose v1 drives builds it as well as BuildKit does.

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PATH=/opt/stashflow/bin:$PATH
RUN python -m venv /opt/stashflow
WORKDIR /src

COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
    && pip install -r requirements.txt

COPY README.md ./
COPY engine ./engine
COPY operators ./operators
COPY connectors ./connectors
RUN pip install --no-deps .


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/stashflow/bin:$PATH
COPY --from=build /opt/stashflow /opt/stashflow

# Not root. /data is created here, owned by that user, so a named volume mounted on it starts out
# writable by it (Docker copies the mount point's ownership into an empty volume).
RUN useradd --system --uid 10001 --create-home --home-dir /home/stashflow stashflow \
    && mkdir /data \
    && chown stashflow:stashflow /data

# The example jobs (docker-compose.yml mounts ./jobs over them) and the corpus generator.
COPY jobs /jobs
COPY bench/corpus.py /app/bench/corpus.py

USER stashflow
WORKDIR /data
# 8081: coordinator HTTP API; 6100: worker data port (channels between instances).
EXPOSE 8081 6100

ENTRYPOINT ["stashflow"]
CMD ["--help"]
