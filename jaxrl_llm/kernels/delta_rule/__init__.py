"""Delta-rule linear attention (DeltaNet, Gated DeltaNet, KDA, FG2-GDN, FG2-GDN+).

One public entry point, `delta_rule`, in flash-linear-attention's `[B, T, H, D]` layout, plus the
one-token `delta_rule_step` used by samplers. See `docs/delta_rule.md`.
"""

from jaxrl_llm.kernels.delta_rule.api import IMPLS, delta_rule, delta_rule_step

__all__ = ["IMPLS", "delta_rule", "delta_rule_step"]
