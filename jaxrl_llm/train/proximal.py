"""The proximal log-probs `old_logprobs [B, T]` of a rollout batch: the learner's pass, or the sampler's own.

Before an update the learner normally recomputes the log-probs of the sampled tokens under the
parameters that sampled them (the proximal pass, one forward over the whole batch). That pass
adds nothing when the sampler's own log-probs already are the learner's: with
`rl.proximal_pass = "auto"` and every condition of `proximal_blockers` met, the rollout's
`processed_logprobs` (log-probs under the distribution actually sampled from) serve as
`old_logprobs`, and the learner's pass runs only on `rl.proximal_check_rows` rows, evenly spaced
over the rows with response tokens, so `rollout/mismatch_abs_logp` (and the `rl.max_mismatch`
guard on it) still measures sampler against learner at every step. The conditions:

* the rollout's weights are the learner's: no rollout quantization, or `rl.qarl` (the learner
  runs through the same quantized weights);
* the sampled distribution is the learner's policy softmax(logits / T): the sampler's temperature
  is `rl.temperature`, `rl.top_k = 0` and `rl.top_p = 1` (no truncation of the softmax);
* no LoRA adapters (the sampler multiplies the merged weight, the learner base plus adapter);
* one optimizer step per batch (`rl.reuse_epochs = rl.minibatches = 1`), so the proximal policy
  is the sampling policy;
* no critic (its pass gives the values too, so it runs anyway);
* fewer check rows than batch rows (else the check is the full pass).

The two choices of `old_logprobs` then differ by the sampler-vs-learner rounding only (about
1e-6 nats per token in fp32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from jaxrl_llm.models.lora import has_lora
from jaxrl_llm.train.rl_update import dispatch

PROXIMAL_PASSES = ("auto", "always")
DEFAULT_CHECK_ROWS = 8


def check_proximal_config(rl: Any) -> None:
    """`rl.proximal_pass` is "auto" or "always"; `rl.proximal_check_rows` an integer >= 1."""
    mode = rl.get("proximal_pass", "always")
    if mode not in PROXIMAL_PASSES:
        raise ValueError(f"rl.proximal_pass must be one of {list(PROXIMAL_PASSES)}; got {mode!r}")
    rows = rl.get("proximal_check_rows", DEFAULT_CHECK_ROWS)
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"rl.proximal_check_rows must be an integer >= 1 (rows the learner's pass still "
                         f"checks); got {rows!r}")


def proximal_blockers(rl: Any, *, sampling_temperature: float, params: Any, rows: int,
                      critic: bool) -> tuple[str, ...]:
    """Why the learner's proximal pass must run over the whole batch; empty: it may be skipped.

    `rl`: the config's `rl` section; `sampling_temperature`: the temperature the rows were sampled at;
    `params`: the policy's parameters (LoRA adapters are looked for); `rows`: B, the batch rows;
    `critic`: the critic's pass runs (it yields `old_logprobs` with the values).
    """
    out = []
    if rl.get("proximal_pass", "always") != "auto":
        out.append("rl.proximal_pass='always'")
    if rl.rollout_quant and not rl.qarl:
        out.append(f"rl.rollout_quant={rl.rollout_quant!r} without rl.qarl")
    if float(sampling_temperature) != float(rl.temperature):
        out.append(f"sampled at temperature {sampling_temperature} != rl.temperature={rl.temperature}")
    if int(rl.top_k) != 0:
        out.append(f"rl.top_k={rl.top_k}")
    if float(rl.top_p) != 1.0:
        out.append(f"rl.top_p={rl.top_p}")
    if has_lora(params):
        out.append("LoRA adapters")
    if int(rl.reuse_epochs) != 1 or int(rl.minibatches) != 1:
        out.append(f"rl.reuse_epochs={rl.reuse_epochs} x rl.minibatches={rl.minibatches} optimizer steps")
    if critic:
        out.append("the critic's pass")
    if int(rl.get("proximal_check_rows", DEFAULT_CHECK_ROWS)) >= rows:
        out.append(f"rl.proximal_check_rows={rl.get('proximal_check_rows', DEFAULT_CHECK_ROWS)} >= {rows} rows")
    return tuple(out)


def check_rows(mask: np.ndarray, count: int) -> np.ndarray:
    """`[count]` int row indices evenly spaced over the rows of `mask [B, T]` with a response token
    (over all rows when none has one). A fixed count: one compiled shape of the check pass."""
    live = np.flatnonzero(np.asarray(mask).sum(axis=1) > 0)
    live = live if len(live) else np.arange(mask.shape[0])
    return live[np.linspace(0, len(live) - 1, count).round().astype(np.int64)]


def mismatch_abs_logp(old: np.ndarray, rollout: np.ndarray, mask: np.ndarray) -> float:
    """Mean |old - rollout| log-prob over the tokens of `mask`, all `[B, T]` (0 without tokens)."""
    return float(np.sum(np.abs(old - rollout) * mask) / max(float(np.sum(mask)), 1.0))


def proximal_logprobs(setup: Any, params: Any, arrays: tuple, batch: Any, *,
                      sampling_temperature: float) -> tuple[np.ndarray, float, bool]:
    """`(old_logprobs [B, T], mismatch, skipped)` for `batch` (a `RolloutBatch` whose `rollout_logprobs`
    are the sampler's) under `params`, by `setup.logprob_fn` on `arrays = (tokens, positions,
    segment_ids)`. `mismatch`: `rollout/mismatch_abs_logp`, over the check rows when `skipped`."""
    return launch_proximal(setup, params, arrays, batch, sampling_temperature=sampling_temperature)()


def launch_proximal(setup: Any, params: Any, arrays: tuple, batch: Any, *,
                    sampling_temperature: float) -> Callable[[], tuple[np.ndarray, float, bool]]:
    """`proximal_logprobs` in two halves: the learner's pass is dispatched now, and the returned
    callable waits for it and gives `(old_logprobs, mismatch, skipped)`. Host work done in between
    (the step's scoring) overlaps the device's pass. Reads `batch.loss_mask` and
    `batch.rollout_logprobs` now: they must be final."""
    mask = batch.loss_mask
    blockers = proximal_blockers(setup.cfg.rl, sampling_temperature=sampling_temperature, params=params,
                                 rows=mask.shape[0], critic=setup.values_fn is not None)
    if blockers:
        pending = dispatch(setup.logprob_fn, params, setup.rest, *arrays)

        def full() -> tuple[np.ndarray, float, bool]:
            old = np.asarray(pending()[0]) * mask
            return old, mismatch_abs_logp(old, batch.rollout_logprobs, mask), False

        return full
    rows = check_rows(mask, int(setup.cfg.rl.get("proximal_check_rows", DEFAULT_CHECK_ROWS)))
    pending = dispatch(setup.logprob_fn, params, setup.rest, *(np.asarray(a)[rows] for a in arrays))
    sub, rollout_logprobs = mask[rows], np.asarray(batch.rollout_logprobs)

    def checked() -> tuple[np.ndarray, float, bool]:
        learner = np.asarray(pending()[0]) * sub
        return rollout_logprobs * mask, mismatch_abs_logp(learner, rollout_logprobs[rows], sub), True

    return checked
