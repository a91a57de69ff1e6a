"""Compile the SFT step, the RL update or the rollout for a target topology, without its chips.

Nothing is allocated: parameters, optimizer state and batches are `ShapeDtypeStruct`s carrying the
shardings that the logical-axis rules (`parallel/rules.py`) give them on the target's mesh
(`parallel/mesh.py`), and the project's own jitted functions (`train/sft.py: make_sft_step`,
`train/rl_update.py: make_rl_update`, `rollout/sampler.py`'s decode loop) are lowered and
compiled for that mesh. Per mode it reports XLA's per-device memory analysis (arguments, outputs,
temporaries, peak) against the chip's HBM, the sharding of the largest arrays and the collectives
in the compiled HLO.

Targets (`--topology`):
  cpu:N        N host CPU devices (sets XLA_FLAGS before jax is imported; runs anywhere, CI too).
  v5e-8, v5p-64, v6e-8, v4-32, ...   TPU pod slices through libtpu's compile-only topology
               (`jax.experimental.topologies`); needs `jax[tpu]` in the environment, no TPU.
  h100-8       8 x H100 80 GB (one host) through XLA's deviceless CUDA compile, with the target
               description of `tools/aot_compile_gpu.py`; needs `jax[cuda12]`, no GPU.

    python tools/aot_compile.py --topology cpu:8 --preset tiny --mode sft,rl_update,rollout
    /tmp/tpuvenv/bin/python tools/aot_compile.py --topology v5p-64 --preset qwen3-8b --mode sft \\
        --batch 64 --seq 4096 --config.mesh.fsdp=-1 --config.train.micro_batches=8 --json out.json

Every field of the config below can be overridden with `--config.a.b=VALUE` (parsed as in the CLI),
the model's too: `--config.model.param_dtype=float32`. `--batch` is the global row count of one
step (SFT batch, RL rollout batch, or prompts x samples for the rollout); `--seq` the tokens per
row (for the rollout: prompt + response, see `rollout.max_new_tokens`).

Counts of collectives are static: an op inside a scanned micro-batch or layer loop counts once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

GIB = 1024 ** 3
# Per-chip HBM (bytes) of the targets, and how each TPU generation names its slices.
CHIPS = {
    "v4": dict(hbm=32 * GIB, cores_per_chip=2, dims=3, chip_config="megacore"),
    "v5e": dict(hbm=16 * GIB, cores_per_chip=1, dims=2, chip_config="default"),
    "v5p": dict(hbm=95 * GIB, cores_per_chip=2, dims=3, chip_config="megacore"),
    "v6e": dict(hbm=32 * GIB, cores_per_chip=1, dims=2, chip_config="default"),
    "h100": dict(hbm=80 * 10 ** 9),
}
# Torus shapes of the slices by chip count (2-D for v5e / v6e, 3-D for v4 / v5p).
TPU_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
TPU_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
                 512: "8x8x8"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
MODES = ("sft", "rl_update", "rollout")
_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")


@dataclasses.dataclass(frozen=True)
class Target:
    """A topology to compile for: `platform` ("cpu", "tpu", "cuda"), device count, chip and HBM."""

    name: str
    platform: str
    num_devices: int
    chip: str
    hbm_bytes: int | None
    tpu_topology: str = ""
    chip_config: str = ""


def parse_topology(name: str) -> Target:
    """`cpu:8`, `v5p-64` (TensorCores for v4 / v5p, chips otherwise, as the slice names count) or
    `h100-8`; a `ValueError` naming the accepted forms otherwise."""
    name = name.strip().lower()
    if m := re.fullmatch(r"cpu:(\d+)", name):
        return Target(name, "cpu", int(m[1]), "cpu", None)
    if m := re.fullmatch(r"h100-(\d+)", name):
        return Target(name, "cuda", int(m[1]), "h100", CHIPS["h100"]["hbm"])
    if (m := re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name)) and m[1] in CHIPS:
        spec = CHIPS[m[1]]
        chips = int(m[2]) // spec["cores_per_chip"]
        shapes = TPU_SHAPES_3D if spec["dims"] == 3 else TPU_SHAPES_2D
        if chips not in shapes:
            raise ValueError(f"--topology {name}: {chips} chips is not a {m[1]} slice shape here; known chip counts "
                             f"{sorted(shapes)}")
        return Target(name, "tpu", chips, m[1], spec["hbm"], f"{m[1]}:{shapes[chips]}", spec["chip_config"])
    raise ValueError(f"--topology must be cpu:N, h100-N or one of v4/v5e/v5p/v6e-N (e.g. v5p-64); got {name!r}")


def _prepare_environment(target: Target) -> None:
    """Environment a backend reads once, at import: set before jax is imported."""
    if target.platform == "cpu":
        if "jax" in sys.modules:
            return  # already imported (tests): the existing host device count is checked later
        flags = os.environ.get("XLA_FLAGS", "")
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={target.num_devices}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    elif target.platform == "tpu":
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off a TPU VM
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        # Compile-only: no chip is opened, so concurrent compiles need not take libtpu's lockfile.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only topology: never open a TPU
    else:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
        # Without a driver the CUDA plugin's version check (cuInit) fails; with the CPU as the only
        # runtime platform it still registers, and its compile-only topology needs no driver.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


def target_devices(target: Target) -> list[Any]:
    """The devices a mesh over `target` is built from (real CPU devices, or compile-only ones)."""
    import jax
    from jax.experimental import topologies

    if target.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < target.num_devices:
            raise ValueError(f"--topology {target.name} needs {target.num_devices} host devices; jax already started "
                             f"with {len(devices)} (set XLA_FLAGS=--xla_force_host_platform_device_count)")
        return devices[: target.num_devices]
    if target.platform == "tpu":
        try:
            topo = topologies.get_topology_desc(platform="tpu", topology_name=target.tpu_topology,
                                                chip_config_name=target.chip_config,
                                                chips_per_host_bounds=(2, 2, 1), num_slices=1)
        except Exception as err:
            raise RuntimeError(f"no compile-only TPU topology {target.tpu_topology!r} (is jax[tpu] / libtpu installed "
                               f"in this environment?): {err}") from None
        return list(topo.devices)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from aot_compile_gpu import H100_TARGET_CONFIG

    topo = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET_CONFIG,
                                        topology=f"1x1x{target.num_devices}")
    return list(topo.devices)


def base_config(preset_name: str):
    """The tool's config: the model preset's fields, mesh, optimizer, SFT and RL knobs."""
    from ml_collections import ConfigDict

    from jaxrl_llm.models.config import preset

    model = preset(preset_name)
    c = ConfigDict()
    c.model = ConfigDict()
    c.model.preset = preset_name
    for field in dataclasses.fields(model):
        value = getattr(model, field.name)
        if isinstance(value, (bool, int, float, str)):
            c.model[field.name] = value
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: the devices left over
    c.optimizer = ConfigDict(dict(learning_rate=1e-5, warmup_steps=10, decay_steps=0, end_learning_rate_ratio=0.1,
                                  b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0,
                                  state_dtype="", master_weights=False))
    c.train = ConfigDict(dict(micro_batches=1))
    c.rl = ConfigDict(dict(objective="grpo", reuse_epochs=1, minibatches=1, micro_batches=1, logprob_chunk=8192))
    c.rl.dgg = ConfigDict(dict(enabled=True, tau=1.0, window=20, statistic="delta"))
    # Rollout: prompt width = seq - max_new_tokens; 0 = half of --seq.
    c.rollout = ConfigDict(dict(max_new_tokens=0))
    return c


def model_config(cfg) -> Any:
    from jaxrl_llm.models.config import preset

    fields = {k: v for k, v in cfg.model.items() if k != "preset"}
    default = preset(cfg.model.preset)
    changed = {k: v for k, v in fields.items() if getattr(default, k) != v}
    return default.replace(**changed) if changed else default


def param_count(config) -> int:
    """Parameters of a `Decoder(config)`, from abstract shapes only (nothing allocated)."""
    import jax
    from flax import nnx

    from jaxrl_llm.models.decoder import Decoder
    from jaxrl_llm.parallel.init import abstract_model

    parts = abstract_model(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(parts.param_shapes()))


def _abstract(shapes: Any, shardings: Any) -> Any:
    import jax

    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def abstract_train_state(parts, optimizer, mesh) -> tuple[Any, Any, Any]:
    """`(state, state_shardings, params_shardings)`: a `TrainState` of `ShapeDtypeStruct`s."""
    import jax
    import jax.numpy as jnp

    from jaxrl_llm.parallel.init import state_shardings
    from jaxrl_llm.train.state import TrainState, train_state_shardings

    params_shardings = state_shardings(parts.abstract_params, mesh)
    params = _abstract(parts.param_shapes(), params_shardings)
    shardings = train_state_shardings(params_shardings, optimizer, params, mesh)

    def init(p):
        return TrainState(params=p, opt_state=optimizer.init(p), step=jnp.zeros((), jnp.int32),
                          rng=jnp.zeros((2,), jnp.uint32), extras={})

    return _abstract(jax.eval_shape(init, params), shardings), shardings, params_shardings


def _rows(mesh, shape, dtype):
    import jax

    from jaxrl_llm.parallel.batch import row_sharding

    return jax.ShapeDtypeStruct(shape, dtype, sharding=row_sharding(mesh, shape))


def lower_sft(parts, rest, cfg, mesh, batch: int, seq: int):
    import jax.numpy as jnp

    from jaxrl_llm.train.optim import make_optimizer, make_schedule
    from jaxrl_llm.train.sft import make_sft_step

    optimizer = make_optimizer(cfg.optimizer, 1000)
    state, shardings, _ = abstract_train_state(parts, optimizer, mesh)
    step = make_sft_step(parts, optimizer, make_schedule(cfg.optimizer, 1000), shardings, mesh, rest=rest,
                         num_micro_batches=int(cfg.train.micro_batches))
    data = {k: _rows(mesh, (batch, seq), jnp.int32) for k in ("tokens", "positions", "segment_ids", "loss_mask")}
    return step.jitted.lower(state, rest, data), state


def lower_rl_update(parts, rest, cfg, mesh, batch: int, seq: int):
    import jax.numpy as jnp

    from jaxrl_llm.train.optim import make_optimizer
    from jaxrl_llm.train.rl_batch import RolloutBatch
    from jaxrl_llm.train.rl_update import RLUpdateOptions, make_rl_update, rl_optimizer

    rl = cfg.rl
    options = RLUpdateOptions(objective=rl.objective, reuse_epochs=int(rl.reuse_epochs),
                              minibatches=int(rl.minibatches), dgg=bool(rl.dgg.enabled), dgg_tau=float(rl.dgg.tau),
                              dgg_window=int(rl.dgg.window), dgg_statistic=rl.dgg.statistic,
                              logprob_chunk=int(rl.logprob_chunk), micro_batches=int(rl.micro_batches))
    optimizer = rl_optimizer(make_optimizer(cfg.optimizer, 1000), options)
    state, shardings, _ = abstract_train_state(parts, optimizer, mesh)
    update = make_rl_update(parts, optimizer, options, rest=rest, mesh=mesh, state_shardings=shardings)
    bt = (batch, seq)
    data = RolloutBatch(tokens=_rows(mesh, bt, jnp.int32), positions=_rows(mesh, bt, jnp.int32),
                        segment_ids=_rows(mesh, bt, jnp.int32), loss_mask=_rows(mesh, bt, jnp.float32),
                        old_logprobs=_rows(mesh, bt, jnp.float32), rollout_logprobs=_rows(mesh, bt, jnp.float32),
                        rewards=_rows(mesh, (batch,), jnp.float32), group_ids=_rows(mesh, (batch,), jnp.int32),
                        advantages=_rows(mesh, (batch,), jnp.float32))
    return update.jitted.lower(state, rest, data), state


def lower_rollout(parts, rest, cfg, mesh, batch: int, seq: int):
    """The sampler's program: prefill `[B, P]` then the decode loop over `N` response slots."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxrl_llm.parallel.init import state_shardings
    from jaxrl_llm.parallel.rules import replicated
    from jaxrl_llm.rollout.prompts import next_power_of_two
    from jaxrl_llm.rollout.sampler import _decode_jit
    from jaxrl_llm.rollout.sampling import SamplingKnobs, as_prng_key

    new = int(cfg.rollout.max_new_tokens) or seq // 2
    width = seq - new
    if width < 1:
        raise ValueError(f"config.rollout.max_new_tokens ({new}) must be below --seq ({seq}): the prompt needs a column")
    params = _abstract(parts.param_shapes(), state_shardings(parts.abstract_params, mesh))
    graphdef, model_state = nnx.split(parts.merge(params, rest))
    rep = replicated(mesh)
    scalar = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep)
    knobs = jax.tree.map(scalar, jax.eval_shape(lambda: SamplingKnobs.make(1.0, 0, 1.0)))
    key = scalar(jax.eval_shape(lambda: as_prng_key(jax.random.key(0))))
    args = (_rows(mesh, (batch, width), jnp.int32), _rows(mesh, (batch,), jnp.int32), _rows(mesh, (batch,), jnp.int32),
            key, knobs, scalar(jax.ShapeDtypeStruct((8,), jnp.int32)), scalar(jax.ShapeDtypeStruct((), jnp.int32)),
            scalar(jax.ShapeDtypeStruct((), jnp.int32)))
    lowered = _decode_jit.lower(graphdef, model_state, *args, response_slots=next_power_of_two(new), mesh=mesh)
    return lowered, params


LOWER = {"sft": lower_sft, "rl_update": lower_rl_update, "rollout": lower_rollout}


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective ops by kind in HLO text (an async `-start` counts as one op, its `-done` not)."""
    counts = Counter(m[1] for m in _OP.finditer(hlo_text))
    return {kind: counts.get(kind, 0) for kind in COLLECTIVES}


def largest_arrays(tree: Any, top: int = 5) -> list[dict[str, Any]]:
    """The `top` largest leaves of an abstract tree: path, shape, dtype, spec, global and per-device bytes."""
    import jax

    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(leaf, "sharding") or leaf.sharding is None:
            continue
        nbytes = math.prod(leaf.shape) * leaf.dtype.itemsize
        shard = leaf.sharding.shard_shape(leaf.shape)
        rows.append(dict(path=jax.tree_util.keystr(path, simple=True, separator="."), shape=list(leaf.shape),
                         dtype=str(leaf.dtype), spec=str(leaf.sharding.spec), bytes=nbytes,
                         per_device_bytes=math.prod(shard) * leaf.dtype.itemsize))
    rows.sort(key=lambda r: -r["bytes"])
    return rows[:top]


def memory_record(compiled) -> dict[str, int]:
    """XLA's per-device memory analysis; `peak` is XLA's where it reports one, else
    arguments + outputs - aliased (donated) + temporaries (`peak_source` says which)."""
    m = compiled.memory_analysis()
    out = dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
               alias_bytes=int(m.alias_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes),
               code_bytes=int(m.generated_code_size_in_bytes))
    reported = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    bound = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    out.update(peak_bytes=reported or bound, peak_source="xla" if reported else "args+outputs-alias+temps")
    return out


def _knob(cfg, mode: str) -> tuple[int | None, int | None]:
    """`(train.micro_batches, rl.minibatches)` where the mode uses them."""
    return (int(cfg.train.micro_batches) if mode == "sft" else None,
            int(cfg.rl.minibatches) if mode == "rl_update" else None)


_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\)")


def out_of_memory_bytes(message: str) -> int | None:
    """The temporaries a refused compile needed (`... HLO temporaries (29.32G) exceeds available HBM`)."""
    m = _OOM.search(message)
    if m is None:
        return None
    return int(float(m[1]) * 1024 ** ("KMGT".index(m[2]) + 1))


def compile_mode(mode: str, target: Target, cfg, batch: int, seq: int, devices: list[Any]) -> dict[str, Any]:
    """Lower and compile one mode; a record of sizes, memory, shardings and collectives."""
    from flax import nnx

    from jaxrl_llm.models.decoder import Decoder
    from jaxrl_llm.parallel.init import abstract_model, state_shardings
    from jaxrl_llm.parallel.mesh import mesh_from_config

    mesh = mesh_from_config(cfg.mesh, devices=devices)
    config = model_config(cfg)
    parts = abstract_model(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    rest = _abstract(nnx.to_pure_dict(parts.abstract_rest), state_shardings(parts.abstract_rest, mesh))
    t0 = time.perf_counter()
    lowered, state = LOWER[mode](parts, rest, cfg, mesh, batch, seq)
    t1 = time.perf_counter()
    hbm = target.hbm_bytes
    head = dict(mode=mode, topology=target.name, platform=target.platform, num_devices=mesh.size, chip=target.chip,
                preset=cfg.model.preset, params=param_count(config), param_dtype=config.param_dtype,
                dtype=config.dtype, mesh={k: int(v) for k, v in mesh.shape.items()}, batch=batch, seq=seq)
    try:
        compiled = lowered.compile()
    except Exception as err:
        required = out_of_memory_bytes(str(err))
        if required is None:
            raise
        return dict(head, compiled=False, error=str(err).splitlines()[0][:400], hbm_bytes=hbm, fits=False,
                    memory=dict(temp_bytes=required, peak_bytes=required, peak_source="compiler refused: temporaries"),
                    collectives=None, largest_arrays=largest_arrays(state), micro_batches=_knob(cfg, mode)[0],
                    rl_minibatches=_knob(cfg, mode)[1], compile_s=round(time.perf_counter() - t1, 2))
    t2 = time.perf_counter()
    mem = memory_record(compiled)
    return dict(
        compiled=True, mode=mode, topology=target.name, platform=target.platform, num_devices=mesh.size, chip=target.chip,
        preset=cfg.model.preset, params=param_count(config), param_dtype=config.param_dtype, dtype=config.dtype,
        mesh={k: int(v) for k, v in mesh.shape.items()}, batch=batch, seq=seq,
        micro_batches=_knob(cfg, mode)[0], rl_minibatches=_knob(cfg, mode)[1],
        rollout_new_tokens=(int(cfg.rollout.max_new_tokens) or seq // 2) if mode == "rollout" else None,
        lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2), memory=mem, hbm_bytes=hbm,
        fits=None if hbm is None else mem["peak_bytes"] <= hbm,
        collectives=count_collectives(compiled.as_text()), largest_arrays=largest_arrays(state),
    )


def format_record(r: dict[str, Any]) -> str:
    m = r["memory"]
    if not r["compiled"]:
        return (f"{r['mode']:9} {r['preset']} on {r['topology']} mesh {r['mesh']}, batch {r['batch']} x {r['seq']}: "
                f"DOES NOT FIT, {r['error']}")
    gib = lambda b: f"{b / GIB:.2f} GiB" if b >= 2 ** 28 else f"{b / 2 ** 20:.2f} MiB"
    hbm = "n/a" if r["hbm_bytes"] is None else f"{gib(r['hbm_bytes'])} ({'fits' if r['fits'] else 'DOES NOT FIT'})"
    mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items())
    lines = [(f"{r['mode']:9} {r['preset']} ({r['params'] / 1e9:.3f}B, {r['param_dtype']}) on {r['topology']} mesh "
             f"{mesh}, batch {r['batch']} x {r['seq']}; compiled in {r['compile_s']:.1f}s"),
             (f"  per device: args {gib(m['argument_bytes'])}, outputs {gib(m['output_bytes'])}, aliased "
             f"{gib(m['alias_bytes'])}, temps {gib(m['temp_bytes'])}, peak {gib(m['peak_bytes'])} vs HBM {hbm}"),
             "  collectives: " + ", ".join(f"{k} {v}" for k, v in r["collectives"].items())]
    for a in r["largest_arrays"][:3]:
        lines.append(f"  {a['path']} {a['shape']} {a['dtype']} spec {a['spec']}: "
                     f"{a['per_device_bytes'] / 2 ** 20:.1f} MiB per device")
    return "\n".join(lines)


def markdown_rows(records: list[dict[str, Any]]) -> list[str]:
    """One `docs/scaling.md` table row per record (`--summarize` prints them)."""
    rows = []
    for r in records:
        mesh = r["mesh"]
        knob = r.get("micro_batches") or r.get("rl_minibatches") or "-"
        peak = f"{r['memory']['peak_bytes'] / GIB:.1f}"
        peak = peak if r.get("compiled", True) else f">{peak}"  # a refused compile reports its temporaries
        hbm = "-" if r["hbm_bytes"] is None else f"{r['hbm_bytes'] / GIB:.1f}"
        verdict = ("-" if r["fits"] is None else "fits" if r["fits"]
                   else "over HBM" if r.get("compiled", True) else "refused by compiler (over HBM)")
        rows.append(f"| {r['topology']} | {r['preset']} | {r['mode']} | {r['param_dtype']} | "
                    f"{mesh['data']}x{mesh['fsdp']}x{mesh['tensor']} | {r['batch']} x {r['seq']} | {knob} | "
                    f"{peak} | {hbm} | {verdict} | {r.get('compile_s', '-')} |")
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", required=True, help="cpu:N, v5e-8, v5p-64, v6e-8, h100-8, ...")
    parser.add_argument("--preset", required=True, help="a model preset (jaxrl_llm.models.config.PRESETS)")
    parser.add_argument("--mode", default="sft", help="sft, rl_update, rollout, comma-separated, or all")
    parser.add_argument("--batch", type=int, default=8, help="global rows per step")
    parser.add_argument("--seq", type=int, default=512, help="tokens per row")
    parser.add_argument("--json", default="", help="write the records here")
    args, rest = parser.parse_known_args(argv)
    modes = MODES if args.mode == "all" else tuple(m.strip() for m in args.mode.split(","))
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"--mode must be among {MODES} (or all); got {bad}")
    if args.batch < 1 or args.seq < 2:
        parser.error(f"--batch must be >= 1 and --seq >= 2; got {args.batch}, {args.seq}")
    return args, modes, rest


def main(argv=None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--summarize"]:  # tools/aot_compile.py --summarize a.json b.json: markdown rows
        records = [r for path in argv[1:] for r in json.loads(Path(path).read_text())]
        print("\n".join(markdown_rows(records)))
        return records
    args, modes, overrides = parse_args(argv)
    target = parse_topology(args.topology)
    _prepare_environment(target)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jaxrl_llm.cli import apply_override, split_config_args

    cfg = base_config(args.preset)
    _, pairs = split_config_args(overrides)
    for key, raw in pairs:
        apply_override(cfg, key, raw)
    model_config(cfg)  # bad model fields fail here, before anything compiles
    devices = target_devices(target)
    records = []
    for mode in modes:
        record = compile_mode(mode, target, cfg, args.batch, args.seq, devices)
        print(format_record(record), flush=True)
        records.append(record)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=1))
    return records


if __name__ == "__main__":
    main()
