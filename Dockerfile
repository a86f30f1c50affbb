# Virtual Rollout: installs exactly as `make run` does (`make install`: the package and what running
# needs, none of the test extra), then serves on 0.0.0.0.
# GPU:  docker build -t vrollout . && docker run --gpus all -p 8000:8000 vrollout
# The default TORCH pin pulls the CUDA build on linux/x86_64; for a CPU-only image build with
#   --build-arg TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
FROM python:3.11-slim

ARG TORCH="torch==2.13.0"
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml Makefile README.md ./
COPY app ./app
COPY templates ./templates
COPY static ./static
COPY docs ./docs
RUN make install TORCH="$TORCH"
# Convert the embedded GGUF model once at build time, so the container starts in seconds.
RUN .venv/bin/python -c "from vrollout.models import default_model_folder; from vrollout.config import Settings; default_model_folder(Settings().cache_dir)"

# expandable segments: a long response's growing tensors reuse freed blocks instead of fragmenting
ENV VROLLOUT_HOST=0.0.0.0 VROLLOUT_DATABASE=/data/vrollout.sqlite3 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
VOLUME /data
EXPOSE 8000
# Give it a token (docker run -e VROLLOUT_API_TOKEN=...): else anyone who reaches the port can
# run the model and read every stored analysis.
CMD [".venv/bin/vrollout", "serve", "--host", "0.0.0.0", "--port", "8000"]
