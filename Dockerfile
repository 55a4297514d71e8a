# ModelMora's server on a CPU: `docker build -t modelmora:0.1.0 .` (docs/deployment.md).
# Each step is a script under deploy/steps/, so that tests/test_container_steps.py runs the same
# commands without a container engine.
FROM python:3.11-slim

# PyTorch's CPU wheel index, for a registry (such as PyPI) whose torch 2.13.0 is a CUDA build;
# the install page of PyTorch gives its address. deploy/steps/check.sh refuses a CUDA build.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MODELMORA_HOME=/cache \
    PATH=/opt/modelmora/bin:${PATH}

COPY deploy/steps/ /opt/steps/
RUN /opt/steps/user.sh

WORKDIR /src
COPY pyproject.toml README.md ./
COPY templates/ templates/
COPY modelmora/ modelmora/
RUN /opt/steps/install.sh /opt/modelmora /src && /opt/steps/check.sh /opt/modelmora

USER 1000:1000
WORKDIR /project
# The model cache: a named volume, or a read-only mount that many servers share (`--frozen
# --offline` never writes into it). The project's modelmora.toml and modelmora.lock go in /project.
VOLUME ["/cache"]
EXPOSE 8000 8001
CMD ["modelmora", "serve", "--host", "0.0.0.0", "--frozen"]
