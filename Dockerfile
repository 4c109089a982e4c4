# The studio as a Docker image (Hugging Face Docker Space compatible): uid 1000, port 7860.
# Same environment as `make install`: the pinned requirements.txt.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False

RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 libgl1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd -m -u 1000 user
WORKDIR /home/user/app

COPY --chown=user requirements.txt requirements-sam2.txt requirements-labelstudio-sdk.txt requirements-ray.txt ./
# WITH_RAY=1: the same image serves as the app and as every node of a Ray cluster (README, "On a Ray cluster")
ARG WITH_RAY=0
RUN pip install -r requirements.txt \
    && SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation -r requirements-sam2.txt \
    && pip install --no-deps -r requirements-labelstudio-sdk.txt \
    && if [ "$WITH_RAY" = "1" ]; then pip install -r requirements-ray.txt; fi

COPY --chown=user . .
USER user
# Jobs, uploads and adapters live in the studio folder; official checkpoints are cached beside
# the bundled ones (bundled ones are always found in the image). With persistent storage (a Space's /data), both go there and survive restarts.
ENV ADAPT_WEIGHTS_DIR=/home/user/app/weights \
    ADAPT_STUDIO_DIR=/home/user/app/studio \
    ADAPT_MAX_UPLOAD_MB=200 \
    ADAPT_MAX_PIXELS=40000000
EXPOSE 7860
CMD ["sh", "-c", "if [ -d /data ] && [ -w /data ]; then export ADAPT_WEIGHTS_DIR=/data/weights ADAPT_STUDIO_DIR=/data/studio; fi; exec python -m app"]
