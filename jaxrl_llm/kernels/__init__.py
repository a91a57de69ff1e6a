"""Compute kernels: delta-rule linear attention (recurrent reference, chunked JAX, Pallas)."""

from jaxrl_llm.kernels.delta_rule import delta_rule, delta_rule_step

__all__ = ["delta_rule", "delta_rule_step"]
