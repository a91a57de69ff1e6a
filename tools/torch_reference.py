"""The same model in PyTorch/`transformers`, built from our weights: the benchmarks' reference.

`build_torch_model(config, params)` maps a pure dict of our parameters to Hugging Face tensor
names (`jaxrl_llm.models.hf`) and loads them into `AutoModelForCausalLM.from_config` (fp32,
eager), so both frameworks hold exactly the same weights. `torch_blocker` says why a comparison
cannot run (no transformers equivalent, not float32, several devices, torch missing).
"""

from __future__ import annotations

from typing import Any

COMPARE_CHOICES = ("auto", "on", "off")


def torch_blocker(config: Any, num_devices: int, mode: str) -> str | None:
    """Why the PyTorch comparison cannot run (None when it can); `mode == "off"` is a reason too."""
    if mode not in COMPARE_CHOICES:
        raise ValueError(f"--compare-torch must be one of {COMPARE_CHOICES}; got {mode!r}")
    if mode == "off":
        return "--compare-torch off"
    if num_devices != 1:
        return f"the mesh has {num_devices} devices; the torch reference runs on one process only (JAX only)"
    if config.param_dtype != "float32" or config.dtype != "float32":
        return (f"the torch reference is float32; the model has param_dtype={config.param_dtype!r}, "
                f"dtype={config.dtype!r}")
    from jaxrl_llm.models.hf_config import to_hf_config  # noqa: PLC0415

    try:
        to_hf_config(config)
    except ValueError as err:
        return f"the model has no transformers equivalent: {err}"
    try:
        import torch  # noqa: F401, PLC0415
        import transformers  # noqa: F401, PLC0415
    except ImportError as err:
        return f"torch/transformers do not import: {err}"
    return None


def hf_state_dict(params: dict, config: Any) -> dict:
    """HF tensor name -> numpy array of our pure-dict `params` (linears transposed to `[out, in]`)."""
    import numpy as np  # noqa: PLC0415

    from jaxrl_llm.models.hf import TRANSPOSED, hf_shape, hf_tensor_names  # noqa: PLC0415

    out = {}
    for name, (path, layout) in hf_tensor_names(config).items():
        value = params
        for key in path:
            value = value[key]
        host = np.array(value, np.float32)  # a writable copy: torch shares its memory
        out[name] = np.ascontiguousarray(host.T if layout == TRANSPOSED else host.reshape(hf_shape(host.shape, layout)))
    return out


def build_torch_model(config: Any, params: dict):
    """The `transformers` model of `config` (fp32, train mode) holding the weights of `params` (a pure dict)."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from jaxrl_llm.models.hf_config import to_hf_config  # noqa: PLC0415

    hf = to_hf_config(config)
    model_type = hf.pop("model_type")
    for key in ("architectures", "torch_dtype", "rope_theta", "rope_scaling"):
        hf.pop(key, None)
    hf_config = transformers.AutoConfig.for_model(model_type, **hf)
    hf_config.architectures = [config.architecture]
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    tensors = {k: torch.from_numpy(v) for k, v in hf_state_dict(params, config).items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - allowed_missing:
        raise RuntimeError(f"torch weights do not match: missing {missing}, unexpected {unexpected}")
    return model.train()
