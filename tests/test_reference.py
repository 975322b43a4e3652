"""Our agents against a well-kept reference implementation, where the two implement the same algorithm exactly."""

import numpy as np
import torch
from stable_baselines3 import TD3
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from agents import td3_continuous_action
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


def test_td3_updates_equal_stable_baselines3s(tmp_path, monkeypatch):
    """From the same weights and on the same minibatches, 40 of our TD3 agent's updates (critics every step, actor
    and targets every second) give the parameters Stable-Baselines3's TD3.train gives, to float rounding. Hopper's
    actions lie in [-1, 1], where SB3's internal action scaling is the identity; target policy noise is 0 on both
    sides (its draws come from different generators), the rest are CleanRL's defaults."""
    updates, learning_starts = 40, 100
    torch.manual_seed(0)
    reference = TD3("MlpPolicy", "Hopper-v4", learning_rate=3e-4, batch_size=256, tau=0.005, gamma=0.99,
                    policy_delay=2, target_policy_noise=0.0, policy_kwargs={"net_arch": [256, 256]}, device="cpu",
                    seed=0)
    reference.set_logger(configure(None, []))
    actor_layers = linear_layers(reference.actor.mu)
    critic_layers = [linear_layers(reference.critic.qf0), linear_layers(reference.critic.qf1)]
    start = {"actor": [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in actor_layers],
             "critics": [[(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in layers]
                         for layers in critic_layers]}

    batches = random_batches(updates, 11, 3, seed=1)
    reference_batches = iter([ReplayBufferSamples(b.observations, b.actions, b.next_observations, b.terminations,
                                                  b.rewards) for b in batches])
    monkeypatch.setattr(reference.replay_buffer, "sample", lambda *args, **kwargs: next(reference_batches))
    reference.train(gradient_steps=updates, batch_size=256)

    def load(layers: list[torch.nn.Linear], weights) -> None:
        with torch.no_grad():
            for layer, (weight, bias) in zip(layers, weights):
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)

    critics_built = []

    class Actor(td3_continuous_action.Actor):
        def __init__(self, env):
            super().__init__(env)
            load(linear_layers(self), start["actor"])

    class QNetwork(td3_continuous_action.QNetwork):
        def __init__(self, env):  # qf1, qf2, then their targets (which copy them)
            super().__init__(env)
            load(linear_layers(self), start["critics"][len(critics_built) % 2])
            critics_built.append(self)

    monkeypatch.setattr(td3_continuous_action, "Actor", Actor)
    monkeypatch.setattr(td3_continuous_action, "QNetwork", QNetwork)
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
