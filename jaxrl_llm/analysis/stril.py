"""STRIL: strategy representations for filtering imitation data in multi-agent games (arXiv 2409.19363).

A demonstration set mixes players of different quality. STRIL fits a VRNN over the trajectories,
conditioned on a trainable per-trajectory strategy code `l` (a row of an embedding table), reads
two indicators off the codes, keeps the trajectories that are neither random nor exploited, and
behaviour-clones those.

- Game (RECON demo): repeated rock-paper-scissors against a scripted `counter` opponent that plays
  the move beating the player's previous move (rock first). The player observes the previous
  round (`obs` token 0 = start, else `1 + 3 a_{t-1} + o_{t-1}`). Scripted players: `random` (uniform),
  `exploitable` (always rock: the counter beats it every round after the first) and `dominant` (best-responds to the counter's known rule: paper first, then the move beating
  the counter's next move). Reward per round: `PAYOFF[a, o]` (+1 win, 0 tie, -1 loss).
- VRNN: GRU state `h`, per-step latent `z_t` with prior `p(z_t | h_{t-1}, l)`, posterior
  `q(z_t | h_{t-1}, l, obs_t, a_t)`, decoder `p(a_t | h_{t-1}, l, obs_t, z_t)` and recurrence
  `h_t = GRU(h_{t-1}, [obs_t, a_t, z_t, l])`. Loss = negative ELBO per step,
  `-log p(a_t | ...) + kl_weight * KL(q || p)`, fitted jointly with the codes by Adam (optax).
- Indicators (RECON): RI = mean decoder entropy along the trajectory given `l`, with `z_t` at the
  prior mean (the action's unpredictability, not the posterior's copy of it); EL = a least-squares
  linear probe `l -> -return` (the exploited level the code predicts).
- Filter (RECON): keep the trajectories with RI and EL both strictly below their medians.
- Behaviour cloning: the maximum-likelihood tabular policy `pi(a | obs)` (add-`smoothing` counts),
  evaluated by sampling against the same counter opponent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "NUM_ACTIONS",
    "NUM_OBS",
    "PAYOFF",
    "PLAYERS",
    "GameData",
    "StrilResult",
    "VRNNConfig",
    "behaviour_clone",
    "counter_move",
    "decoder_entropy",
    "exploited_level",
    "fit_linear_probe",
    "fit_vrnn",
    "generate_games",
    "init_vrnn",
    "negative_elbo",
    "play_episode",
    "policy_return",
    "randomness_indicator",
    "run_stril",
    "scripted_move",
    "stril_filter",
    "trajectory_returns",
    "vrnn_forward",
]

ROCK, PAPER, SCISSORS = 0, 1, 2
NUM_ACTIONS = 3
NUM_OBS = 1 + NUM_ACTIONS * NUM_ACTIONS  # start token + the previous round's (own, opponent) moves
PLAYERS: tuple[str, ...] = ("random", "exploitable", "dominant")
# PAYOFF[a, o]: the row player's reward for move a against move o.
PAYOFF = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])


# ----------------------------------------------------------------------------- the game


def _beat(move: int) -> int:
    return (move + 1) % NUM_ACTIONS


def counter_move(player_prev: int | None) -> int:
    """The scripted opponent: rock first, then the move that beats the player's previous move."""
    return ROCK if player_prev is None else _beat(player_prev)


def scripted_move(player: str, player_prev: int | None, rng: np.random.Generator, *, noise: float = 0.0) -> int:
    """One move of a scripted player.

    Args:
      player: one of `PLAYERS`.
      player_prev: the player's previous move (None in round 0).
      noise: probability of a uniform move instead of the scripted one (one `rng.random()` draw per
        round, then one `rng.integers` draw when random).
    """
    if player not in PLAYERS:
        raise ValueError(f"player must be one of {PLAYERS}; got {player!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1]; got {noise}")
    if rng.random() < noise or player == "random":
        return int(rng.integers(NUM_ACTIONS))
    if player == "exploitable":
        return ROCK
    return _beat(counter_move(player_prev))  # dominant: best response to the counter


def play_episode(player: str, num_rounds: int, rng: np.random.Generator, *, noise: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scripted player against the counter opponent.

    Returns: obs [T] int32 (0 = start, else 1 + 3 a_{t-1} + o_{t-1}), actions [T] int32,
      rewards [T] float32 (`PAYOFF[a_t, o_t]`).
    """
    obs = np.zeros(num_rounds, np.int32)
    actions = np.zeros(num_rounds, np.int32)
    rewards = np.zeros(num_rounds, np.float32)
    prev = None
    for t in range(num_rounds):
        a = scripted_move(player, prev, rng, noise=noise)
        o = counter_move(prev)
        actions[t], rewards[t] = a, PAYOFF[a, o]
        if t + 1 < num_rounds:
            obs[t + 1] = 1 + NUM_ACTIONS * a + o
        prev = a
    return obs, actions, rewards


class GameData(NamedTuple):
    """obs, actions: [N, T] int32; rewards: [N, T] float32; player: [N] int32 (index in `PLAYERS`)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    player: np.ndarray


def generate_games(num_per_player: int, num_rounds: int, seed: int, *, noise: float = 0.0) -> GameData:
    """`num_per_player` episodes of each scripted player, in `PLAYERS` order, from one seed."""
    if num_per_player < 1 or num_rounds < 2:
        raise ValueError(f"num_per_player must be >= 1 and num_rounds >= 2; got {num_per_player}, {num_rounds}")
    rng = np.random.default_rng(seed)
    rows = [(i, *play_episode(p, num_rounds, rng, noise=noise))
            for i, p in enumerate(PLAYERS) for _ in range(num_per_player)]
    return GameData(
        obs=np.stack([r[1] for r in rows]),
        actions=np.stack([r[2] for r in rows]),
        rewards=np.stack([r[3] for r in rows]),
        player=np.asarray([r[0] for r in rows], np.int32),
    )


def trajectory_returns(rewards: np.ndarray) -> np.ndarray:
    """rewards [N, T] -> mean reward per round [N]."""
    return np.asarray(rewards, np.float64).mean(axis=-1)


# ----------------------------------------------------------------------------- VRNN


@dataclass(frozen=True)
class VRNNConfig:
    """VRNN sizes and its fit (RECON defaults, CPU-sized). Small on purpose: a wider GRU memorises
    the random players' moves from the history and their RI collapses."""

    hidden: int = 16  # GRU state size
    latent: int = 4  # z_t size
    code_dim: int = 4  # strategy code l size
    mlp: int = 16  # width of the prior / posterior / decoder MLPs
    kl_weight: float = 1.0
    # q(l) = N(codes, code_std^2 I) against N(0, I): bounds what a code can carry about single moves
    code_std: float = 0.5
    learning_rate: float = 1e-2
    steps: int = 300  # full-batch Adam steps
    seed: int = 0


def _dense(key, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
    return {"w": jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in), "b": jnp.zeros(fan_out)}


def _mlp_init(key, fan_in: int, width: int, fan_out: int) -> dict[str, Any]:
    k1, k2 = jax.random.split(key)
    return {"l1": _dense(k1, fan_in, width), "l2": _dense(k2, width, fan_out)}


def _mlp(p, x):
    h = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"])
    return h @ p["l2"]["w"] + p["l2"]["b"]


def init_vrnn(key: jax.Array, cfg: VRNNConfig, num_trajectories: int) -> dict[str, Any]:
    """VRNN parameters and the code table `codes [N, code_dim]` (one trainable row per trajectory)."""
    keys = jax.random.split(key, 6)
    h, z, c, m = cfg.hidden, cfg.latent, cfg.code_dim, cfg.mlp
    x_dim = NUM_OBS + NUM_ACTIONS + z + c  # GRU input
    return {
        "codes": 0.1 * jax.random.normal(keys[0], (num_trajectories, c)),
        "gru": {"x": _dense(keys[1], x_dim, 3 * h), "h": _dense(keys[2], h, 3 * h)},
        "prior": _mlp_init(keys[3], h + c, m, 2 * z),
        "post": _mlp_init(keys[4], h + c + NUM_OBS + NUM_ACTIONS, m, 2 * z),
        "dec": _mlp_init(keys[5], h + c + NUM_OBS + z, m, NUM_ACTIONS),
    }


def _gru(p, x, h):
    gx = x @ p["x"]["w"] + p["x"]["b"]
    gh = h @ p["h"]["w"] + p["h"]["b"]
    xz, xr, xn = jnp.split(gx, 3, axis=-1)
    hz, hr, hn = jnp.split(gh, 3, axis=-1)
    update, reset = jax.nn.sigmoid(xz + hz), jax.nn.sigmoid(xr + hr)
    cand = jnp.tanh(xn + reset * hn)
    return (1.0 - update) * cand + update * h


def _gauss_kl(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) summed over the last axis."""
    return 0.5 * jnp.sum(
        logvar_p - logvar_q + (jnp.exp(logvar_q) + (mu_q - mu_p) ** 2) / jnp.exp(logvar_p) - 1.0, axis=-1)


def vrnn_forward(params: dict[str, Any], obs: jax.Array, actions: jax.Array, key: jax.Array | None,
                 *, codes: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced VRNN pass.

    Args:
      obs, actions: [N, T] int.
      key: PRNG key for the posterior sample; None puts `z_t` at the prior mean (the KL is still
        computed against the posterior).
      codes: [N, code_dim] strategy codes; default `params["codes"]`.
    Returns: decoder logits [N, T, NUM_ACTIONS] and KL(q || p) [N, T].
    """
    codes = params["codes"] if codes is None else codes
    n, t = obs.shape
    o_hot = jax.nn.one_hot(obs, NUM_OBS).swapaxes(0, 1)  # [T, N, NUM_OBS]
    a_hot = jax.nn.one_hot(actions, NUM_ACTIONS).swapaxes(0, 1)
    latent = params["prior"]["l2"]["b"].shape[0] // 2
    eps = (jnp.zeros((t, n, latent)) if key is None else jax.random.normal(key, (t, n, latent)))
    h0 = jnp.zeros((n, params["gru"]["h"]["w"].shape[0]))

    def step(h, inputs):
        o, a, e = inputs
        mu_p, logvar_p = jnp.split(_mlp(params["prior"], jnp.concatenate([h, codes], -1)), 2, -1)
        mu_q, logvar_q = jnp.split(_mlp(params["post"], jnp.concatenate([h, codes, o, a], -1)), 2, -1)
        z = mu_p if key is None else mu_q + jnp.exp(0.5 * logvar_q) * e
        logits = _mlp(params["dec"], jnp.concatenate([h, codes, o, z], -1))
        h_next = _gru(params["gru"], jnp.concatenate([o, a, z, codes], -1), h)
        return h_next, (logits, _gauss_kl(mu_q, logvar_q, mu_p, logvar_p))

    _, (logits, kl) = jax.lax.scan(step, h0, (o_hot, a_hot, eps))
    return logits.swapaxes(0, 1), kl.swapaxes(0, 1)


def negative_elbo(params: dict[str, Any], obs: jax.Array, actions: jax.Array, key: jax.Array,
                  *, kl_weight: float = 1.0, code_std: float = 1.0) -> jax.Array:
    """The negative ELBO per step (a scalar).

    `mean_[N, T](-log p(a_t | ...) + kl_weight * KL_t) + mean_N(KL_code) / T`, where the code enters as
    a sample of `q(l) = N(codes, code_std^2 I)` against the prior `N(0, I)`; `code_std = 0` uses the
    codes as they are and drops `KL_code` (then a code can memorise a trajectory's every action).
    """
    z_key, code_key = jax.random.split(key)
    codes = params["codes"]
    code_kl = jnp.zeros(codes.shape[0])
    if code_std > 0:
        code_kl = _gauss_kl(codes, jnp.full_like(codes, 2.0 * np.log(code_std)), 0.0, 0.0)
        codes = codes + code_std * jax.random.normal(code_key, codes.shape)
    logits, kl = vrnn_forward(params, obs, actions, z_key, codes=codes)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], axis=-1)[..., 0]
    return jnp.mean(nll + kl_weight * kl) + jnp.mean(code_kl) / obs.shape[1]


def fit_vrnn(obs: np.ndarray, actions: np.ndarray, cfg: VRNNConfig = VRNNConfig()
             ) -> tuple[dict[str, Any], np.ndarray]:
    """Fits the VRNN and the per-trajectory codes by full-batch Adam on the negative ELBO.

    Args:
      obs, actions: [N, T] int.
    Returns: (params, losses [cfg.steps]) with losses the per-step training objective.
    """
    obs, actions = jnp.asarray(obs, jnp.int32), jnp.asarray(actions, jnp.int32)
    if obs.shape != actions.shape or obs.ndim != 2:
        raise ValueError(f"obs and actions must both be [N, T]; got {obs.shape} and {actions.shape}")
    key, init_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = init_vrnn(init_key, cfg, obs.shape[0])
    opt = optax.adam(cfg.learning_rate)
    opt_state = opt.init(params)

    @jax.jit
    def update(params, opt_state, key):
        loss, grads = jax.value_and_grad(negative_elbo)(params, obs, actions, key, kl_weight=cfg.kl_weight,
                                                         code_std=cfg.code_std)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = np.zeros(cfg.steps)
    for i in range(cfg.steps):
        params, opt_state, loss = update(params, opt_state, jax.random.fold_in(key, i))
        losses[i] = float(loss)
    return params, losses


# ----------------------------------------------------------------------------- indicators


def decoder_entropy(logits: jax.Array) -> jax.Array:
    """Entropy (nats) of softmax(logits) over the last axis: [..., A] -> [...]."""
    logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def randomness_indicator(logits: jax.Array, mask: jax.Array | None = None) -> np.ndarray:
    """RI [N]: the mean decoder entropy over each trajectory's valid steps.

    Args:
      logits: [N, T, A] decoder logits (from `vrnn_forward(..., key=None)`: z at the prior mean).
      mask: [N, T] bool/0-1, valid steps (default all).
    """
    ent = np.asarray(decoder_entropy(logits), np.float64)
    mask = np.ones_like(ent) if mask is None else np.asarray(mask, np.float64)
    if mask.shape != ent.shape:
        raise ValueError(f"mask must be [N, T] = {ent.shape}; got {mask.shape}")
    return (ent * mask).sum(-1) / np.maximum(mask.sum(-1), 1.0)


def fit_linear_probe(codes: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares affine probe `targets ~ codes @ w + b` (float64).

    Args:
      codes: [N, D]; targets: [N].
    Returns: (w [D], b).
    """
    codes = np.asarray(codes, np.float64)
    targets = np.asarray(targets, np.float64)
    if codes.ndim != 2 or targets.shape != codes.shape[:1]:
        raise ValueError(f"codes must be [N, D] and targets [N]; got {codes.shape} and {targets.shape}")
    design = np.concatenate([codes, np.ones((codes.shape[0], 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    return coef[:-1], float(coef[-1])


def exploited_level(codes: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """EL [N]: the linear probe's prediction of `-return` from each code (codes [N, D], returns [N])."""
    w, b = fit_linear_probe(codes, -np.asarray(returns, np.float64))
    return np.asarray(codes, np.float64) @ w + b


def stril_filter(ri: np.ndarray, el: np.ndarray) -> np.ndarray:
    """Indices (sorted, int64) of the trajectories with RI < median(RI) and EL < median(EL); ri, el: [N]."""
    ri, el = np.asarray(ri, np.float64), np.asarray(el, np.float64)
    if ri.shape != el.shape or ri.ndim != 1:
        raise ValueError(f"ri and el must both be [N]; got {ri.shape} and {el.shape}")
    return np.flatnonzero((ri < np.median(ri)) & (el < np.median(el)))


# ----------------------------------------------------------------------------- behaviour cloning


def behaviour_clone(obs: np.ndarray, actions: np.ndarray, *, smoothing: float = 0.01) -> np.ndarray:
    """Maximum-likelihood tabular policy from (obs, action) pairs.

    Args:
      obs, actions: [N, T] int (any shape, matched).
      smoothing: added to every count (an unseen observation gets the uniform policy).
    Returns: probs [NUM_OBS, NUM_ACTIONS], rows summing to 1.
    """
    obs, actions = np.asarray(obs).ravel(), np.asarray(actions).ravel()
    if obs.shape != actions.shape:
        raise ValueError(f"obs and actions must match; got {obs.size} and {actions.size} entries")
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0; got {smoothing}")
    counts = np.full((NUM_OBS, NUM_ACTIONS), float(smoothing))
    np.add.at(counts, (obs, actions), 1.0)
    return counts / counts.sum(axis=1, keepdims=True)


def policy_return(probs: np.ndarray, num_rounds: int, num_episodes: int, seed: int) -> float:
    """Mean reward per round of `probs [NUM_OBS, NUM_ACTIONS]` (sampled) against the counter opponent."""
    probs = np.asarray(probs, np.float64)
    if probs.shape != (NUM_OBS, NUM_ACTIONS):
        raise ValueError(f"probs must be [{NUM_OBS}, {NUM_ACTIONS}]; got {probs.shape}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_episodes):
        ob, prev = 0, None
        for _ in range(num_rounds):
            a = int(rng.choice(NUM_ACTIONS, p=probs[ob]))
            o = counter_move(prev)
            total += PAYOFF[a, o]
            ob, prev = 1 + NUM_ACTIONS * a + o, a
    return total / (num_episodes * num_rounds)


# ----------------------------------------------------------------------------- pipeline


class StrilResult(NamedTuple):
    """ri, el, returns: [N]; kept: [K] indices; losses: [steps]; bc_all / bc_kept: policy returns."""

    ri: np.ndarray
    el: np.ndarray
    returns: np.ndarray
    kept: np.ndarray
    losses: np.ndarray
    bc_all: float
    bc_kept: float


def run_stril(data: GameData, cfg: VRNNConfig = VRNNConfig(), *, eval_episodes: int = 200,
              eval_seed: int = 0) -> StrilResult:
    """VRNN fit -> RI, EL -> filter -> behaviour cloning on all data and on the kept set."""
    params, losses = fit_vrnn(data.obs, data.actions, cfg)
    logits, _ = vrnn_forward(params, jnp.asarray(data.obs), jnp.asarray(data.actions), None)
    ri = randomness_indicator(logits)
    returns = trajectory_returns(data.rewards)
    el = exploited_level(np.asarray(params["codes"]), returns)
    kept = stril_filter(ri, el)
    rounds = data.obs.shape[1]
    bc_all = policy_return(behaviour_clone(data.obs, data.actions), rounds, eval_episodes, eval_seed)
    bc_kept = (policy_return(behaviour_clone(data.obs[kept], data.actions[kept]), rounds, eval_episodes,
                             eval_seed) if kept.size else float("nan"))
    return StrilResult(ri, el, returns, kept, losses, bc_all, bc_kept)
