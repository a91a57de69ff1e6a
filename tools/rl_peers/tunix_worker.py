"""Google Tunix's `GRPOLearner` step at the RL-step benchmark's shape, one step per request (`protocol.py`).

    /tmp/tunixvenv/bin/python tools/rl_peers/tunix_worker.py CONFIG_JSON   # started by tools/bench_rl_step.py

Built once: Tunix's own Qwen3 (`tunix.models.qwen3.model.Qwen3`, random init from `nnx.Rngs(seed)`,
fp32 params and compute, no remat) on a one-device `("fsdp", "tp")` mesh, an `RLCluster` with the
actor and the vanilla rollout engine sharing that mesh (so they share the weights: no weight
sync) and no reference model, and a `GRPOLearner` with `num_generations = samples`,
`num_iterations = 1`, `beta = 0`, one mini-batch = the whole batch (one optimizer update per
step), optimizer `optax.chain(clip_by_global_norm(1), adamw(lr, 0.9, 0.999, 1e-8, wd=0))`. The
rollout samples at temperature 1 with top-p 1 (Tunix's `top_p` sampler) and stops only on
`eos_tokens = [vocab_size]`, an id the model cannot emit, so every completion has exactly
`max_tokens_to_generate = new_tokens` tokens; prompts are `max_prompt_length = prompt_len` tokens.
The tokenizer is the benchmark's (`task.py`) as a `transformers.PreTrainedTokenizerFast`.

What is timed. `learner.train(dataset)` runs over a dataset whose iterator blocks until the
parent's request arrives, reads the clock and hands the learner that step's batch of prompts;
when the learner asks for the next batch (or calls `rl_cluster.close()` after the last step), the
actor's parameters are waited for (`jax.block_until_ready`) and the clock is read again. So a step
is one whole global step of the learner: rollout (`rl_cluster.generate`: tokenize, prefill,
decode, detokenize), rewards and group advantages, the actor update (`rl_cluster.update_actor`:
the loss forward and backward and the optimizer step) and the learner's metric buffering.
Phases: `rollout_s` and `update_s` are the wall times of `rl_cluster.generate` and
`rl_cluster.update_actor` (wrappers on the cluster instance; the update's end waits for the
parameters, since Tunix dispatches it asynchronously).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rl_peers import task  # noqa: E402
from rl_peers.protocol import Channel  # noqa: E402


def build_learner(cfg: dict, clock: dict):
    """`(learner, model)`: Tunix's GRPO learner at `cfg`'s shape (module docstring)."""
    import jax
    import numpy as np
    import optax
    from flax import nnx
    from transformers import PreTrainedTokenizerFast
    from tunix.models.qwen3 import model as qwen3
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    m = cfg["model"]
    config = qwen3.ModelConfig(num_layers=m["num_layers"], vocab_size=m["vocab_size"], embed_dim=m["hidden_size"],
                               hidden_dim=m["intermediate_size"], num_heads=m["num_heads"], head_dim=m["head_dim"],
                               num_kv_heads=m["num_kv_heads"], rope_theta=int(m["rope_theta"]),
                               norm_eps=m["rms_norm_eps"], use_tied_embedding=m["tie_word_embeddings"],
                               remat_config=qwen3.RematConfig.NONE)
    # Auto axes (a plain Mesh): Tunix's models shard by annotation, not with explicit-sharding types.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
    model = qwen3.Qwen3(config, rngs=nnx.Rngs(int(cfg["seed"])))  # RLCluster puts it on `mesh`
    tokenizer = PreTrainedTokenizerFast.from_pretrained(cfg["tokenizer_dir"])
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(cfg["learning_rate"], b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
    roles = rl_cluster_lib.Role
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={roles.ACTOR: mesh, roles.REFERENCE: mesh, roles.ROLLOUT: mesh},
        rollout_engine="vanilla", offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optimizer, eval_every_n_steps=10 ** 9, max_steps=int(cfg["total_steps"]),
            mini_batch_size=cfg["prompts"], pbar_description=None),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=cfg["new_tokens"], max_prompt_length=cfg["prompt_len"],
            kv_cache_size=cfg["prompt_len"] + cfg["new_tokens"], temperature=1.0, top_p=1.0, top_k=None,
            eos_tokens=[m["vocab_size"]]))
    cluster = rl_cluster_lib.RLCluster(actor=model, reference=None, tokenizer=tokenizer,
                                       cluster_config=cluster_config)

    def even_id_reward(prompts, completions, **kwargs):
        """`task.even_id_fraction` of each completion's text (kept for the step's reply)."""
        values = [task.even_id_fraction(c) for c in completions]
        clock["rewards"].extend(values)
        return values

    algo = grpo_learner.GRPOConfig(num_generations=cfg["samples"], num_iterations=1, beta=0.0, epsilon=0.2)
    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=[even_id_reward])
    params = lambda: nnx.state(cluster.actor_trainer.model, nnx.Param)  # noqa: E731
    _time_method(cluster, "generate", clock, "rollout_s", count_tokens=True)
    _time_method(cluster, "update_actor", clock, "update_s", wait=lambda: jax.block_until_ready(params()))
    clock["wait"] = lambda: jax.block_until_ready(params())
    return learner, model


def _time_method(obj, name: str, clock: dict, key: str, *, count_tokens: bool = False, wait=None) -> None:
    """Replace `obj.name` by a wrapper adding its wall time to `clock[key]` (and completion tokens)."""
    inner = getattr(obj, name)

    @functools.wraps(inner)
    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        if wait is not None:
            wait()
        clock[key] += time.perf_counter() - t0
        if count_tokens:
            clock["tokens"] += sum(len(t) for t in out.tokens)
        return out

    setattr(obj, name, timed)


def step_batches(cfg: dict, channel: Channel, clock: dict):
    """The learner's dataset: one `{"prompts": [P] str array}` batch per parent request, timing each step.

    (An array, not a list: the learner repeats every leaf of the batch `num_generations` times.)
    """
    import numpy as np

    prompts = task.benchmark_prompts(cfg["prompts"] * int(cfg["total_steps"]), cfg["prompt_len"],
                                     cfg["model"]["vocab_size"], seed=int(cfg["seed"]))
    for i in range(int(cfg["total_steps"])):
        finish_step(channel, clock)
        if channel.receive() is None:
            return
        clock.update(rollout_s=0.0, update_s=0.0, tokens=0, rewards=[], t0=time.perf_counter())
        yield {"prompts": np.array(prompts[i * cfg["prompts"]:(i + 1) * cfg["prompts"]])}


def finish_step(channel: Channel, clock: dict) -> None:
    """Answer the running step's times, if one is running."""
    if "t0" not in clock:
        return
    clock["wait"]()
    step_s = time.perf_counter() - clock.pop("t0")
    rewards = clock["rewards"]
    channel.send({"step_s": step_s, "rollout_s": clock["rollout_s"], "update_s": clock["update_s"],
                  "completion_tokens": clock["tokens"], "reward_mean": sum(rewards) / max(len(rewards), 1)})


def main(argv: list[str]) -> int:
    channel = Channel()
    try:
        cfg = json.loads(argv[1])
        import importlib.metadata

        import jax
        from flax import nnx

        clock: dict = {}
        learner, model = build_learner(cfg, clock)
        close = learner.rl_cluster.close

        def close_after_last_step():
            finish_step(channel, clock)  # the last step ends here, not at a next batch request
            close()

        learner.rl_cluster.close = close_after_last_step
        n_params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        channel.send({"ready": True, "versions": {"tunix": importlib.metadata.version("google-tunix"),
                                                  "jax": jax.__version__,
                                                  "flax": importlib.metadata.version("flax")},
                      "params": n_params, "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"})
        learner.train(step_batches(cfg, channel, clock))
    except Exception as e:  # reported to the parent, which records it as the peer's skip reason
        channel.fail(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
