"""Beam engine vs local engine: preparation MB/s on the shared corpora, and peak RSS per Beam
worker as the corpus grows.

  .venv/bin/python benchmarks/beam_prepare.py [--scale=4] [--skip_memory]

Throughput: the Bible (`lines`) and Moby Dick (`sentences`), `--chunk_mb` units, prepared by the
local engine (1 and 2 processes) and by Beam's DirectRunner with 2 worker processes
(multi_processing); wall MB/s, and MB/s per busy core (tokenizing work, from the statistics).
Memory: Beam with 2 workers on 1x and `--scale`x the Bible in a subprocess; a sampler records the
peak RSS of each Beam SDK worker process and of the launching process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data", "corpus")
VOCAB = os.path.join(REPO, "bert_jax", "resources", "bert-base-uncased-vocab.txt")
BEAM = "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"

_SCALE = flags.DEFINE_integer("scale", 4, "Copies of the Bible for the memory run.")
_CHUNK = flags.DEFINE_float("chunk_mb", 0.5, "Unit size (--chunk_mb of prepare).")
_SKIP_MEMORY = flags.DEFINE_bool("skip_memory", False, "Skip the 1x / scale-x memory runs.")

_RUN = """
import json, sys
from bert_jax.data import prepare
s = prepare(sys.argv[1], sys.argv[2], sys.argv[3], layout="lines", chunk_mb=float(sys.argv[4]),
            engine="beam", beam_options=sys.argv[5], progress=False)
print(json.dumps({"tokens": s["tokens"], "seconds": s["seconds"]}))
"""


def _corpus(name):
  path = os.path.join(SHARED, name)
  if not os.path.exists(path):
    sys.exit(f"{path} is missing; the benchmark needs ../shared/data/corpus.")
  return path


def bench_throughput(tmp):
  from bert_jax.data import prepare
  for name, layout in (("web-bible.en.txt", "lines"), ("mobydick.en.txt", "sentences")):
    path = _corpus(name)
    mb = os.path.getsize(path) / 2**20
    for engine, workers in (("local", 1), ("local", 2), ("beam", 2)):
      out = os.path.join(tmp, f"{name}-{engine}-{workers}")
      kw = {"beam_options": BEAM} if engine == "beam" else {"num_workers": workers}
      t = time.time()
      s = prepare(path, out, VOCAB, layout=layout, chunk_mb=_CHUNK.value, engine=engine,
                  progress=False, **kw)
      wall = time.time() - t
      print(json.dumps({"corpus": name, "engine": engine, "workers": workers, "MB": round(mb, 2),
                        "MB/s": round(mb / wall, 2), "tokens/s": round(s["tokens"] / wall),
                        "MB/s/core": round(mb / s["cpu_seconds"], 2), "wall_s": round(wall, 1)}),
            flush=True)


def _sample_rss(proc, peaks, stop):
  """Peak RSS (MB) per process in `proc`'s tree, keyed by role and pid, sampled every 0.1 s."""
  import psutil
  root = psutil.Process(proc.pid)
  while not stop.is_set():
    try:
      tree = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
      return
    for p in tree:
      try:
        rss = p.memory_info().rss / 2**20
        # The DirectRunner starts each worker through `sh -c`: count the Python process only.
        worker = "sdk_worker_main" in " ".join(p.cmdline()) and p.name().startswith("python")
      except (psutil.NoSuchProcess, psutil.AccessDenied):
        continue
      if p.pid == root.pid or worker:
        key = ("launcher" if p.pid == root.pid else "worker", p.pid)
        peaks[key] = max(peaks.get(key, 0.0), rss)
    time.sleep(0.1)


def bench_memory(tmp):
  text = open(_corpus("web-bible.en.txt"), "rb").read()
  for copies in (1, _SCALE.value):
    src = os.path.join(tmp, f"bible-{copies}x.txt")
    with open(src, "wb") as f:
      for _ in range(copies):
        f.write(text)
    peaks, stop = {}, threading.Event()
    proc = subprocess.Popen([sys.executable, "-c", _RUN, src, os.path.join(tmp, f"mem-{copies}x"),
                             VOCAB, str(_CHUNK.value), BEAM], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    sampler = threading.Thread(target=_sample_rss, args=(proc, peaks, stop))
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
      sys.exit(f"The {copies}x run failed (exit {proc.returncode}).")
    s = json.loads(out.strip().splitlines()[-1])
    workers = sorted(round(v) for (role, _), v in peaks.items() if role == "worker")
    launcher = [round(v) for (role, _), v in peaks.items() if role == "launcher"]
    print(json.dumps({"corpus": f"bible x{copies}", "MB": round(len(text) * copies / 2**20, 1),
                      "tokens": s["tokens"], "wall_s": round(s["seconds"], 1),
                      "worker_peak_rss_mb": workers, "launcher_peak_rss_mb": launcher}),
          flush=True)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    bench_throughput(tmp)
    if not _SKIP_MEMORY.value:
      bench_memory(tmp)


if __name__ == "__main__":
  app.run(main)
