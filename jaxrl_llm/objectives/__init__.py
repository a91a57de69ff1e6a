"""Pure JAX losses and advantage estimators for LLM RL post-training.

Every function maps arrays (shapes in its docstring) and keyword-only hyperparameters to
`LossOutput(loss, metrics)` or to advantages; nothing here imports from the rest of `jaxrl_llm`.
Configs name methods through the registry (`get_objective("grpo")`, `get_advantage("rloo")`).
"""

from types import ModuleType as _ModuleType

from jaxrl_llm.objectives.advantages import (dapo_group_keep_mask, dapo_overlong_penalty, drgrpo_advantages,
                                             gae_advantages, grpo_advantages, masked_whiten, rloo_advantages)
from jaxrl_llm.objectives.aggregation import (AGGREGATIONS, aggregate, seq_mean_token_mean, seq_mean_token_sum,
                                              seq_mean_token_sum_norm, token_mean)
from jaxrl_llm.objectives.autothink import (autothink_base_reward, autothink_batch_balance,
                                            autothink_degeneration_penalty, autothink_length_bonus,
                                            has_degenerate_repetition)
from jaxrl_llm.objectives.core import LossOutput
from jaxrl_llm.objectives.dgg import (DGGState, DGGWrappedState, GatedTransformation, dgg_gate, dgg_init,
                                      dgg_wrapped, gated_update, head_gradient_energy)
from jaxrl_llm.objectives.distillation import (aopd_loss, full_forward_kl, full_reverse_kl, opd_advantages,
                                               opd_full_loss, opd_loss, sdar_aux_loss, sdar_gate, topk_forward_kl,
                                               topk_reverse_kl)
from jaxrl_llm.objectives.lang import (RESOURCE_GROUPS, LangSwitchState, lang_group_usefulness, lang_hint_fraction,
                                       lang_hint_length, lang_reward, lang_switch_init, lang_switch_update)
from jaxrl_llm.objectives.policy_losses import (dapo_loss, dual_clip_loss, gspo_loss, ppo_clip_loss, value_loss,
                                                vanilla_pg_loss)
from jaxrl_llm.objectives.preference import (bcpg_nsa_loss, dpo_loss, dpo_vp_pair, dpo_vp_pairs,
                                             nsa_step_consensus, nsa_token_advantages, sequence_logp)
from jaxrl_llm.objectives.rdpo import maq_normalize, rdpo_advantages
from jaxrl_llm.objectives.registry import (AdvantageOutput, get_advantage, get_objective, list_advantages,
                                           list_objectives, register_advantage, register_objective)
from jaxrl_llm.objectives.regularizers import compose, entropy_bonus, kl_estimate, kl_penalty
from jaxrl_llm.objectives.skillc import (SkillCCurriculum, skillc_advantages, skillc_allocation,
                                         skillc_curriculum_init, skillc_curriculum_update)
from jaxrl_llm.objectives.tbpo import tbpo_loss, tbpo_mismatch_weight
from jaxrl_llm.objectives.token_stats import hidden_token_stats, logits_token_stats, naive_token_stats

__all__ = sorted(name for name, value in globals().items()
                 if not name.startswith("_") and not isinstance(value, _ModuleType))
