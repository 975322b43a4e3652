"""A Weights & Biases workspace that compares a sweep's arms: the paper's panels of its algorithm (analysis.PANELS),
every run of the sweep grouped by its arm (mean and spread over seeds), against global_step.

    alphagrad-rl dashboard --entity ENTITY --project alphagrad-rl --sweep paper-dqn-cartpole --algorithm dqn

saves it to W&B (it needs a login) and prints its URL; `sweep_workspace` builds it without a server. The runs it
shows are those a sweep logged with `--track` (config keys `sweep` and `arm`: runs.RunRecord).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import tyro

from .analysis import PANELS

TITLES = {"charts/episodic_return": "Episodic return", "charts/episodic_length": "Episode length",
          "losses/td_loss": "TD loss", "losses/q_values": "Q-values", "losses/qf1_values": "Q-values (critic 1)",
          "losses/actor_loss": "Actor loss", "losses/explained_variance": "Explained variance",
          "losses/entropy": "Entropy", "losses/approx_kl": "Approximate KL"}


def sweep_workspace(entity: str, project: str, sweep: str, algorithm: str, smoothing: float = 0.6):
    """The workspace (wandb_workspaces.workspaces.Workspace) of one sweep: its algorithm's panels, then the optimizer
    diagnostics (update norms, AlphaGrad's saturation), runs filtered to the sweep and grouped by arm."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    if algorithm not in PANELS:
        raise ValueError(f"invalid algorithm: {algorithm!r} (allowed: {', '.join(map(repr, PANELS))})")
    paper = [wr.LinePlot(title=TITLES.get(metric, metric), x="global_step", y=[metric], groupby_aggfunc="mean",
                         groupby_rangefunc="stderr", smoothing_factor=smoothing) for metric in PANELS[algorithm]]
    diagnostics = [wr.LinePlot(title=title, x="global_step", metric_regex=pattern, groupby_aggfunc="mean",
                               groupby_rangefunc="stderr")
                   for title, pattern in (("Network saturation S (section 7.3)", r"optimizer/.*/saturation$"),
                                          ("Update norms", r"optimizer/.*/update_norm/.*"))]
    return ws.Workspace(
        name=f"{sweep}: arms", entity=entity, project=project,
        settings=ws.WorkspaceSettings(x_axis="global_step"),
        runset_settings=ws.RunsetSettings(filters=[ws.Config("sweep") == sweep], groupby=[ws.Config("arm")]),
        sections=[ws.Section(name=f"{sweep}: the paper's panels, by arm", panels=paper, is_open=True),
                  ws.Section(name="Optimizer diagnostics", panels=diagnostics, is_open=False)])


@dataclass
class Args:
    entity: str
    """the W&B entity (user or team) the sweep logged to"""
    sweep: str
    """the sweep's name (its config's `name:`; the W&B group of its runs)"""
    algorithm: str
    """the sweep's agent: dqn, td3_continuous_action or ppo_continuous_action"""
    project: str = "alphagrad-rl"
    """the W&B project (the agents' --wandb-project-name)"""


def main(args: Args) -> int:
    workspace = sweep_workspace(args.entity, args.project, args.sweep, args.algorithm)
    workspace.save()
    print(workspace.url)
    return 0


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line (`alphagrad-rl dashboard`, or `python -m alphagrad_rl.dashboard`): its exit status."""
    return main(tyro.cli(Args, args=argv, prog=prog))


if __name__ == "__main__":
    sys.exit(run())
