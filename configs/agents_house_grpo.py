"""Multi-turn agent RL on CPU: GRPO on TextHouse (ALFWorld-like), after a cold-start SFT on oracle turns.

    python -m jaxrl_llm.cli rl --config configs/agents_house_grpo.py
    python -m jaxrl_llm.cli rl --config configs/agents_house_grpo.py --config.data.task_kwargs.env=textshop

The warm-up teaches the tiny decoder the oracle's action at every turn of noisy oracle episodes
(`agents/task.py`); RL then plays `rl.prompts_per_step` houses `rl.samples_per_prompt` times each,
turn by turn, and trains every action on its episode's group-normalised reward (the env's score,
minus `agent.invalid_penalty` per invalid action). `eval/accuracy` is the held-out success rate at
`agent.eval_temperature`, `eval/greedy_accuracy` the greedy one; per task type under
`eval/success/<type>`. The SkillC, SDAR, D2Skill, Skill1, MAP and HeavySkill recipes start from this one.
"""

import copy
import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_config_file(os.path.join(here, "quickstart.py"))
    c.output_dir = "runs/agents_house_grpo"
    c.model.num_layers = 4
    # One token per word of the env's texts (data/word_tokenizer.py): a TextHouse turn prompt is ~80
    # tokens instead of ~330 characters. The word vocabulary of texthouse / textshop is ~180 / ~290.
    c.data.tokenizer = "word"
    c.model.vocab_size = 512

    # data.task = "agent": a registered multi-turn env (envs/env_registry.py: register_env, or
    # "package.module:ClassName"), its prompt layout and the oracle records of the warm-up.
    c.data.task = "agent"
    c.data.task_kwargs = ConfigDict()
    c.data.task_kwargs.env = "texthouse"  # or "textshop", a registered name, or "package.module:ClassName"
    c.data.task_kwargs.env_kwargs = ConfigDict()  # the env's constructor arguments (e.g. num_receptacles)
    c.data.task_kwargs.history_turns = 1  # past (action, observation) pairs in each turn prompt
    c.data.task_kwargs.show_actions = True  # list the admissible actions
    c.data.task_kwargs.action_format = "plain"  # "plain" (the action) or "tagged" (<action>...</action>)
    c.data.task_kwargs.oracle_noise = 0.3  # warm-up episodes take a random action this often (recovery states)
    # Whose actions the warm-up teaches: "full" (the shortest plan, which knows where hidden objects are)
    # or "explorer" (TextHouse: searches unseen storage first, acting only on what the prompt shows).
    c.data.task_kwargs.oracle = "full"
    # A share of warm-up episodes reads its task type's skill text (data.task_kwargs.skills: "builtin" or a
    # JSON file), so the skill-injected episodes of SkillC / SDAR's teacher are in the policy's distribution;
    # every agent recipe shares this warm-up (GRPO never injects skills).
    c.data.task_kwargs.skill_fraction = 0.25
    c.data.task_kwargs.skills = "builtin"
    c.data.task_kwargs.context = ""  # "map": MAP's explored house map in every turn prompt (configs/agents_house_map.py)
    c.data.task_kwargs.map_budget = 30  # MAP explorer: at most this many env steps (E) per house
    c.data.task_kwargs.map_patience = 3  # MAP explorer: stop after this many steps without a new fact (w)
    c.data.task_kwargs.skill1 = False  # add Skill1's query / rerank / distil records (configs/agents_house_skill1.py)
    c.data.num_train = 20000  # oracle turn records for the warm-up
    c.data.seq_len = 256  # rows of packed turn records (a record is ~85 tokens, at most ~140)
    c.data.packing = True  # several records per row: no padding, ~3x the supervised tokens per step
    c.data.long_records = "drop"

    c.sft.train.steps = 300  # stopped early: the policy has the action format and room to improve
    c.sft.train.batch_size = 32
    c.sft.optimizer.decay_steps = 1000

    c.agent = ConfigDict()
    c.agent.max_turns = 10  # 0: the env's max_steps; each turn is one row of the update
    c.agent.max_prompt_tokens = 192  # fixed prompt width of every turn (longer prompts keep their end)
    c.agent.invalid_penalty = 0.1  # per invalid action: from the episode reward, or that turn only (agent.invalid_credit)
    c.agent.reward = "score"  # the env's final score ("won": 1 on success)
    # How an episode's advantage reaches its turn rows: "turn" (every turn carries it) or "episode" (rows
    # scaled by mean turns / the episode's turns, so a long failed episode weighs as much as a short win).
    c.agent.turn_credit = "turn"
    # Where agent.invalid_penalty lands: "episode" (subtracted from the episode's return, so every turn
    # of the episode shares it) or "turn" (subtracted from the advantage of the invalid turn's row only).
    c.agent.invalid_credit = "episode"
    c.agent.eval_temperature = 0.4  # held-out success is sampled at this temperature (0: greedy)
    c.agent.skills = ""  # skill library: "" (none), "builtin" (the env's), or a JSON file {general, by_type}
    c.agent.skillc = ConfigDict()  # SkillC curriculum (configs/agents_house_skillc.py)
    c.agent.skillc.enabled = False
    c.agent.skillc.validate_every = 5  # RL steps between with / without-skills validations
    c.agent.skillc.val_episodes = 4  # held-out episodes per task type and condition
    c.agent.skillc.alpha = 0.9
    c.agent.skillc.patience = 10
    c.agent.skillc.lam = 1.0
    c.agent.skillc.p_min = 0.125
    c.agent.skillc.eps_ret = 0.0
    c.agent.sdar = ConfigDict()
    c.agent.sdar.skill_all = False  # SDAR's teacher sees every skill, not only the task type's
    c.agent.d2skill = ConfigDict()  # D2Skill's dynamic skill bank (configs/agents_house_d2skill.py)
    c.agent.d2skill.enabled = False
    c.agent.d2skill.top_k = 3  # skills kept per retrieval (of the 2k most similar)
    c.agent.d2skill.min_sim = 0.7  # cosine similarity floor, applied after ranking
    c.agent.d2skill.alpha = 0.1  # score = alpha (sim + 1) / 2 + (1 - alpha) (utility + c UCB bonus)
    c.agent.d2skill.c = 0.05
    c.agent.d2skill.beta = 0.5  # utility EMA rate
    c.agent.d2skill.kappa = 1.0  # intrinsic reward kappa (s_i - b_g)
    c.agent.d2skill.max_size = 300  # per pool; eviction at evaluation steps
    c.agent.d2skill.min_age = 10  # only skills at least this many steps old are evicted
    c.agent.d2skill.max_reflections = 10  # reflected failures per step
    c.agent.skill1 = ConfigDict()  # Skill1: query -> rerank -> solve -> distil, one policy (configs/agents_house_skill1.py)
    c.agent.skill1.enabled = False  # needs data.task_kwargs.skill1 = True; rows per episode: agent.max_turns + 3
    c.agent.skill1.top_k = 3  # candidates shown to the rerank segment
    c.agent.skill1.top_candidates = 10  # the most similar skills ranked by the retrieval score
    c.agent.skill1.min_sim = 0.0  # similarity floor (0: any skill sharing no word still ranks)
    c.agent.skill1.alpha = 0.1  # score = alpha (sim + 1) / 2 + (1 - alpha) (utility + c UCB bonus)
    c.agent.skill1.c = 0.05  # UCB bonus in training; evaluation retrieves greedily (c = 0)
    c.agent.skill1.rate = 0.05  # utility EMA U <- (1 - rate) U + rate r of the picked skill
    c.agent.skill1.lambda_rerank = 0.3  # select reward r + lambda_rerank (U_picked - mean U)
    c.agent.skill1.lambda_distill = 0.3  # distil reward r + lambda_distill (r - max U)
    c.agent.skill1.max_size = 300  # skills kept after each step's eviction
    c.agent.skill1.min_age = 10  # only skills at least this many steps old are evicted
    c.agent.skill1.add_failed = False  # also add skills distilled from failed episodes

    c.rl.steps = 30
    c.rl.prompts_per_step = 4  # houses per step
    c.rl.samples_per_prompt = 8  # episodes per house (the GRPO group)
    c.rl.max_new_tokens = 10  # one action per turn (a few words)
    c.rl.reuse_epochs = 1
    c.rl.minibatches = 2
    c.rl.dgg.enabled = False  # one pass per batch: nothing to gate
    c.rl.optimizer.learning_rate = 1e-4
    c.rl.optimizer.warmup_steps = 4
    c.rl.max_mismatch = 1.0

    c.eval.num_problems = 24  # held-out episodes
    c.eval.every = 10
    c.eval.samples_per_prompt = 0
    c.eval.max_new_tokens = 10
    c.eval.batch_size = 24
    c.checkpoint.every = 10
    c.export = copy.deepcopy(c.export)
    return c
