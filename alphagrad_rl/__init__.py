"""alphagrad_rl: the harness that benchmarks the `alphagrad` optimizers on deep RL.

factory (every optimizer the harness compares, from command-line options), experiment (the agents'
shared options and set-up), envs and buffers (environment plumbing, replay buffer), runs (the run
record: the one contract between agents, sweeps and analysis), checkpoint (exact resume), sweep
(grids of runs, launched and resumed), analysis and report (statistics, figures, claims).
"""
