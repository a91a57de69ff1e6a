"""Benchmark one GRPO step of this package beside TRL's `GRPOTrainer` and Tunix's `GRPOLearner`, in one run.

    python tools/bench_rl_step.py --steps 5 --out bench_rl.json
    python tools/bench_rl_step.py --trl-python "" --tunix-python ""          # this package only
    python tools/bench_rl_step.py --hidden-size 64 --num-layers 2 --new-tokens 16 --markdown

The same work in all three (defaults in brackets): a Qwen3-style decoder (q/k RMSNorm, tied
embeddings, RoPE theta 1e6) at hidden [256], layers [4], intermediate [1024], heads [4], KV
heads [2], head_dim [64], vocab [4096], fp32, random weights; [4] prompts of [32] tokens, [8]
samples each, exactly [64] new tokens per sample (sampling never stops early: our sampler gets no
stop ids, TRL gets `min_new_tokens`, Tunix an eos id the model cannot emit), temperature 1, no
top-k / top-p; reward = the share of even token ids in the completion (`rl_peers/task.py`, the
same function everywhere, about a microsecond per row); GRPO group advantages; one optimizer
update per batch (one epoch, one mini-batch = the whole batch), AdamW (0.9, 0.999, 1e-8, no
weight decay) at a constant learning rate with global-norm clipping at 1, no KL reference model
(beta = 0), no gradient checkpointing anywhere. The tokenizer is one word-level `tokenizers`
model over the vocab (`rl_peers/task.py`), read by each framework through its own loader.

Contenders, alternated each round (ours, TRL at 1 thread, TRL at the core count, Tunix) after
`--warmup` untimed rounds (compilation), `--steps` timed rounds; medians are reported with the
range of the per-round ratios:

* ours: `configs/quickstart.py` turned into this shape (`ours_config`: grpo objective and
  estimator, `rl.reuse_epochs = rl.minibatches = 1`, DGG off, `rl.kl_coef = 0`), a task registered
  here (`rl_bench_even_ids`), `train.rl.setup_rl(cfg, warm_up=False)` and `train.rl_step.rl_step`
  timed whole, in this process, on XLA:CPU's thread pool. Phases from its record:
  `rollout/time_s` + `rollout/score_time_s` (prompts, sampling, decoding, scoring), the learner's
  log-prob pass (with one update per batch the sampler's log-probs are the proximal ones,
  `train/proximal.py`, and the pass runs only on `rl.proximal_check_rows` rows for the mismatch
  guard; timed by a blocking wrapper on `setup.logprob_fn`, so it does not overlap the scoring
  here, which costs microseconds) and `update/time_s` (the jitted update). The one change to the built setup:
  `setup.sampling.stop_ids = ()`, so every sample has exactly `--new-tokens` tokens.
* TRL: `rl_peers/trl_worker.py` in `--trl-python`'s venv (`GRPOTrainer`, its docstring says
  exactly what is timed), at `torch.set_num_threads(1)` and at the core count; the better of the
  two is the one the ratio uses (on a shared 2-core machine torch at 2 threads can stall).
* Tunix: `rl_peers/tunix_worker.py` in `--tunix-python`'s venv (`GRPOLearner` on JAX CPU).

Each peer is a long-lived subprocess that builds its trainer once and runs one timed step per
request line (`rl_peers/protocol.py`); it measures its own step, so the pipe is not timed. A peer
whose interpreter is missing, or that fails to build or step, is skipped with the reason (the
error text) in the table and the JSON. Generated tokens/s = prompts x samples x new tokens / the
median step time; each step's measured completion tokens are recorded too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import bench_common  # noqa: E402
from rl_peers import task as bench_task  # noqa: E402
from rl_peers.protocol import Peer, PeerError  # noqa: E402

TASK_NAME = "rl_bench_even_ids"
TRL_PYTHON = "/tmp/trlvenv/bin/python"
TUNIX_PYTHON = "/tmp/tunixvenv/bin/python"
VENV_RECIPES = {
    "trl": "python -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0 transformers trl datasets",
    "tunix": "python -m venv /tmp/tunixvenv && /tmp/tunixvenv/bin/pip install google-tunix",
}
PHASES = ("rollout_s", "logprob_s", "update_s")
# What each framework's phases measure (in the JSON beside its times); "other" = step - the phases.
PHASE_NOTES = {
    "ours": {"rollout_s": "rl_step's rollout/time_s + rollout/score_time_s: prompts, sampling, decoding, scoring",
             "logprob_s": "the learner's proximal log-prob pass (on rl.proximal_check_rows rows when the sampler's "
                          "log-probs are exact, train/proximal.py)",
             "update_s": "rl_step's update/time_s: the jitted loss forward/backward, clipping and AdamW",
             "other": "batch assembly, advantages, metrics"},
    "trl": {"rollout_s": "GRPOTrainer._generate_and_score_completions: generation, reward, advantages",
            "logprob_s": "none: with num_iterations=1 and beta=0 TRL computes no old or reference log-probs",
            "update_s": "the rest of the step: loss forward/backward, clipping, optimizer step (optimizer_s alone)",
            "other": "included in update_s"},
    "tunix": {"rollout_s": "RLCluster.generate: tokenize, prefill, decode, detokenize",
              "logprob_s": "none: with num_iterations=1 and beta=0 Tunix computes no old or reference log-probs",
              "update_s": "RLCluster.update_actor: loss forward/backward and optimizer step (waited for)",
              "other": "rewards, advantages, the learner's data queue and metrics"},
}
ROPE_THETA, RMS_NORM_EPS = 1_000_000.0, 1e-6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape = p.add_argument_group("shape")
    for flag, default in (("hidden-size", 256), ("num-layers", 4), ("intermediate-size", 1024), ("num-heads", 4),
                          ("num-kv-heads", 2), ("head-dim", 64), ("vocab-size", 4096), ("prompts", 4),
                          ("samples", 8), ("new-tokens", 64), ("prompt-len", 32)):
        shape.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--steps", type=int, default=5, help="timed rounds (each contender once per round)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (compilation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl-python", default=TRL_PYTHON, help="TRL venv's python ('' or a missing path: skip TRL)")
    p.add_argument("--tunix-python", default=TUNIX_PYTHON, help="Tunix venv's python ('' or missing: skip Tunix)")
    p.add_argument("--peer-timeout", type=float, default=1800.0, help="seconds a peer may take to build or step")
    p.add_argument("--work-dir", default="", help="tokenizer, peer models and logs ('' = a temporary folder)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("hidden_size", "num_layers", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                 "prompts", "new_tokens", "prompt_len", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.samples < 2:
        p.error(f"--samples must be >= 2 (GRPO's group baseline); got {args.samples}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0; got {args.warmup}")
    if args.num_heads % args.num_kv_heads:
        p.error(f"--num-heads {args.num_heads} must be a multiple of --num-kv-heads {args.num_kv_heads}")
    if args.vocab_size <= bench_task.FIRST_WORD_ID + 1:
        p.error(f"--vocab-size must be > {bench_task.FIRST_WORD_ID + 1}; got {args.vocab_size}")
    if not args.learning_rate > 0:
        p.error(f"--learning-rate must be > 0; got {args.learning_rate}")
    return args


def model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The decoder shape every framework builds (the workers' `model` section)."""
    return {"vocab_size": args.vocab_size, "hidden_size": args.hidden_size,
            "intermediate_size": args.intermediate_size, "num_layers": args.num_layers, "num_heads": args.num_heads,
            "num_kv_heads": args.num_kv_heads, "head_dim": args.head_dim, "rope_theta": ROPE_THETA,
            "rms_norm_eps": RMS_NORM_EPS, "tie_word_embeddings": True}


def tokens_per_step(args: argparse.Namespace) -> int:
    return args.prompts * args.samples * args.new_tokens


# ---------------------------------------------------------------------------------------------- ours


def register_bench_task() -> None:
    """`data.task = "rl_bench_even_ids"`: prompts of `prompt_len` random words, reward `even_id_fraction`."""
    from jaxrl_llm.envs import DrawnTask, register_task
    from jaxrl_llm.envs.registry import TASKS

    class EvenIdTask(DrawnTask):
        name = TASK_NAME

        def __init__(self, *, prompt_len: int = 32, vocab_size: int = 4096, eval_fraction: float = 0.1):
            super().__init__(eval_fraction=eval_fraction)
            bench_task.check_vocab_size(vocab_size)
            self.prompt_len, self.vocab_size = int(prompt_len), int(vocab_size)

        def draw(self, rng):
            return bench_task.prompt_text(bench_task.prompt_ids(rng, self.prompt_len, self.vocab_size)), ""

        def score(self, problem, response):
            return bench_task.even_id_fraction(response)

    if TASK_NAME not in TASKS:
        register_task(TASK_NAME, EvenIdTask)


def ours_config(args: argparse.Namespace, tokenizer_dir: str, output_dir: str):
    """`configs/quickstart.py` at the benchmark's shape and step (see the module docstring)."""
    from ml_collections import ConfigDict

    from jaxrl_llm.cli import load_config_file

    cfg = load_config_file(str(REPO / "configs" / "quickstart.py"))
    cfg.seed = args.seed
    cfg.output_dir = output_dir
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, 1  # one device, as the peers (XLA:CPU threads inside)
    m = cfg.model
    m.preset = "qwen3-0.6b"  # q/k norm, no biases, tied embeddings; the fields below set the shape
    for key, value in model_fields(args).items():
        m[key] = value
    m.param_dtype = "float32"
    m.dtype = "float32"
    m.remat = "none"
    d = cfg.data
    d.task = TASK_NAME
    d.task_kwargs = ConfigDict({"prompt_len": args.prompt_len, "vocab_size": args.vocab_size})
    d.tokenizer = tokenizer_dir
    d.seq_len = args.prompt_len + args.new_tokens
    cfg.sft.train.steps = 0
    rl = cfg.rl
    rl.steps = args.warmup + args.steps
    rl.prompts_per_step, rl.samples_per_prompt, rl.max_new_tokens = args.prompts, args.samples, args.new_tokens
    rl.temperature, rl.top_k, rl.top_p = 1.0, 0, 1.0
    rl.objective, rl.advantage = "grpo", "grpo"
    rl.reuse_epochs, rl.minibatches, rl.micro_batches = 1, 1, 1
    rl.kl_coef = 0.0
    rl.dgg.enabled = False
    rl.progress_bar = False
    o = rl.optimizer
    o.learning_rate, o.warmup_steps, o.decay_steps, o.end_learning_rate_ratio = args.learning_rate, 0, 0, 1.0
    o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm = 0.9, 0.999, 1e-8, 0.0, 1.0
    cfg.eval.num_problems = 0
    return cfg


def make_ours(args: argparse.Namespace, tokenizer_dir: str, output_dir: str) -> tuple[Callable[[], dict], dict]:
    """`(step, info)`: one timed `rl_step` of this package per call (`step()` returns its times)."""
    import flax
    import jax

    from jaxrl_llm.train.rl import setup_rl
    from jaxrl_llm.train.rl_step import rl_step

    register_bench_task()
    t0 = time.perf_counter()
    setup = setup_rl(ours_config(args, tokenizer_dir, output_dir), warm_up=False)
    # No stop ids: every sample has exactly max_new_tokens tokens, as in the peers.
    setup.sampling = dataclasses.replace(setup.sampling, stop_ids=())
    clock = {"logprob_s": 0.0}
    logprob_fn = setup.logprob_fn

    def timed_logprob(*a, **kw):
        t = time.perf_counter()
        out = jax.block_until_ready(logprob_fn(*a, **kw))
        clock["logprob_s"] += time.perf_counter() - t
        return out

    setup.logprob_fn = timed_logprob
    box = {"state": setup.state}

    def step() -> dict:
        clock["logprob_s"] = 0.0
        t = time.perf_counter()
        box["state"], record = rl_step(setup, box["state"])
        step_s = time.perf_counter() - t
        rollout_s = record["rollout/time_s"] + record["rollout/score_time_s"]  # as the peers': scoring included
        return {"step_s": step_s, "rollout_s": rollout_s, "logprob_s": clock["logprob_s"],
                "update_s": record["update/time_s"], "completion_tokens": int(record["rollout/tokens"]),
                "reward_mean": record["reward/mean"], "proximal_skipped": bool(record["rollout/proximal_skipped"])}

    n_params = sum(int(x.size) for x in jax.tree.leaves(setup.state.params))
    info = {"versions": {"jax": jax.__version__, "flax": flax.__version__}, "params": n_params,
            "build_s": time.perf_counter() - t0,
            "threads": f"XLA:CPU pool ({bench_common.available_cores()} cores)",
            "devices": f"1 {jax.devices()[0].device_kind} device (mesh 1 x 1 x 1)"}
    return step, info


# --------------------------------------------------------------------------------------------- peers


def worker_config(args: argparse.Namespace, tokenizer_dir: str, work_dir: str) -> dict[str, Any]:
    return {"model": model_fields(args), "prompts": args.prompts, "samples": args.samples,
            "new_tokens": args.new_tokens, "prompt_len": args.prompt_len, "learning_rate": args.learning_rate,
            "total_steps": (args.warmup + args.steps) * len(thread_settings()), "tokenizer_dir": tokenizer_dir,
            "work_dir": work_dir, "seed": args.seed}


def thread_settings() -> list[int]:
    """TRL's torch thread counts: 1 and the core count (one setting on a 1-core machine)."""
    return sorted({1, bench_common.available_cores()})


def missing_python(flag: str, path: str, peer: str) -> str | None:
    """Why the peer cannot run from `path` (None if it can)."""
    if not path:
        return f"{flag} is empty (peer not requested)"
    if not os.path.isfile(path):
        return f"{flag} {path} does not exist; create the venv with: {VENV_RECIPES[peer]}"
    return None


def start_peer(name: str, python: str, args: argparse.Namespace, config: dict, work_dir: str) -> Peer:
    worker = str(TOOLS / "rl_peers" / f"{name}_worker.py")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # nothing may download
    if name == "tunix":
        env["JAX_PLATFORMS"] = "cpu"
    return Peer.start(name, python, worker, config, log_path=os.path.join(work_dir, f"{name}_worker.log"),
                      timeout_s=args.peer_timeout, env=env)


# ------------------------------------------------------------------------------------------------ run


@dataclasses.dataclass
class Contender:
    """One column of the table: how to run a step, what it reported, and why it stopped (if it did)."""

    name: str
    label: str
    framework: str
    step: Callable[[], dict] | None
    info: dict = dataclasses.field(default_factory=dict)
    records: list = dataclasses.field(default_factory=list)
    first_step_s: float | None = None
    skipped: str | None = None


def peer_step(peer: Peer, request: dict, timeout_s: float) -> Callable[[], dict]:
    return lambda: peer.request(request, timeout_s=timeout_s)


def build_contenders(args: argparse.Namespace, work_dir: str, tokenizer_dir: str) -> tuple[list[Contender], list]:
    """`(contenders in round order, peers to close)`; a peer that cannot start is a skipped contender."""
    step, info = make_ours(args, tokenizer_dir, os.path.join(work_dir, "ours"))
    contenders = [Contender("ours", "ours (jaxrl_llm)", "ours", step, info)]
    peers = []
    config = worker_config(args, tokenizer_dir, work_dir)
    trl_labels = [(f"trl_{n}_thread{'s' if n > 1 else ''}", f"TRL ({n} thread{'s' if n > 1 else ''})", n)
                  for n in thread_settings()]
    reason = missing_python("--trl-python", args.trl_python, "trl")
    if reason is None:
        try:
            t0 = time.perf_counter()
            peer = start_peer("trl", args.trl_python, args, config, work_dir)
            peers.append(peer)
            info = {**peer.info, "build_s": time.perf_counter() - t0}
            for name, label, n in trl_labels:
                contenders.append(Contender(name, label, "trl", peer_step(peer, {"threads": n}, args.peer_timeout),
                                            {**info, "threads": f"torch {n}"}))
        except PeerError as e:
            reason = str(e)
    if reason is not None:
        contenders += [Contender(name, label, "trl", None, {"threads": f"torch {n}"}, skipped=reason)
                       for name, label, n in trl_labels]
    reason = missing_python("--tunix-python", args.tunix_python, "tunix")
    if reason is None:
        try:
            t0 = time.perf_counter()
            peer = start_peer("tunix", args.tunix_python, args, {**config, "total_steps": args.warmup + args.steps},
                              work_dir)
            peers.append(peer)
            contenders.append(Contender("tunix", "Tunix", "tunix", peer_step(peer, {}, args.peer_timeout),
                                        {**peer.info, "build_s": time.perf_counter() - t0,
                                         "threads": f"XLA:CPU pool ({bench_common.available_cores()} cores)"}))
        except PeerError as e:
            reason = str(e)
    if reason is not None:
        contenders.append(Contender("tunix", "Tunix", "tunix", None, skipped=reason))
    return contenders, peers


def alternate(contenders: list[Contender], args: argparse.Namespace) -> list[float]:
    """`--warmup` untimed then `--steps` timed rounds, contenders in order; returns the 1-minute load per round.

    TRL's thread settings are two contenders on one worker, so its warm-up runs at both settings.
    A contender whose step fails is skipped from then on, with the error as its reason.
    """
    loads = []
    for round_index in range(args.warmup + args.steps):
        timed = round_index >= args.warmup
        if timed:
            loads.append(round(bench_common.load_average()[0], 2))
        for c in contenders:
            if c.skipped is not None:
                continue
            try:
                reply = c.step()
            except PeerError as e:
                c.skipped = f"failed at round {round_index}: {e}"
                for other in contenders:  # TRL's other thread setting shares the dead worker
                    if other.framework == c.framework and other.skipped is None:
                        other.skipped = c.skipped
                continue
            if round_index == 0:
                c.first_step_s = reply["step_s"]
            if timed:
                c.records.append(reply)
    return loads


def summarize(c: Contender, tokens: int) -> dict[str, Any]:
    """The JSON entry of one contender: per-round values, medians, tokens/s = `tokens` / median step."""
    out: dict[str, Any] = {"label": c.label, "framework": c.framework, **c.info,
                           "phase_notes": PHASE_NOTES[c.framework]}
    if c.skipped is not None and not c.records:
        return {**out, "status": "skipped", "reason": c.skipped}
    steps = [r["step_s"] for r in c.records]
    median = bench_common.median(steps)
    phases = {k: [r[k] for r in c.records] for k in PHASES if k in c.records[0]}
    out.update({
        "status": "ran" if c.skipped is None else "partial",
        "step_s": steps, "step_s_median": median, "tokens_per_s": tokens / median,
        "first_step_s": c.first_step_s,
        "phases": phases, "phases_median": {k: bench_common.median(v) for k, v in phases.items()},
        "completion_tokens": [r["completion_tokens"] for r in c.records],
        "reward_mean": [r["reward_mean"] for r in c.records],
    })
    if "optimizer_s" in c.records[0]:
        out["optimizer_s_median"] = bench_common.median([r["optimizer_s"] for r in c.records])
    if c.skipped is not None:
        out["reason"] = c.skipped
    return out


def ratios(ours: dict, peer: dict) -> dict[str, Any] | None:
    """ours/peer generated tokens/s (the peer's median step time over ours) and the per-round range."""
    if "step_s" not in ours or "step_s" not in peer:
        return None
    n = min(len(ours["step_s"]), len(peer["step_s"]))
    paired = bench_common.paired_ratios(peer["step_s"][:n], ours["step_s"][:n])
    return {"median": peer["step_s_median"] / ours["step_s_median"], "paired_min": min(paired),
            "paired_max": max(paired)}


def best_trl(entries: dict[str, dict]) -> str | None:
    """The TRL thread setting with the lower median step time (the one the TRL ratio uses)."""
    ran = [k for k, v in entries.items() if v["framework"] == "trl" and "step_s_median" in v]
    return min(ran, key=lambda k: entries[k]["step_s_median"]) if ran else None


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """Build every contender, alternate their steps, and return the result dict (module docstring)."""
    load_at_start = bench_common.load_average()
    owned = None if args.work_dir else tempfile.TemporaryDirectory(prefix="bench_rl_step_")
    work_dir = args.work_dir or owned.name
    os.makedirs(work_dir, exist_ok=True)
    tokens = tokens_per_step(args)
    try:
        tokenizer_dir = bench_task.write_tokenizer(os.path.join(work_dir, "tokenizer"), args.vocab_size)
        contenders, peers = build_contenders(args, work_dir, tokenizer_dir)
        load_after_build = bench_common.load_average()
        try:
            loads = alternate(contenders, args)
        finally:
            for peer in peers:
                peer.close()
    finally:
        if owned is not None:
            owned.cleanup()
    entries = {c.name: summarize(c, tokens) for c in contenders}
    best = best_trl(entries)
    result = {
        **bench_common.run_metadata(argv),
        "load_average_1m_5m_15m_at_start": [round(x, 2) for x in load_at_start],
        "load_average_1m_5m_15m_after_build": [round(x, 2) for x in load_after_build],
        "load_average_1m_per_timed_round": loads,
        "shape": {**model_fields(args), "dtype": "float32", "prompts": args.prompts, "samples": args.samples,
                  "new_tokens": args.new_tokens, "prompt_len": args.prompt_len},
        "tokens_per_step": tokens,
        "learning_rate": args.learning_rate,
        "steps": args.steps,
        "warmup": args.warmup,
        "timing": ("rounds alternate " + ", ".join(c.name for c in contenders) + f" after {args.warmup} untimed "
                   f"rounds; medians of {args.steps} timed rounds; each step timed by its own process"),
        "contenders": entries,
        "trl_best": best,
        "speedup_vs": {},
    }
    for name, entry in entries.items():
        r = ratios(entries["ours"], entry) if name != "ours" else None
        if r is not None:
            result["speedup_vs"][name] = r
    if best:
        result["speedup_vs"]["trl"] = result["speedup_vs"][best]
    return result


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def result_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """`(header, rows, notes)` of the summary table; notes give each skipped contender's reason."""
    entries = result["contenders"]
    names = list(entries)
    header = [""] + [entries[n]["label"] + (" *" if n == result["trl_best"] else "") for n in names]
    notes = [f"{entries[n]['label']}: not run: {entries[n]['reason']}" for n in names if "reason" in entries[n]]

    def row(label: str, cell: Callable[[str, dict], str]) -> list[str]:
        return [label] + [cell(n, entries[n]) if "step_s_median" in entries[n] else
                          ("skipped" if label.startswith("step time") else "") for n in names]

    def phase(key: str) -> Callable[[str, dict], str]:
        return lambda n, e: _fmt(e["phases_median"].get(key), ".3f") if key in e["phases_median"] else "none"

    def other(n: str, e: dict) -> str:
        if e["framework"] == "trl":
            return "in update"
        return _fmt(e["step_s_median"] - sum(e["phases_median"].values()))

    def ratio(n: str, e: dict) -> str:
        r = result["speedup_vs"].get(n)
        return "-" if r is None else f"{r['median']:.2f}x ({r['paired_min']:.2f}-{r['paired_max']:.2f})"

    def versions(n: str, e: dict) -> str:
        return " ".join(f"{k} {v}" for k, v in e.get("versions", {}).items())

    rows = [
        row("step time (s, median)", lambda n, e: _fmt(e["step_s_median"])),
        row("generated tokens/s", lambda n, e: f"{e['tokens_per_s']:,.0f}"),
        row("rollout (s, median)", phase("rollout_s")),
        row("learner log-probs (s, median)", phase("logprob_s")),
        row("update (s, median)", phase("update_s")),
        row("other (s, median)", other),
        row("completion tokens / step", lambda n, e: "/".join(str(t) for t in sorted(set(e["completion_tokens"])))),
        row("ours/peer tokens/s (round range)", ratio),
        row("first step, compiles (s)", lambda n, e: _fmt(e["first_step_s"], ".1f")),
        ["threads"] + [entries[n].get("threads", "") for n in names],
        ["params"] + [f"{entries[n]['params']:,}" if "params" in entries[n] else "" for n in names],
        ["versions"] + [versions(n, entries[n]) for n in names],
    ]
    return header, rows, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    script = os.path.relpath(__file__) if argv is None else "tools/bench_rl_step.py"
    result = run(args, ["python", script] + list(sys.argv[1:] if argv is None else argv))
    header, rows, notes = result_rows(result)
    table = bench_common.markdown_table if args.markdown else bench_common.format_table
    print(table(header, rows))
    s = result["shape"]
    print(f"shape: {s['prompts']} prompts x {s['samples']} samples x {s['new_tokens']} new tokens "
          f"({result['tokens_per_step']} tokens/step), prompt {s['prompt_len']} tokens; "
          f"Qwen3-style D={s['hidden_size']} L={s['num_layers']} F={s['intermediate_size']} H={s['num_heads']}/{s['num_kv_heads']} Dh={s['head_dim']} "
          f"V={s['vocab_size']} fp32; * = the TRL setting the TRL ratio uses")
    print(f"{result['cpu']}, {result['cpu_cores']} cores, load {result['load_average_1m_5m_15m_at_start'][0]} -> "
          f"{result['load_average_1m_5m_15m'][0]}, {result['date_utc']}")
    for note in notes:
        print(note)
    if args.out:
        bench_common.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
