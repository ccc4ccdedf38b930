# Serve model_repository/ on NVIDIA Triton Inference Server (the NGC image: every backend).
#
# Build the repository first, on the host:
#   dlkit export runs/digits/best.pt
#   dlkit package runs/digits/best.onnx --name digits                # native ONNX Runtime backend
#   dlkit package runs/digits/best.torchscript.pt --name digits_ts   # native PyTorch backend
#   dlkit package runs/digits/best.onnx --name digits_py --backend python --preprocess  # optional
# then:
#   docker build -t dlkit-triton .
#   docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 dlkit-triton
# Another repository (a path inside the build context):
#   docker build -t dlkit-triton --build-arg MODEL_REPOSITORY=runs/deploy/model_repository .
#   dlkit predict --url 127.0.0.1:8001 --model digits image.png
#
# 24.10 ships Triton 2.51, the version of the pip-installed server dlkit tests against.
# Keep it equal to TRITON_RELEASE in toolkit/triton/release.py (a test checks).
ARG TRITON_VERSION=24.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

# Python-backend models (--backend python, --preprocess) run in the image's own Python: they
# need onnxruntime or torch, and the preprocessing model imports dlkit's transforms so served
# images get exactly the pixels `dlkit eval` uses. Native-only repositories can skip this
# with --build-arg PYTHON_MODELS=0 (a much smaller image).
ARG PYTHON_MODELS=1
WORKDIR /opt/dlkit
COPY pyproject.toml README.md ./
COPY toolkit ./toolkit
RUN if [ "$PYTHON_MODELS" = "1" ]; then \
        pip install --no-cache-dir . ; \
    fi

# The model repository served at /models (`dlkit package --repo` writes one anywhere).
ARG MODEL_REPOSITORY=model_repository
COPY ${MODEL_REPOSITORY} /models
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"
CMD ["tritonserver", "--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
