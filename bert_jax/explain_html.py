"""Pictures of an `explain.Explanation`: a self-contained HTML page and a PNG bar chart.

The page needs no network: the tokens are spans coloured by attribution (red: toward the
explained label, blue: against it; the strongest at full colour), the bar chart, the attention
rollout and a layer x head grid of attention heatmaps are inline base64 PNGs. Every token is a
`<span class="tok">`, so a browser test can count them in the DOM.
"""
from __future__ import annotations

import base64
import html
import io
import pathlib

import numpy as np

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 72em; }
.tokens { line-height: 2.1em; font-size: 1.1em; margin: 1em 0; }
.tok { padding: 0.15em 0.25em; margin: 0 0.08em; border-radius: 0.2em; white-space: pre; }
table.grid { border-collapse: collapse; }
table.grid td, table.grid th { padding: 2px; font-size: 0.75em; text-align: center; }
img.heat { width: 84px; height: 84px; image-rendering: pixelated; border: 1px solid #ccc; }
.meta td { padding: 0.1em 0.8em 0.1em 0; }
.warn { color: #b00; font-weight: bold; }
"""


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _data_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def heatmap_png(a_LxM: np.ndarray, cmap: str = "viridis") -> bytes:
  """One pixel per (query, key), scaled to the map's own maximum."""
  from matplotlib import image
  a = np.asarray(a_LxM, np.float32)
  buf = io.BytesIO()
  image.imsave(buf, a, cmap=cmap, vmin=0.0, vmax=max(float(a.max()), 1e-9), format="png")
  return buf.getvalue()


def bar_chart_png(e) -> bytes:
  """Horizontal bars: one per token, its attribution to the explained label."""
  plt = _pyplot()
  n = len(e.tokens)
  fig, ax = plt.subplots(figsize=(6.0, 0.6 + 0.24 * n), dpi=100)
  a = np.asarray(e.attributions_L)
  ax.barh(np.arange(n), a, color=np.where(a >= 0, "#d6604d", "#4393c3"))
  ax.set_yticks(np.arange(n), e.tokens, fontsize=8)
  ax.invert_yaxis()
  ax.axvline(0.0, color="#444", lw=0.6)
  where = "" if e.position is None else f" at token {e.position} ({e.tokens[e.position]})"
  ax.set_title(f"Integrated gradients for {e.label}{where}", fontsize=9)
  ax.set_xlabel(f"attribution (sum {a.sum():.3f}; logit change "
                f"{e.logit - e.baseline_logit:.3f})", fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return buf.getvalue()


def write_bar_chart(e, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.write_bytes(bar_chart_png(e))
  return path


def rollout_png(e) -> bytes:
  """The last layer's rollout with the tokens on both axes."""
  plt = _pyplot()
  n = len(e.tokens)
  size = min(9.0, 2.0 + 0.22 * n)
  fig, ax = plt.subplots(figsize=(size, size), dpi=90)
  ax.imshow(e.rollout_YxLxL[-1], cmap="viridis")
  ax.set_xticks(np.arange(n), e.tokens, rotation=90, fontsize=7)
  ax.set_yticks(np.arange(n), e.tokens, fontsize=7)
  ax.set_title("Attention rollout", fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return buf.getvalue()


def _token_spans(e) -> str:
  a = np.asarray(e.attributions_L, np.float64)
  top = max(float(np.abs(a).max()), 1e-12)
  spans = []
  for i, (tok, v) in enumerate(zip(e.tokens, a, strict=True)):
    alpha = abs(v) / top
    rgb = "214,96,77" if v >= 0 else "67,147,195"
    mark = " outline: 2px solid #000;" if e.position == i else ""
    spans.append(f'<span class="tok" data-i="{i}" title="{html.escape(tok)}: {v:+.4f}" '
                 f'style="background: rgba({rgb},{alpha:.3f});{mark}">{html.escape(tok)}</span>')
  return "".join(spans)


def _attention_grid(e) -> str:
  y, n = e.attentions_YxNxLxL.shape[:2]
  head_cells = "".join(f"<th>head {h}</th>" for h in range(n))
  rows = [f"<tr><th></th>{head_cells}</tr>"]
  for layer in range(y):
    cells = "".join(
        f'<td><img class="heat" alt="layer {layer} head {h}" title="layer {layer} head {h}" '
        f'src="{_data_uri(heatmap_png(e.attentions_YxNxLxL[layer, h]))}"></td>'
        for h in range(n))
    rows.append(f"<tr><th>layer {layer}</th>{cells}</tr>")
  return f'<table class="grid">{"".join(rows)}</table>'


def page(e, title: str = "explanation") -> str:
  """The whole HTML document for one explanation (no external resources)."""
  probs = ", ".join(f"{html.escape(k)}: {v:.3f}" for k, v in e.probabilities.items())
  kind = "score" if len(e.probabilities) == 1 else "probabilities"
  where = ("" if e.position is None else
           f" (the tag of token {e.position}, <b>{html.escape(e.tokens[e.position])}</b>)")
  check = (f"{100 * e.completeness_error:.2f}% off" if e.completeness_ok else
           f'<span class="warn">{100 * e.completeness_error:.2f}% off: above the 1% '
           "tolerance, read the attributions with care</span>")
  y, n = e.attentions_YxNxLxL.shape[:2]
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(e.text)}</p>
<table class="meta">
<tr><td>explained label</td><td><b>{html.escape(e.label)}</b>{where}</td></tr>
<tr><td>{kind}</td><td>{probs}</td></tr>
<tr><td>method</td><td>integrated gradients on the word embeddings, baseline
 <code>{html.escape(e.baseline)}</code> ([CLS]/[SEP] kept), {e.steps} Gauss-Legendre steps</td></tr>
<tr><td>completeness</td><td>attributions sum to {e.attributions_L.sum():.4f}; the logit went
 from {e.baseline_logit:.4f} (baseline) to {e.logit:.4f}: {check}</td></tr>
</table>
<h2>Tokens by attribution</h2>
<p>Red pushes toward <b>{html.escape(e.label)}</b>, blue away from it; hover for values.</p>
<div class="tokens" id="tokens" data-token-count="{len(e.tokens)}">{_token_spans(e)}</div>
<img alt="attribution bar chart" src="{_data_uri(bar_chart_png(e))}">
<h2>Attention rollout</h2>
<p>Abnar &amp; Zuidema (2020): head-averaged attention plus the residual identity, multiplied
 through all {y} layers; row: a token, columns: the inputs it draws on.</p>
<img alt="attention rollout" src="{_data_uri(rollout_png(e))}">
<h2>Attention per layer and head</h2>
<p>{y} layers x {n} heads; rows are query tokens, columns keys; each map scaled to its own
 maximum.</p>
{_attention_grid(e)}
</body></html>
"""
