"""RL steps after the first compile nothing: the update, the log-prob pass and the sampler keep one program each."""

import logging
import time

import jax
import pytest

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.rl import setup_rl
from jaxrl_llm.train.rl_step import rl_step

TINY = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
        "mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.steps": 3, "rl.prompts_per_step": 4,
        "rl.samples_per_prompt": 4, "rl.max_new_tokens": 3, "rl.progress_bar": False, "rl.dgg.window": 2,
        "rl.proximal_check_rows": 4, "eval.num_problems": 0, "checkpoint.every": 0}
AGENT = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
         "mesh.fsdp": 1, "sft.train.steps": 0, "rl.steps": 3, "rl.prompts_per_step": 2, "rl.samples_per_prompt": 2,
         "rl.max_new_tokens": 4, "agent.max_turns": 3, "rl.minibatches": 1, "rl.progress_bar": False,
         "eval.num_problems": 2, "checkpoint.every": 0}
# Module names of the jitted programs: rl_update, make_logprob_fn's pass, the sampler's decode.
WATCHED = ("jit(update_on_mesh)", "jit(fn)", "jit(_decode_on_mesh)")


class CompileLog(logging.Handler):
    """Collects the module names of the programs XLA compiles while installed (`jax.log_compiles`)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names: list[str] = []

    def emit(self, record):
        if str(record.msg).startswith("Compiling %s"):
            self.names.append(str(record.args[0]))


def compiled_during(fn):
    """`(module names compiled, fn())`."""
    handler, logger = CompileLog(), logging.getLogger("jax._src.interpreters.pxla")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            out = fn()
    finally:
        logger.removeHandler(handler)
    return handler.names, out


def config(path, tmp_path, base, **extra):
    cfg = load_config_file(path)
    for k, v in {**base, "output_dir": str(tmp_path), **extra}.items():
        apply_override(cfg, k, str(v))
    return cfg


def run_steps(setup, count):
    state = setup.state
    for _ in range(count):
        state, record = rl_step(setup, state)
    return state, record


@pytest.mark.parametrize("extra", [{"rl.reuse_epochs": 1}, {"rl.reuse_epochs": 2, "rl.kl_coef": 0.05}],
                         ids=["skipped_proximal_pass", "full_proximal_and_reference_passes"])
def test_rl_steps_after_the_first_compile_nothing(tmp_path, extra):
    jax.clear_caches()  # programs compiled by an earlier test would not show up in the first step
    setup = setup_rl(config("configs/quickstart.py", tmp_path, TINY, **extra), warm_up=False)
    first, (state, record) = compiled_during(lambda: run_steps(setup, 1))
    for name in WATCHED:
        assert name in first, (name, first)
    assert record["rollout/proximal_skipped"] == float(extra["rl.reuse_epochs"] == 1)
    setup.state = state
    later, _ = compiled_during(lambda: run_steps(setup, 2))
    assert later == [], later


def test_agent_steps_after_the_first_compile_nothing(tmp_path):
    jax.clear_caches()
    t0 = time.perf_counter()
    setup = setup_rl(config("configs/agents_house_grpo.py", tmp_path, AGENT), warm_up=False)
    first, (state, _) = compiled_during(lambda: run_steps(setup, 1))
    for name in WATCHED:
        assert name in first, (name, first)
    setup.state = state
    later, _ = compiled_during(lambda: run_steps(setup, 2))
    assert [n for n in later if n in WATCHED] == [], later
    assert time.perf_counter() - t0 < 120
