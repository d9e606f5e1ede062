"""What the Colab notebooks (colab/*.ipynb) call besides the library's own entry points.

The configs of the installed package, fetching a Hugging Face model folder and a GLUE task, and
the tiny stand-ins that let every notebook run top to bottom on CPU in seconds (`SMOKE = True`,
what tests/test_notebooks.py executes): a 1-layer random BERT saved in Hugging Face format and a
small real-text classification set (World English Bible verses: Old vs New Testament).
"""
from __future__ import annotations

import gzip
import importlib
import os
import pathlib
import random
import urllib.request
import zipfile

from bert_jax import errors

VOCAB = pathlib.Path(__file__).resolve().parent / "resources" / "bert-base-uncased-vocab.txt"
# The original GLUE archives (the URLs of the GLUE download script); MRPC has no such archive.
GLUE_ZIPS = {"cola": "CoLA", "sst2": "SST-2", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
             "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/{}.zip"
NEW_TESTAMENT_TITLE = "The Good News According to Matthew"
CONFIGS = ("pretrain", "finetune")  # bert_jax/configs/NAME.py


def load_config(name: str, arg: str = ""):
  """`bert_jax/configs/NAME.py`'s get_config(arg): what `--config=configs/NAME.py:ARG` loads.

  Args:
    name: "pretrain" or "finetune".
    arg: what follows the colon on the command line, e.g. "tiny" or "task=sst2,tiny".
  """
  if name not in CONFIGS:
    raise errors.ConfigError(f"Unknown config {name!r}; choose one of {', '.join(CONFIGS)}.")
  module = importlib.import_module(f"bert_jax.configs.{name}")
  return module.get_config(arg) if arg else module.get_config()


def tiny_hf_model(dst, seed: int = 0) -> str:
  """A 1-layer, 32-wide random BertModel with the bert-base-uncased vocabulary, saved in Hugging
  Face format at `dst` (kept when already there): the smoke stand-in for a downloaded model."""
  from bert_jax import configuration, loading, modeling
  from bert_jax.configs import common
  from bert_jax.tokenization import Tokenizer
  dst = pathlib.Path(dst)
  if (dst / "config.json").is_file():
    return str(dst)
  tokenizer = Tokenizer.from_vocab(VOCAB)
  # The architecture of configs/finetune.py's tiny runs, which fine-tune from this model.
  config = configuration.preset(common.TINY_PRESET, **common.TINY_ARCHITECTURE,
                                max_position_embeddings=128, vocab_size=tokenizer.vocab_size)
  model = modeling.create_model(modeling.BertModel, config, seed=seed)
  loading.save_pretrained(model, tokenizer, dst, format="hf")
  return str(dst)


def hf_model(model: str, dst) -> str:
  """A local Hugging Face model folder: `model` itself when it is a folder, else the Hub
  repository `model` downloaded to `dst` (config, weights and tokenizer files only)."""
  if os.path.isdir(model):
    return model
  from huggingface_hub import snapshot_download  # Colab has it; tests never get here.
  return snapshot_download(model, local_dir=str(dst), allow_patterns=[
      "config.json", "*.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer*.json",
      "special_tokens_map.json", "modules.json", "sentence_bert_config.json", "1_Pooling/*"])


def glue_task_dir(task: str, dst) -> str:
  """Downloads and unpacks GLUE `task` under `dst`; returns the folder with train.tsv/dev.tsv."""
  if task not in GLUE_ZIPS:
    raise errors.ConfigError(f"GLUE task {task!r} has no download here; choose one of "
                             f"{', '.join(GLUE_ZIPS)} or point data.dir at your own copy.")
  dst = pathlib.Path(dst)
  folder = dst / GLUE_ZIPS[task]
  if not (folder / "train.tsv").is_file():
    dst.mkdir(parents=True, exist_ok=True)
    archive, _ = urllib.request.urlretrieve(GLUE_URL.format(GLUE_ZIPS[task]),
                                            dst / f".{task}.zip.tmp")
    with zipfile.ZipFile(archive) as z:
      z.extractall(dst)
    os.remove(archive)
  return str(folder)


def testament_task_dir(dst, n_train: int = 64, n_dev: int = 32, seed: int = 0) -> str:
  """SST-2-layout train.tsv/dev.tsv (`sentence<TAB>label`) of embedded Bible verses labelled
  0 (Old Testament) / 1 (New Testament), balanced: real text for the smoke fine-tuning run."""
  from bert_jax.data import default_corpus_path
  dst = pathlib.Path(dst)
  if (dst / "dev.tsv").is_file():
    return str(dst)
  with gzip.open(default_corpus_path(), "rt", encoding="utf-8") as f:
    lines = [l.strip() for l in f]
  split = lines.index(NEW_TESTAMENT_TITLE)
  verses = [[v for v in part if 30 <= len(v) <= 200 and "\t" not in v]
            for part in (lines[1:split], lines[split + 1:])]
  rng = random.Random(seed)
  per_label = (n_train + n_dev) // 2
  rows = [(v, label) for label, part in enumerate(verses) for v in rng.sample(part, per_label)]
  rng.shuffle(rows)
  dst.mkdir(parents=True, exist_ok=True)
  for name, part in (("train.tsv", rows[:n_train]), ("dev.tsv", rows[n_train:])):
    tmp = dst / f".{name}.tmp"
    tmp.write_text("sentence\tlabel\n" + "".join(f"{v}\t{l}\n" for v, l in part),
                   encoding="utf-8")
    tmp.replace(dst / name)
  return str(dst)


def transformers_max_diff(hf_dir, model, tokenizer, texts: list[str]) -> float:
  """Largest |difference| between transformers' and `model`'s last hidden states on `texts`
  (needs torch + transformers, as on Colab): the check that a conversion is faithful."""
  import numpy as np
  import torch
  import transformers

  from bert_jax import inference
  reference = transformers.AutoModel.from_pretrained(str(hf_dir)).eval()
  encoder = inference.encoder_of(model)
  batch = tokenizer(list(texts))  # [CLS] text [SEP], padded: int32 [B, L]
  with torch.no_grad():
    want_BxLxD = reference(**{k: torch.from_numpy(np.asarray(v, np.int64))
                              for k, v in batch.items()}).last_hidden_state.numpy()
  got_BxLxD = np.asarray(encoder(batch["input_ids"], batch["attention_mask"],
                                 batch["token_type_ids"]).last_hidden_state)
  real_BxL = batch["attention_mask"].astype(bool)  # Padding positions may differ; ignore them.
  return float(np.abs(got_BxLxD - want_BxLxD)[real_BxL].max())


def cosine_similarities(vectors_NxD):
  """[N, N] cosine similarities between the rows of `vectors_NxD`."""
  import numpy as np
  unit_NxD = vectors_NxD / np.maximum(np.linalg.norm(vectors_NxD, axis=-1, keepdims=True), 1e-12)
  return unit_NxD @ unit_NxD.T
