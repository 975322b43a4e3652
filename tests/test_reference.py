"""Our agents against a well-kept reference implementation, where the two implement the same algorithm exactly."""

import gymnasium as gym
import numpy as np
import torch
from alphagrad_rl.agents import td3_continuous_action
from stable_baselines3 import TD3
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from alphagrad_rl.buffers import ReplayBatch, ReplayBuffer


def random_batches(count: int, obs_dim: int, action_dim: int, seed: int) -> list[ReplayBatch]:
    rng = np.random.default_rng(seed)

    def tensor(values):
        return torch.tensor(values, dtype=torch.float32)

    return [ReplayBatch(tensor(rng.normal(0, 1, (256, obs_dim))), tensor(rng.uniform(-1, 1, (256, action_dim))),
                        tensor(rng.normal(0, 1, (256, obs_dim))), tensor(rng.normal(1, 1, (256, 1))),
                        tensor(rng.random((256, 1)) < 0.05)) for _ in range(count)]


def linear_layers(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [layer for layer in module.modules() if isinstance(layer, torch.nn.Linear)]


def reference_td3(env, **kwargs) -> TD3:
    """SB3's TD3 with CleanRL's TD3 settings (256x256 networks, lr 3e-4, batch 256) and target policy noise 0 (its
    draws and ours come from different generators)."""
    torch.manual_seed(0)
    reference = TD3("MlpPolicy", env, learning_rate=3e-4, batch_size=256, tau=0.005, gamma=0.99, policy_delay=2,
                    target_policy_noise=0.0, policy_kwargs={"net_arch": [256, 256]}, device="cpu", **kwargs)
    reference.set_logger(configure(None, []))
    return reference


def start_from_reference_weights(reference: TD3, monkeypatch) -> dict:
    """Make our TD3 agent build its actor and critics with `reference`'s current weights (their targets copy them).
    Returns the reference's layers ("actor_layers", "critic_layers") and their starting weights ("actor")."""
    actor_layers = linear_layers(reference.actor.mu)
    critic_layers = [linear_layers(reference.critic.qf0), linear_layers(reference.critic.qf1)]

    def weights(layers: list[torch.nn.Linear]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in layers]

    def load(layers: list[torch.nn.Linear], values) -> None:
        with torch.no_grad():
            for layer, (weight, bias) in zip(layers, values):
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)

    actor_start, critic_starts = weights(actor_layers), [weights(layers) for layers in critic_layers]
    critics_built = []

    class Actor(td3_continuous_action.Actor):
        def __init__(self, env):
            super().__init__(env)
            load(linear_layers(self), actor_start)

    class QNetwork(td3_continuous_action.QNetwork):
        def __init__(self, env):  # qf1, qf2, then their targets
            super().__init__(env)
            load(linear_layers(self), critic_starts[len(critics_built) % 2])
            critics_built.append(self)

    monkeypatch.setattr(td3_continuous_action, "Actor", Actor)
    monkeypatch.setattr(td3_continuous_action, "QNetwork", QNetwork)
    return {"actor_layers": actor_layers, "critic_layers": critic_layers, "actor": actor_start}


def test_td3_updates_equal_stable_baselines3s(tmp_path, monkeypatch):
    """From the same weights and on the same minibatches, 40 of our TD3 agent's updates (critics every step, actor
    and targets every second) give the parameters Stable-Baselines3's TD3.train gives, to float rounding. Hopper's
    actions lie in [-1, 1], where SB3's internal action scaling is the identity."""
    updates, learning_starts = 40, 100
    reference = reference_td3("Hopper-v4", seed=0)
    start = start_from_reference_weights(reference, monkeypatch)
    actor_layers, critic_layers = start["actor_layers"], start["critic_layers"]

    batches = random_batches(updates, 11, 3, seed=1)
    reference_batches = iter([ReplayBufferSamples(b.observations, b.actions, b.next_observations, b.terminations,
                                                  b.rewards) for b in batches])
    monkeypatch.setattr(reference.replay_buffer, "sample", lambda *args, **kwargs: next(reference_batches))
    reference.train(gradient_steps=updates, batch_size=256)

    our_batches = iter(batches)
    monkeypatch.setattr(ReplayBuffer, "sample", lambda self, batch_size, rng: next(our_batches))
    # updates run at steps learning_starts + 1, ..., total - 1; the actor's at the even ones, as SB3's at even counts
    td3_continuous_action.main(td3_continuous_action.Args(
        env_id="Hopper-v4", total_timesteps=learning_starts + 1 + updates, learning_starts=learning_starts,
        policy_noise=0.0, results_dir=str(tmp_path), run_name="td3", quiet=True, cuda=False, diagnostics_interval=0,
        save_model=True, eval_episodes=1))
    assert next(our_batches, None) is None  # every batch was used

    ours = torch.load(tmp_path / "td3" / "td3_continuous_action.pt", weights_only=True)
    pairs = [(ours["actor"], ["fc1", "fc2", "fc_mu"], actor_layers),
             (ours["qf1"], ["fc1", "fc2", "fc3"], critic_layers[0]), (ours["qf2"], ["fc1", "fc2", "fc3"], critic_layers[1])]
    for state, names, layers in pairs:
        for name, layer in zip(names, layers):
            torch.testing.assert_close(state[f"{name}.weight"], layer.weight.detach(), rtol=0, atol=2e-7)
            torch.testing.assert_close(state[f"{name}.bias"], layer.bias.detach(), rtol=0, atol=2e-7)
    moved = max((layer.weight.detach() - weight).abs().max().item()
                for layer, (weight, _) in zip(actor_layers, start["actor"]))
    assert moved > 1e-3  # the updates did move the actor (20 of them), far beyond the tolerance


def test_td3_training_loop_stores_what_stable_baselines3s_stores(tmp_path, monkeypatch):
    """End to end on Hopper-v4: from the same weights, with the same random warm-up actions and minibatch indices
    and no exploration noise, our agent's training loop and SB3's TD3.learn put the same transitions in their
    replay buffers, through the warm-up and 200 steps of acting with the learning actor (SB3 trains one step
    earlier than CleanRL's loop, after step learning_starts + 1 instead of + 2: its first call is skipped). This
    is the data path around the update test above: which action is taken and stored, the next observation and
    reward beside it, termination vs truncation, and when updates begin."""
    learning_starts, total = 300, 500
    reference = reference_td3(Monitor(gym.make("Hopper-v4")), seed=1, learning_starts=learning_starts,
                              action_noise=None)
    start_from_reference_weights(reference, monkeypatch)
    warm_up_actions = np.random.default_rng(5).uniform(-1, 1, (learning_starts, 3)).astype(np.float32)
    index_draws = np.random.default_rng(6).integers(0, 10**9, (total, 256))

    reference_warm_up, reference_draws = iter(warm_up_actions), iter(index_draws)
    buffer = reference.replay_buffer
    monkeypatch.setattr(reference.action_space, "sample", lambda: next(reference_warm_up))
    monkeypatch.setattr(buffer, "sample", lambda batch_size, env=None: buffer._get_samples(
        next(reference_draws) % (buffer.buffer_size if buffer.full else buffer.pos)))
    train, calls = reference.train, []
    monkeypatch.setattr(reference, "train", lambda gradient_steps, batch_size: (
        calls.append(gradient_steps), len(calls) > 1 and train(gradient_steps, batch_size)))
    reference.learn(total)

    our_warm_up, our_draws, used = iter(warm_up_actions), iter(index_draws), []
    monkeypatch.setattr(gym.spaces.Box, "sample", lambda self, mask=None, probability=None: next(our_warm_up))

    def sample(self, batch_size, rng):
        used.append(self)
        indices = next(our_draws) % len(self)
        return ReplayBatch(*(torch.as_tensor(array[indices]).float() for array in (
            self.observations, self.actions, self.next_observations, self.rewards, self.terminations)))

    monkeypatch.setattr(ReplayBuffer, "sample", sample)
    td3_continuous_action.main(td3_continuous_action.Args(
        env_id="Hopper-v4", seed=1, total_timesteps=total, learning_starts=learning_starts, exploration_noise=0.0,
        policy_noise=0.0, results_dir=str(tmp_path), run_name="td3", quiet=True, cuda=False, diagnostics_interval=0,
        autoreset_mode="same-step"))

    ours = used[0]
    assert len(used) == len(calls) - 1 == total - learning_starts - 1  # the same updates, on the same data
    assert ours.position == buffer.pos == total
    compared = {"observations": (ours.observations, buffer.observations[:, 0]),
                "actions": (ours.actions, buffer.actions[:, 0]),
                "next_observations": (ours.next_observations, buffer.next_observations[:, 0]),
                "rewards": (ours.rewards[:, 0], buffer.rewards[:, 0]),
                "terminations": (ours.terminations[:, 0], buffer.dones[:, 0])}
    for name, (our_rows, reference_rows) in compared.items():  # measured: within 6e-6 (float rounding grows)
        np.testing.assert_allclose(our_rows[:total], reference_rows[:total], rtol=0, atol=1e-4, err_msg=name)
    assert ours.terminations[:total].sum() >= 5  # episodes did end by falling (terminal, not bootstrapped)
