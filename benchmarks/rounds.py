"""Benchmarks run in rounds (benchmarks.inference and benchmarks.pretrain_step, `--rounds`): every
stack and variant once per round, round-robin, so a slow spell on a noisy host touches every
stack rather than the one that happened to run then. Flag-free, so tests import it."""
from __future__ import annotations

import statistics


def median_rounds(rows: list[dict], keys: tuple[str, ...], figures: tuple[str, ...]
                  ) -> list[dict]:
  """One row per distinct `keys` of rows tagged with their `round`: each of `figures` the median
  over the rounds that ran (rows with an "error" left out; all failed: the last error row),
  `rounds` the values per figure and `round_ids` their rounds, in order. Other fields are the
  last successful round's."""
  groups: dict = {}
  for r in rows:
    groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
  out = []
  for group in groups.values():
    ok = [r for r in group if "error" not in r]
    if not ok:
      out.append(group[-1])
      continue
    row = {k: v for k, v in ok[-1].items() if k != "round"}
    row["round_ids"] = [r.get("round") for r in ok]
    row["rounds"] = {f: [r[f] for r in ok] for f in figures}
    row.update({f: float(statistics.median(row["rounds"][f])) for f in figures})
    out.append(row)
  return out


def paired_ratios(ours: dict, theirs: dict, figure: str, faster_is_larger: bool) -> list[float]:
  """ours over theirs round by round (two median_rounds rows), for the rounds both ran: how much
  faster ours was within each round."""
  mine = dict(zip(ours.get("round_ids", []), ours.get("rounds", {}).get(figure, []),
                  strict=True))
  pairs = [(mine[i], v) for i, v in zip(theirs.get("round_ids", []),
                                        theirs.get("rounds", {}).get(figure, []), strict=True)
           if i in mine]
  return [a / b if faster_is_larger else b / a for a, b in pairs]


def within_round_mfu(runs: list[dict], name: str, flops: float) -> list[float]:
  """`flops` per step over the step time and the peak measured just before it in the same round
  (`round_peak_flops_per_s`), for each round `name` ran: MFU with both figures from one spell of
  a noisy host, where a slow spell lowers the step and the peak alike."""
  return [flops / r["median_s"] / r["round_peak_flops_per_s"] for r in runs
          if r.get("name") == name and "error" not in r and r.get("round_peak_flops_per_s")]
