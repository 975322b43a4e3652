"""Environment plumbing shared by the agents: checked construction and gymnasium 1.x autoreset handling.

The agents use `AutoresetMode.SAME_STEP`: when an episode ends, `step()` returns the first observation
of the next episode, and the true last observation in `infos["final_obs"]`, with the episode's
statistics in `infos["final_info"]["episode"]`. Transitions must use the true last observation, so no
stored transition spans an episode boundary, and truncated episodes bootstrap from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gymnasium as gym
import numpy as np


def check_env(env_id: str, action_space_type: type[gym.Space], algorithm: str) -> None:
    """Raise ValueError when `env_id` is not registered (naming close matches) or its action space is not an
    `action_space_type` (the environment is made once, bare, to see it)."""
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown environment id {env_id!r}.{hint} (see gymnasium.registry for all ids)")
    try:
        env = gym.make(env_id)
    except Exception as error:  # a missing optional dependency (box2d, jax, ...), a broken registration
        raise ValueError(f"environment {env_id!r} cannot be made here: {type(error).__name__}: {error}") from None
    space, observations = env.action_space, env.observation_space
    env.close()
    _check_action_space(space, action_space_type, algorithm)
    if not (isinstance(observations, gym.spaces.Box) and len(observations.shape) == 1):
        raise ValueError(f"{algorithm} needs a flat Box observation space (a vector; its networks are MLPs), but "
                         f"{env_id} has {observations} (flatten it with a wrapper, e.g. gymnasium.wrappers."
                         "FlattenObservation, in an environment registered for it)")


def _check_action_space(space: gym.Space, action_space_type: type[gym.Space], algorithm: str) -> None:
    if not isinstance(space, action_space_type):
        raise ValueError(f"{algorithm} needs a {action_space_type.__name__} action space, "
                         f"but the environment has {space}")


AUTORESET_MODES = {"same-step": gym.vector.AutoresetMode.SAME_STEP, "next-step": gym.vector.AutoresetMode.NEXT_STEP}


def make_vector_env(env_fns: list[Callable[[], gym.Env]], action_space_type: type[gym.Space],
                    algorithm: str, autoreset_mode: str = "same-step") -> gym.vector.SyncVectorEnv:
    """A SyncVectorEnv whose action space must be `action_space_type`, in `autoreset_mode` (AUTORESET_MODES):
    same-step (ours: the step that ends an episode returns the next episode's first observation, the last one
    in infos["final_obs"]) or next-step (gymnasium's default: that step returns the last observation, and the
    following step resets the env, returning reward 0 and the first observation while ignoring the action)."""
    envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=AUTORESET_MODES[autoreset_mode])
    try:
        _check_action_space(envs.single_action_space, action_space_type, algorithm)
    except ValueError:
        envs.close()
        raise
    return envs


def true_next_obs(next_obs: np.ndarray, terminations: np.ndarray, truncations: np.ndarray,
                  infos: dict) -> np.ndarray:
    """next_obs with the reset observation of finished episodes replaced by their true last observation
    (same-step autoreset; in next-step mode next_obs already holds it, and infos has no "final_obs")."""
    if "final_obs" not in infos:
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(np.logical_or(terminations, truncations)):
        real[i] = infos["final_obs"][i]
    return real


def ended_episodes(infos: dict) -> Iterator[tuple[int, float, int]]:
    """(env index, return, length) of each episode that ended in this step, each counted once (same-step
    autoreset: in infos["final_info"]; next-step: in infos itself)."""
    ended = infos.get("final_info") or infos
    if "episode" not in ended:
        return
    episode, mask = ended["episode"], ended["_episode"]
    for i in np.flatnonzero(mask):
        yield int(i), float(episode["r"][i]), int(episode["l"][i])


def episode_end_infos(num_envs: int, ended: np.ndarray, returns: np.ndarray, lengths: np.ndarray,
                      start_times: np.ndarray, final_obs: np.ndarray | None = None) -> dict:
    """A batched vector env's infos for a step in which sub-environments `ended` finished an episode, in the layout a
    SyncVectorEnv of RecordEpisodeStatistics-wrapped envs gives (what ended_episodes reads): each one's "episode"
    (return, length, seconds since its start_times), under "final_info" beside its last observation final_obs[i]
    (same-step autoreset), or at the top level when final_obs is None (next-step). {} when nothing ended."""
    if not len(ended):
        return {}
    mask = np.zeros(num_envs, dtype=bool)
    mask[ended] = True
    episode = {"r": np.zeros(num_envs), "l": np.zeros(num_envs, dtype=np.int64), "t": np.zeros(num_envs),
               "_r": mask, "_l": mask, "_t": mask}
    episode["r"][ended] = returns[ended]
    episode["l"][ended] = lengths[ended]
    episode["t"][ended] = np.round(time.perf_counter() - start_times[ended], 6)
    if final_obs is None:
        return {"episode": episode, "_episode": mask}
    last = np.full(num_envs, None, dtype=object)
    for i in ended:
        last[i] = final_obs[i].copy()
    return {"final_obs": last, "_final_obs": mask, "final_info": {"episode": episode, "_episode": mask},
            "_final_info": mask}


def finished_episodes(infos: dict) -> Iterator[tuple[float, int]]:
    """(return, length) of each episode that ended in this step (ended_episodes without the env index)."""
    for _, episodic_return, episodic_length in ended_episodes(infos):
        yield episodic_return, episodic_length


def evaluate_policy(envs: gym.vector.VectorEnv, act: Callable[[np.ndarray], np.ndarray], episodes: int,
                    seed: int) -> list[float]:
    """Returns of the first `episodes` episodes of `act` (observations -> actions); closes `envs`."""
    obs, _ = envs.reset(seed=seed)
    returns: list[float] = []
    while len(returns) < episodes:
        obs, _, _, _, infos = envs.step(act(obs))
        returns += [episodic_return for episodic_return, _ in finished_episodes(infos)]
    envs.close()
    return returns[:episodes]


# --- Saving and restoring environment state (checkpoints) -------------------------------------------------
# A sub-environment is restorable when every layer of its wrapper stack is known here: stateless
# wrappers, the stateful ones below, and a MuJoCo or classic-control core. Any other layer makes it
# non-restorable: a resumed run then starts a fresh episode in it (and records that).

_STATELESS_WRAPPERS = (
    gym.wrappers.OrderEnforcing, gym.wrappers.PassiveEnvChecker, gym.wrappers.FlattenObservation,
    gym.wrappers.ClipAction, gym.wrappers.TransformObservation, gym.wrappers.TransformReward,
)
_CLASSIC_CONTROL_STATE = {  # the attributes that hold the whole simulation state
    "CartPoleEnv": ("state", "steps_beyond_terminated"),
    "AcrobotEnv": ("state",),
    "MountainCarEnv": ("state",),
    "Continuous_MountainCarEnv": ("state",),
    "PendulumEnv": ("state", "last_u"),
}


def _layers(env: gym.Env) -> list[gym.Env]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _rms_state(rms) -> dict:
    return {"mean": rms.mean.copy(), "var": rms.var.copy(), "count": float(rms.count)}


def _set_rms(rms, state: dict) -> None:
    rms.mean, rms.var, rms.count = np.array(state["mean"]), np.array(state["var"]), float(state["count"])


def _generator_state(generator: np.random.Generator | None) -> dict | None:
    return None if generator is None else generator.bit_generator.state


def layer_state(layer: gym.Env) -> dict | None:
    """The state of one layer, {} for a stateless one, None when it cannot be saved (a core that is
    neither MuJoCo nor classic control keeps its RNG state, with restorable False)."""
    if isinstance(layer, _STATELESS_WRAPPERS):
        return {}
    if isinstance(layer, gym.wrappers.TimeLimit):
        return {"elapsed_steps": layer._elapsed_steps}
    if isinstance(layer, gym.wrappers.RecordEpisodeStatistics):
        return {"episode_returns": float(layer.episode_returns), "episode_lengths": int(layer.episode_lengths),
                "episode_count": layer.episode_count, "episode_time": time.perf_counter() - layer.episode_start_time,
                "time_queue": list(layer.time_queue), "return_queue": [float(r) for r in layer.return_queue],
                "length_queue": list(layer.length_queue)}
    if isinstance(layer, gym.wrappers.NormalizeObservation):
        return {"obs_rms": _rms_state(layer.obs_rms), "update": layer.update_running_mean}
    if isinstance(layer, gym.wrappers.NormalizeReward):
        return {"return_rms": _rms_state(layer.return_rms), "discounted_reward": layer.discounted_reward.copy(),
                "update": layer.update_running_mean}
    if isinstance(layer, gym.Wrapper):
        return None
    state = {"np_random": _generator_state(layer._np_random)}
    if is_mujoco(layer):
        import mujoco

        physics = np.empty(mujoco.mj_stateSize(layer.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(layer.model, layer.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        return {**state, "mujoco_integration_state": physics}
    attributes = _CLASSIC_CONTROL_STATE.get(type(layer).__name__)
    if attributes is None:
        return {**state, "simulation_saved": False}
    for name in attributes:
        value = getattr(layer, name)
        state[name] = np.array(value) if isinstance(value, (np.ndarray, tuple)) else value
    return state


def is_mujoco(env: gym.Env) -> bool:
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except ImportError:  # gymnasium without the mujoco extra
        return False
    return isinstance(env, MujocoEnv)


def env_state(env: gym.Env) -> dict:
    """Everything needed to continue `env` exactly where it is: each layer's state (wrapper counters,
    normalization statistics, physics), the RNGs of the core and of the spaces. `restorable` is False
    when some layer's state cannot be saved."""
    layers = _layers(env)
    states = [layer_state(layer) for layer in layers]
    restorable = all(s is not None for s in states) and states[-1].get("simulation_saved", True)
    return {"layers": [type(layer).__name__ for layer in layers], "restorable": restorable,
            "states": states, "action_space_rng": _generator_state(env.action_space._np_random),
            "observation_space_rng": _generator_state(env.observation_space._np_random)}


def restore_layer(layer: gym.Env, state: dict) -> None:
    if isinstance(layer, gym.wrappers.TimeLimit):
        layer._elapsed_steps = state["elapsed_steps"]
    elif isinstance(layer, gym.wrappers.RecordEpisodeStatistics):
        layer.episode_returns, layer.episode_lengths = state["episode_returns"], state["episode_lengths"]
        layer.episode_count = state["episode_count"]
        layer.episode_start_time = time.perf_counter() - state["episode_time"]
        for name in ("time_queue", "return_queue", "length_queue"):
            queue = getattr(layer, name)
            queue.clear()
            queue.extend(state[name])
    elif isinstance(layer, gym.wrappers.NormalizeObservation):
        _set_rms(layer.obs_rms, state["obs_rms"])
        layer.update_running_mean = state["update"]
    elif isinstance(layer, gym.wrappers.NormalizeReward):
        _set_rms(layer.return_rms, state["return_rms"])
        layer.discounted_reward = state["discounted_reward"].copy()
        layer.update_running_mean = state["update"]
    elif not isinstance(layer, gym.Wrapper):  # the core: its RNG, and its physics when it could be saved
        if state["np_random"] is not None:
            layer.np_random.bit_generator.state = state["np_random"]
        if "mujoco_integration_state" in state:
            import mujoco

            physics = state["mujoco_integration_state"]
            if physics.size != mujoco.mj_stateSize(layer.model, mujoco.mjtState.mjSTATE_INTEGRATION):
                raise ValueError(f"the saved MuJoCo state of {type(layer).__name__} does not fit its model")
            mujoco.mj_setState(layer.model, layer.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(layer.model, layer.data)  # derived quantities (positions, contacts) for the next step
            # before MuJoCo 3.3.6, mj_forward also overwrote qacc_warmstart (the constraint solver's starting point,
            # part of the saved state) with its own solution; set the state again so the next step starts as saved
            mujoco.mj_setState(layer.model, layer.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        for name in _CLASSIC_CONTROL_STATE.get(type(layer).__name__, ()):
            value = state[name]
            setattr(layer, name, value.copy() if isinstance(value, np.ndarray) else value)


def restore_env_state(env: gym.Env, state: dict) -> np.ndarray | None:
    """Put `env` (reset once already) back into a state from `env_state`. Returns None when it continues
    exactly; otherwise (a non-restorable env) the first observation of the fresh episode it started,
    with the RNGs restored so that this fresh episode is itself reproducible."""
    layers = _layers(env)
    names = [type(layer).__name__ for layer in layers]
    if names != list(state["layers"]):
        raise ValueError(f"the saved environment has layers {list(state['layers'])}, this one {names}")
    for space, rng in ((env.action_space, state["action_space_rng"]),
                       (env.observation_space, state["observation_space_rng"])):
        if rng is not None:
            space.np_random.bit_generator.state = rng
    for layer, saved in zip(layers, state["states"]):
        if saved:
            restore_layer(layer, saved)
    if state["restorable"]:
        return None
    obs, _ = env.reset()  # continues the restored RNGs and keeps the restored statistics
    return obs


def vector_env_state(envs: gym.vector.SyncVectorEnv) -> dict:
    """Each sub-environment's state, and which of them reset at their next step (next-step autoreset)."""
    return {"envs": [env_state(env) for env in envs.envs], "autoreset": envs._autoreset_envs.copy()}


def restore_vector_env_state(envs: gym.vector.SyncVectorEnv, state: dict) -> dict[int, np.ndarray]:
    """Restore each sub-environment; returns {index: first observation} for those that started a fresh episode."""
    if len(state["envs"]) != envs.num_envs:
        raise ValueError(f"the checkpoint has {len(state['envs'])} environments, this run {envs.num_envs}")
    fresh = {}
    for index, (env, env_saved) in enumerate(zip(envs.envs, state["envs"])):
        obs = restore_env_state(env, env_saved)
        if obs is not None:
            fresh[index] = obs
    envs._autoreset_envs = np.array(state["autoreset"], dtype=bool)
    envs._autoreset_envs[list(fresh)] = False  # a fresh episode has just been reset
    return fresh
