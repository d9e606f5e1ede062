"""`prepare()`: raw text files -> a tokenized TFDS (ArrayRecord) dataset, resumable and parallel.

Work happens in `<output_dir>/.incomplete/`: `plan.json` fixes the inputs, options and work units;
each finished unit leaves ArrayRecord parts and a `unit-NNNNN.json` marker, so a rerun with the
same arguments does only the units without a marker. When every unit is done, host 0 renames the
parts into TFDS shards, writes the metadata and moves them into `output_dir` (an existing dataset
is replaced only then, and only with `overwrite=True`). What a worker does with one unit is
`worker.process_unit`, the same for both engines; this module plans the units and finishes.

With `engine="beam"`, inputs, `output_dir` and the vocabulary may be URLs (gs://...; see `storage`):
workers then write each unit's parts to local temp files and upload them.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

from bert_jax.data import reading, segmentation, storage, worker, writer
from bert_jax.errors import DataError

FORMAT_VERSION = 1
_DESCRIPTION = "Tokenized documents for BERT pretraining (bert_jax.prepare)."
ENGINES = ("local", "beam")
WORK_DIR = ".incomplete"


def default_corpus_path() -> str:
  """The embedded World English Bible (public domain): gzip, one verse per line, no blank lines.

  Prepare it with `layout="lines"` (every `doc_lines` verses form a document).
  """
  return os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources",
                      "web-bible.en.txt.gz")


def _load_tokenizer(vocab, do_lower_case, urls: bool = False):
  from bert_jax.tokenization import Tokenizer
  if isinstance(vocab, Tokenizer):
    return vocab
  if storage.is_url(vocab):
    vocab = _download_vocab(str(vocab), urls)
  try:
    return Tokenizer.from_vocab(vocab, do_lower_case)
  except (OSError, ValueError) as e:
    raise DataError(f"Cannot load the vocabulary {vocab}: {e}") from None


def _download_vocab(url: str, urls: bool) -> str:
  """A local copy of a vocabulary URL, kept until this process exits (the dataset copies it)."""
  if not urls:
    raise DataError(f"--vocab {url} is a URL; only --engine=beam reads URLs, or pass a local file.")
  if problem := storage.url_problem(url):
    raise DataError(f"Cannot load the vocabulary: {problem}.")
  local = os.path.join(tempfile.mkdtemp(prefix="bert_jax_vocab"), url.rsplit("/", 1)[-1])
  atexit.register(shutil.rmtree, os.path.dirname(local), True)
  try:
    storage.download(url, local)
  except OSError as e:
    raise DataError(f"Cannot load the vocabulary {url}: {e}") from None
  return local


def _check_output(output_dir: str, overwrite: bool) -> None:
  if storage.is_url(output_dir):
    if problem := storage.url_problem(output_dir):
      raise DataError(f"--output_dir cannot be written: {problem}.")
    if storage.exists(output_dir):
      raise DataError(f"--output_dir {output_dir} is a file; pass a folder.")
  elif os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise DataError(f"--output_dir {output_dir} is a file; pass a folder.")
  names = set(storage.listdir(output_dir)) - {WORK_DIR}
  if not names:
    return
  if overwrite:
    foreign = sorted(n for n in names if not writer.is_dataset_file(n))
    if foreign:
      raise DataError(f"{output_dir} holds files that are not a prepared dataset ({foreign[:3]}); "
                      "choose an empty or new --output_dir.")
    return
  if "dataset_info.json" in names:
    raise DataError(f"{output_dir} already holds a prepared dataset; pass --overwrite to replace "
                    "it, or choose another --output_dir.")
  if names:
    raise DataError(f"{output_dir} is not empty; choose an empty or new --output_dir.")


def prepare(inputs: str | Sequence[str], output_dir: str, vocab, *, layout: str = "sentences",
            doc_lines: int | None = None, validation_fraction: float = 0.01,
            num_workers: int = 1, host_index: int = 0, host_count: int = 1,
            overwrite: bool = False, do_lower_case: bool | None = None, chunk_mb: float = 32,
            progress: bool = True, host_wait_s: float = 86400.0, engine: str = "local",
            beam_options: str | Sequence[str] | None = None, on_bad_file: str = "skip",
            whole_word_segmenter: str = "", max_unk_rate: float = 0.5) -> dict:
  """Tokenizes text files into a TFDS dataset of documents; returns the statistics.

  Args:
    inputs: files, folders or globs (a list, or one comma-separated string); `.gz` is read too.
    output_dir: the dataset folder (`tfds.builder_from_directory(output_dir)` reads it).
    vocab: a WordPiece vocab.txt, a SentencePiece .model, or a `tokenization.Tokenizer`.
    layout: "sentences", "lines" or "documents" (see `bert_jax.data.reading`).
    doc_lines: lines per document for "lines" (default 32); for "sentences" an optional cap.
    validation_fraction: share of documents held out, chosen by a hash of their text.
    num_workers: worker processes on this host.
    host_index, host_count: this host's share of the work units (a shared output_dir); host 0
      waits for the others and writes the dataset.
    overwrite: replace an existing dataset (only once the new one is complete).
    chunk_mb: plain-text files above this size are split into ranges processed in parallel.
    engine: "local" (`num_workers` processes on this host) or "beam" (an Apache Beam pipeline on
      the runner `beam_options` names; same units, same dataset; see `beam_engine`).
    beam_options: Beam pipeline flags, e.g. "--runner=DirectRunner --direct_num_workers=2".
    on_bad_file: a file that breaks while being read (a gzip file cut short): "skip" leaves its
      unit out and lists it in the statistics; "fail" stops before writing the dataset (finished
      units are kept for a rerun).
    whole_word_segmenter: "jieba": segment each sentence into words and store per-token word
      starts for `data.whole_word_mask` (Chinese; see `segmentation`); "" stores none.
    max_unk_rate: refuse (before any work) when a sample of the inputs tokenizes to more [UNK]
      than this share, e.g. Chinese text with a vocabulary without CJK characters.
  Returns:
    dict of statistics (documents, sentences, tokens, unk_rate, skipped lines and files, per-split
    documents / tokens, seconds); on hosts other than 0 the statistics of the units done so far.
  Raises:
    DataError: for bad input or options, before anything is written.
  """
  t0 = time.time()
  if layout not in reading.LAYOUTS:
    raise DataError(f"Unknown layout {layout!r}; use one of {', '.join(reading.LAYOUTS)}.")
  if doc_lines is None:
    doc_lines = reading.DEFAULT_DOC_LINES if layout == "lines" else 0
  if doc_lines < 0 or (layout == "lines" and doc_lines < 2):
    raise DataError(f"doc_lines={doc_lines} is invalid; use at least 2 lines per document.")
  if not 0 <= validation_fraction < 1:
    raise DataError(f"validation_fraction={validation_fraction} must be in [0, 1).")
  if num_workers < 1 or host_count < 1 or not 0 <= host_index < host_count:
    raise DataError(f"Need num_workers >= 1 and 0 <= host_index < host_count; got {num_workers}, "
                    f"{host_index}, {host_count}.")
  if on_bad_file not in ("skip", "fail"):
    raise DataError(f"on_bad_file={on_bad_file!r} is invalid; use 'skip' or 'fail'.")
  beam_opts = _beam_options(engine, beam_options, host_count)
  urls = beam_opts is not None  # only Beam workers can reach URLs (gs://...)
  output_dir = os.fspath(output_dir)
  if not storage.is_url(output_dir):
    output_dir = os.path.abspath(output_dir)
  elif not urls:
    raise DataError(f"--output_dir {output_dir} is a URL; only --engine=beam writes URLs, or pass "
                    "a local folder.")
  else:
    output_dir = output_dir.rstrip("/")
  files = reading.expand_inputs(inputs, urls)
  _check_output(output_dir, overwrite)
  tok = _load_tokenizer(vocab, do_lower_case, urls)
  skipped = [{"path": f, "reason": r} for f in files if (r := reading.check_file(f))]
  bad = {s["path"] for s in skipped}
  good = [f for f in files if f not in bad]
  if not good:
    raise DataError("No usable input: " + "; ".join(f"{s['path']} is {s['reason']}"
                                                   for s in skipped[:5]) +
                    ". Pass UTF-8 text files (.txt or .gz).")
  if whole_word_segmenter:
    segmentation.get(whole_word_segmenter)  # refused here when unknown or not installed
    if tok.kind == "sentencepiece":
      raise DataError("--whole_word_segmenter needs a WordPiece vocab.txt (or a tokenizer.json); "
                      "a SentencePiece model marks word starts itself (whole_word_mask alone).")
  _check_unk_rate(good, tok, max_unk_rate)
  units = reading.plan_units(good, int(chunk_mb * 2**20))
  options = {"layout": layout, "doc_lines": doc_lines, "validation_fraction": validation_fraction,
             "do_lower_case": tok.do_lower_case}
  if whole_word_segmenter:  # only then: plans of datasets without one stay as they were
    options["whole_word_segmenter"] = whole_word_segmenter
  plan = {"format_version": FORMAT_VERSION, "vocab_fingerprint": tok.fingerprint,
          "options": options, "skipped_files": skipped,
          "inputs": [[f, storage.size(f), int(storage.mtime(f))] for f in good],
          "units": [u.to_json() for u in units]}
  work = storage.join(output_dir, WORK_DIR)
  plan_path = storage.join(work, "plan.json")
  if storage.exists(plan_path) and storage.read_json(plan_path) != plan:
    if not overwrite:
      raise DataError(f"{output_dir} holds an interrupted preparation with other inputs or "
                      "options; rerun with the same arguments to finish it, or pass --overwrite.")
    storage.rmtree(work)
  try:
    storage.makedirs(work)
  except OSError as e:
    raise DataError(f"--output_dir {output_dir} cannot be created ({e.strerror}); choose a folder "
                    "you can write to.") from None
  if not storage.exists(plan_path):
    storage.write_json(plan_path, plan)

  def marker_path(u):
    return storage.join(work, worker.marker_name(u))

  def unfinished(us):  # one listing rather than a request per unit on object stores
    done = set(storage.listdir(work))
    return [u for u in us if worker.marker_name(u) not in done]

  todo = unfinished(units[host_index::host_count])
  if beam_opts is not None:
    if todo:
      from bert_jax.data import beam_engine
      beam_engine.run_units(todo, work, tok, layout, doc_lines, validation_fraction, beam_opts,
                            whole_word_segmenter)
  else:
    _run_units(todo, work, tok, layout, doc_lines, validation_fraction, num_workers, progress,
               whole_word_segmenter)
  if host_index != 0:
    return _aggregate([storage.read_json(marker_path(u)) for u in units[host_index::host_count]],
                      skipped, t0)
  deadline = time.time() + host_wait_s
  while missing := unfinished(units):
    if time.time() > deadline:
      raise DataError(f"{len(missing)} work units from other hosts are still missing in {work}; "
                      "rerun host 0 once the other hosts have finished.")
    time.sleep(2.0)
  markers = [storage.read_json(marker_path(u)) for u in units]
  broken = [m for m in markers if "error" in m]
  if broken and on_bad_file == "fail":
    for m in broken:  # so that a rerun tries these units again
      storage.remove(marker_path(units[m["unit"]]))
    raise DataError("Input broke while being read: " + "; ".join(
        f"{m['error']['path']} is {m['error']['reason']}" for m in broken[:5]) +
        ". Fix or remove it and rerun (with --overwrite if the inputs changed), or pass "
        "--on_bad_file=skip to leave it out.")
  stats = _aggregate(markers, skipped, t0)
  if stats["splits"]["train"]["documents"] == 0:
    storage.rmtree(work)
    if not storage.is_url(output_dir) and not os.listdir(output_dir):
      os.rmdir(output_dir)
    raise DataError(f"The inputs hold no text for training ({stats['lines']} lines read); check "
                    "--layout and the files.")
  _finish(output_dir, work, markers, stats, tok, options, files)
  return stats


def _beam_options(engine, beam_options, host_count):
  """None for the local engine; parsed PipelineOptions for Beam (refused early when unusable)."""
  if engine not in ENGINES:
    raise DataError(f"Unknown engine {engine!r}; use one of {', '.join(ENGINES)}.")
  if engine == "local":
    if beam_options:
      raise DataError("beam_options are only for engine='beam'; pass --engine=beam or drop them.")
    return None
  if host_count != 1:
    raise DataError("The Beam runner spreads the work itself; drop --host_index/--host_count "
                    "with --engine=beam.")
  try:
    from bert_jax.data import beam_engine
  except ImportError as e:
    raise DataError(f"--engine=beam needs Apache Beam ({e}); install it with "
                    "pip install 'bert_jax[beam]' (apache-beam>=2.77).") from None
  return beam_engine.pipeline_options(beam_options)


def _check_unk_rate(files, tok, max_unk_rate: float) -> None:
  """Refuses a vocabulary that maps a sample of the text (up to 64 KiB of each of the first
  files) to mostly [UNK]: the dataset would teach nothing."""
  sample = [line for f in files[:4] for line in reading.head_lines(f)]
  ids = [i for row in tok.encode_batch(sample) for i in row] if sample else []
  if len(ids) < 100:
    return
  rate = sum(i == tok.unk_id for i in ids) / len(ids)
  if rate > max_unk_rate:
    cjk = sum(map(reading.is_cjk, "".join(sample))) > len("".join(sample)) // 4
    raise DataError(
        f"The vocabulary {tok.vocab_path.name} turns {rate:.0%} of a sample of the inputs into "
        f"[UNK] (more than max_unk_rate={max_unk_rate:.0%}); "
        + ("the text is Chinese and the vocabulary lacks its characters: train one on it "
           "(bert-jax-vocab --kind=wordpiece) or use a Chinese vocab.txt (bert-base-chinese)."
           if cjk else "use a vocabulary made for this text (bert-jax-vocab trains one)."))


def _run_units(todo, work, tok, layout, doc_lines, fraction, num_workers, progress,
               segmenter=""):
  if not todo:
    return
  from tqdm.auto import tqdm
  bar = tqdm(total=sum(u.size for u in todo), unit="B", unit_scale=True, desc="prepare",
             disable=not progress)
  args = (work, layout, doc_lines, fraction, segmenter)
  if num_workers == 1 or len(todo) == 1:
    worker.use_tokenizer(tok)
    for u in todo:
      worker.process_unit(u, *args)
      bar.update(u.size)
  else:
    import concurrent.futures as cf
    import multiprocessing as mp
    with cf.ProcessPoolExecutor(
        min(num_workers, len(todo)), mp_context=mp.get_context("spawn"),
        initializer=worker.init_worker,
        initargs=(str(tok.vocab_path), tok.do_lower_case, tok.strip_accents, True)) as pool:
      futures = {pool.submit(worker.process_unit, u, *args): u for u in todo}
      for fut in cf.as_completed(futures):
        fut.result()
        bar.update(futures[fut].size)
  bar.close()


def _aggregate(markers: list[dict], skipped: list[dict], t0: float) -> dict:
  stats = {k: sum(m["stats"][k] for m in markers) for k in worker.STAT_KEYS}
  stats["unk_rate"] = stats["unk_tokens"] / max(1, stats["tokens"])
  skipped = skipped + [m["error"] for m in markers if "error" in m]
  stats["skipped_files"] = len(skipped)
  stats["skipped_file_list"] = skipped
  stats["splits"] = {s: {k: sum(m["splits"][s][k] for m in markers)
                         for k in ("documents", "tokens")} for s in writer.SPLITS}
  stats["seconds"] = time.time() - t0
  return stats


def _finish(output_dir, work, markers, stats, tok, options, files):
  parts = {s: [(storage.join(work, m["parts"][s][0]), m["parts"][s][1])
               for m in markers if s in m["parts"]] for s in writer.SPLITS}
  segmenter = options.get("whole_word_segmenter", "")
  metadata = {
      "format_version": FORMAT_VERSION, "vocab_fingerprint": tok.fingerprint,
      "vocab_size": tok.vocab_size, "tokenizer_kind": tok.kind,
      "do_lower_case": tok.do_lower_case, "vocab_file": os.path.basename(str(tok.vocab_path)),
      "special": {"pad_id": tok.pad_id, "unk_id": tok.unk_id, "cls_id": tok.cls_id,
                  "sep_id": tok.sep_id, "mask_id": tok.mask_id},
      "special_ids": sorted(int(i) for i in tok.special_ids),
      "options": options, "inputs": files,
      **({"segmenter_version": segmentation.version(segmenter)} if segmenter else {}),
      "stats": {k: v for k, v in stats.items() if k != "seconds"},
  }
  if storage.is_url(output_dir):
    with tempfile.TemporaryDirectory(prefix="bert_jax_dataset") as staging:
      _finish_url(output_dir, staging, parts, metadata, tok, bool(segmenter))
    storage.rmtree(work)
    return
  staging = os.path.join(work, "final")
  if os.path.isdir(staging):
    shutil.rmtree(staging)
  os.makedirs(staging)
  writer.write_dataset(staging, parts, metadata, tok.word_start_mask(), description=_DESCRIPTION,
                       word_starts=bool(segmenter))
  tok.save(os.path.join(staging, writer.TOKENIZER_DIR))  # Training finds the vocabulary here.
  _remove_dataset(output_dir)
  for name in os.listdir(staging):
    os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
  shutil.rmtree(work)


def _remove_dataset(output_dir):
  for name in storage.listdir(output_dir):  # only with overwrite=True can a dataset be here
    if writer.is_dataset_file(name):
      storage.rmtree(storage.join(output_dir, name))


def _finish_url(output_dir, staging, parts, metadata, tok, word_starts=False):
  """Copies the parts to their shard names next to the work folder (on the object store, so a
  rerun after an interruption still finds them), then uploads the metadata made in `staging`."""
  _remove_dataset(output_dir)  # first: the copies take the same names

  def place(path, name):
    storage.copy(path, storage.join(output_dir, name))
    return storage.size(storage.join(output_dir, name))

  writer.write_dataset(staging, parts, metadata, tok.word_start_mask(), description=_DESCRIPTION,
                       place=place, word_starts=word_starts)
  tok.save(os.path.join(staging, writer.TOKENIZER_DIR))
  files = [os.path.relpath(os.path.join(d, f), staging) for d, _, names in os.walk(staging)
           for f in names]
  # dataset_info.json last: only then is the folder a dataset (for readers and for a rerun).
  for rel in sorted(files, key=lambda f: (f == "dataset_info.json", f)):
    storage.upload(os.path.join(staging, rel), storage.join(output_dir, *rel.split(os.sep)))
