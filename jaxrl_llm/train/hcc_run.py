"""The `hcc` command: score SFT records with a model, cut their harmful continuation, write the edit and a report.

    python -m jaxrl_llm.cli hcc --config configs/hcc_arith_chain.py --config.hcc.input=traces.jsonl

Reads `hcc.input` (JSONL of {prompt, completion} records, e.g. an ArithChain trace export from
`envs/arith_chain_traces.py`), scores every completion with the model of `model.init_from` (hf:PATH,
orbax:RUN or, when empty, a random init of the model section) under `data.tokenizer`
(`analysis/hcc_model.py`), and applies the delete-only HCC editor at `hcc.tau` (or at the tau fitted on
the first `hcc.fit_tau_records` records that carry a ground-truth `boundary`, `hcc.fit_tau`). Writes

- `hcc.output`: every input record with `completion` replaced by the edited text, plus `hcc_boundary`
  (the last kept step, null = no cut), `hcc_removed_steps`, `hcc_removed_tokens` and
  `original_completion` (the input's other fields, e.g. a trace export's steps and labels, describe
  `original_completion`);
- `hcc.report`: a JSON report with how much was cut (records, steps and tokens: totals, means per
  record and shares of the reasoning) and, when records carry a ground-truth `boundary` (the last
  step to keep; K - 1 = nothing to cut), the agreement of the editor with it (exact-match rate and
  mean absolute step error, over all labelled records and over those not used to fit tau).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxrl_llm.analysis import hcc
from jaxrl_llm.analysis.hcc_model import UNCERTAINTIES, removed_tokens, score_traces, scored_cut
from jaxrl_llm.train.builders import build_policy, build_tokenizer
from jaxrl_llm.train.eval_run import write_json
from jaxrl_llm.train.init_from import check_init_from

__all__ = ["HCC_REPORT_KEYS", "check_hcc_config", "read_hcc_records", "boundary_agreement", "cut_summary",
           "run_hcc"]

HCC_REPORT_KEYS = ("num_records", "tau", "tau_fitted", "fit_records", "uncertainty", "cut", "agreement",
                   "input", "output", "model", "wall_time_s")


def check_hcc_config(cfg: Any) -> dict[str, Any]:
    """The `hcc` section's values, checked before anything is built (errors name the field)."""
    section = cfg.get("hcc", None)
    if section is None:
        raise ValueError("the hcc command needs an `hcc` config section (see configs/hcc_arith_chain.py)")
    path = str(section.get("input", "") or "")
    if not path:
        raise ValueError("hcc.input must name a JSONL file of {prompt, completion} records "
                         "(e.g. --config.hcc.input=traces.jsonl)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hcc.input={path!r}: no such file")
    out_dir = str(cfg.get("output_dir", "") or ".")
    tau = float(section.get("tau", hcc.TAU_FALLBACK))
    if not tau >= 0.0:
        raise ValueError(f"hcc.tau must be >= 0; got {tau}")
    fit = section.get("fit_tau_records", 0)
    if isinstance(fit, bool) or not isinstance(fit, int) or fit < 0:
        raise ValueError(f"hcc.fit_tau_records must be an integer >= 0; got {fit!r}")
    batch = section.get("batch_size", 8)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"hcc.batch_size must be an integer >= 1; got {batch!r}")
    kind = str(section.get("uncertainty", "entropy"))
    if kind not in UNCERTAINTIES:
        raise ValueError(f"hcc.uncertainty must be one of {UNCERTAINTIES}; got {kind!r}")
    check_init_from(cfg.model)
    return {"input": path, "output": str(section.get("output", "") or os.path.join(out_dir, "hcc_edited.jsonl")),
            "report": str(section.get("report", "") or os.path.join(out_dir, "hcc_report.json")),
            "tau": tau, "fit_tau_records": fit, "batch_size": batch, "uncertainty": kind}


def read_hcc_records(path: str, field: str = "hcc.input") -> list[dict[str, Any]]:
    """The JSON records of `path`, each with str `prompt` and `completion` and, if present, an int or
    null `boundary`; errors name `field`, the line and what is missing."""
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{field}={path!r}, line {i}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object with prompt and completion; got "
                                 f"{type(rec).__name__}")
            for key in ("prompt", "completion"):
                if not isinstance(rec.get(key), str):
                    raise ValueError(f"{where}: needs a string {key!r} field; got keys {sorted(rec)}")
            b = rec.get("boundary")
            if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 0):
                raise ValueError(f"{where}: boundary must be a step index >= 0 or null; got {b!r}")
            records.append(rec)
    if not records:
        raise ValueError(f"{field}={path!r} holds no records")
    return records


def boundary_agreement(pred: Sequence[int | None], truth: Sequence[int], num_steps: Sequence[int]) -> dict[str, Any]:
    """Exact-match rate and mean absolute step error of editor boundaries `pred` (None = no cut, i.e.
    K - 1) against ground-truth `truth` for traces of `num_steps` steps. Empty input => None values."""
    if not (len(pred) == len(truth) == len(num_steps)):
        raise ValueError(f"boundary_agreement: need one entry per trace; got {len(pred)}, {len(truth)}, "
                         f"{len(num_steps)}")
    if not pred:
        return {"num_labelled": 0, "exact_match": None, "mean_abs_step_error": None}
    p = np.asarray([k - 1 if b is None else b for b, k in zip(pred, num_steps)], np.int64)
    t = np.asarray(truth, np.int64)
    return {"num_labelled": len(p), "exact_match": float(np.mean(p == t)),
            "mean_abs_step_error": float(np.mean(np.abs(p - t)))}


def cut_summary(removed_steps: Sequence[int], steps: Sequence[int], removed_tok: Sequence[int],
                tokens: Sequence[int]) -> dict[str, Any]:
    """How much was cut: per-record removed steps / tokens out of the reasoning's `steps` / `tokens`."""
    rs, ks = np.asarray(removed_steps, np.float64), np.asarray(steps, np.float64)
    rt, ts = np.asarray(removed_tok, np.float64), np.asarray(tokens, np.float64)
    return {"records_cut": int(np.count_nonzero(rs)), "share_records_cut": float(np.mean(rs > 0)),
            "steps_removed_total": int(rs.sum()), "steps_removed_mean": float(rs.mean()),
            "step_share": float(rs.sum() / ks.sum()), "step_share_mean": float(np.mean(rs / ks)),
            "tokens_removed_total": int(rt.sum()), "tokens_removed_mean": float(rt.mean()),
            "token_share": float(rt.sum() / max(ts.sum(), 1.0)),
            "token_share_mean": float(np.mean(rt / np.maximum(ts, 1.0)))}


def _labelled(records: Sequence[Mapping[str, Any]], scored, field: str) -> list[int]:
    """Indices of records with a ground-truth boundary, each checked against its step count."""
    out = []
    for i, (rec, s) in enumerate(zip(records, scored)):
        b = rec.get("boundary")
        if b is None:
            continue
        k = len(s.encoded.split.steps)
        if b >= k:
            raise ValueError(f"{field}, record {i + 1}: boundary {b} is not a step of its {k}-step completion")
        out.append(i)
    return out


def run_hcc(cfg: Any) -> dict[str, Any]:
    """The `hcc` command (see the module docstring); returns the report."""
    t0 = time.perf_counter()
    settings = check_hcc_config(cfg)
    records = read_hcc_records(settings["input"])
    tokenizer = build_tokenizer(cfg.data)
    _, parts, params, rest, _ = build_policy(cfg, tokenizer)
    model = parts.merge(params, rest)
    scored = score_traces(model, tokenizer, [r["prompt"] for r in records], [r["completion"] for r in records],
                          batch_size=settings["batch_size"], uncertainty=settings["uncertainty"])
    labelled = _labelled(records, scored, f"hcc.input={settings['input']!r}")
    fit_ids = labelled[: settings["fit_tau_records"]]
    tau, fitted = settings["tau"], bool(fit_ids)
    if fitted:
        tau = hcc.fit_tau([scored[i].m for i in fit_ids], [scored[i].k_ans for i in fit_ids],
                          [_editor_label(records[i], scored[i]) for i in fit_ids])
    at_edge = fitted and hcc.tau_at_grid_edge(tau)
    if at_edge:
        print(f"hcc: warning: the fitted tau {tau} is the smallest candidate of hcc.fit_tau's grid; the scorer's "
              "mismatch is below it on most steps, so the cut is near empty (fix hcc.tau lower, or score with a "
              "less certain model)", flush=True)
    edits = [scored_cut(s, tau) for s in scored]
    removed_tok = [removed_tokens(s, e) for s, e in zip(scored, edits)]
    os.makedirs(os.path.dirname(os.path.abspath(settings["output"])), exist_ok=True)
    with open(settings["output"], "w", encoding="utf-8") as f:
        for rec, e, n in zip(records, edits, removed_tok):
            out = {**rec, "completion": e.text, "original_completion": rec["completion"], "hcc_boundary": e.boundary,
                   "hcc_removed_steps": e.removed_steps, "hcc_removed_tokens": n}
            f.write(json.dumps(out) + "\n")
    steps = [len(s.encoded.split.steps) for s in scored]
    # The reasoning's tokens: those starting before the end of its last step (separators included).
    reasoning_tokens = [int(np.count_nonzero(s.encoded.token_spans[:, 0] < s.encoded.split.spans[-1][1]))
                        for s in scored]
    held_out = labelled[len(fit_ids):]

    def agreement(ids: Sequence[int]) -> dict[str, Any]:
        return boundary_agreement([edits[i].boundary for i in ids], [records[i]["boundary"] for i in ids],
                                  [steps[i] for i in ids])

    report = {"num_records": len(records), "tau": tau, "tau_fitted": fitted, "tau_at_grid_edge": at_edge,
              "fit_records": len(fit_ids),
              "uncertainty": settings["uncertainty"],
              "cut": cut_summary([e.removed_steps for e in edits], steps, removed_tok, reasoning_tokens),
              "agreement": {"all": agreement(labelled), "held_out": agreement(held_out)} if labelled else None,
              "input": settings["input"], "output": settings["output"],
              "model": str(cfg.model.get("init_from", "") or f"random {cfg.model.get('preset', '')}"),
              "wall_time_s": time.perf_counter() - t0}
    write_json(settings["report"], report)
    print(f"hcc: cut {report['cut']['records_cut']}/{len(records)} records, "
          f"{report['cut']['step_share']:.1%} of steps, {report['cut']['token_share']:.1%} of reasoning tokens "
          f"(tau {tau:.2f}); wrote {settings['output']} and {settings['report']}")
    return report


def _editor_label(rec: Mapping[str, Any], scored) -> int | None:
    """A ground-truth boundary in `hcc.cut_boundary`'s convention (None = nothing to cut)."""
    b = int(rec["boundary"])
    return None if b == len(scored.encoded.split.steps) - 1 else b
