# alphagrad-rl. `make install` builds .venv (torch first, pinned), `make test` runs the test suite.
# any python3 of 3.11 or newer (the venv's interpreter): `make install PYTHON=python3.12` picks another
PYTHON ?= python3
VENV ?= .venv
# A GPU user overrides this, e.g. `make install TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo reproduce-dqn reproduce-td3 reproduce-td3-500k reproduce-ppo reproduce-paper sensitivity-dqn sensitivity-ppo sensitivity-td3 sensitivity-td3-cpu tune-demo benchmark leaderboard try-bad-inputs bench-optimizers bench-agents bench-checkpoint demo-resume clean

# Extra arguments for the sweep launcher, e.g. a quick, smaller version of a paper experiment:
#   make reproduce-ppo SWEEP_ARGS="--seeds 1 --total-timesteps 100000 --results-dir results/quick"
SWEEP_ARGS ?=
SWEEP := $(BIN)/python scripts/sweep.py
ANALYZE := $(BIN)/python scripts/analyze.py

# (the fused CPU kernel is built once per environment and kind of CPU, ~30-60 s)
install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'error: $(PYTHON) is Python ' + sys.version.split()[0] + ' (allowed: 3.11 or newer): make install PYTHON=python3.11')"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	@# MuJoCo >= 4 ships as mujoco + mujoco-core + mujoco-studio, sharing one package folder: a venv that had it
	@# drops all three before the pinned 3.3.1 goes in (MuJoCo's own note for changing across the split)
	if $(BIN)/python -m pip show --quiet mujoco-core 2>/dev/null; then \
		$(BIN)/python -m pip uninstall --quiet -y mujoco mujoco-core mujoco-studio; fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m alphagrad.build_kernel || true
	touch $(STAMP)

# one pytest worker per core (pytest-xdist; the tests share no files), and the slowest tests named at the end
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

# A small real sweep (DQN CartPole, Adam vs AlphaGrad vs AdamW-AGR, 2 seeds, 60k steps; ~1-2 min on 2 cores),
# then its analysis: results/demo-dqn-cartpole/REPORT.md with tables and figures
demo: $(STAMP)
	$(SWEEP) configs/demo_dqn_cartpole.yaml $(SWEEP_ARGS); status=$$?; \
	$(ANALYZE) results/runs/demo-dqn-cartpole && exit $$status

# The AlphaGrad paper's experiments as its author ran them (configs/paper_*.yaml say each setting's source).
# `make reproduce-dqn` rebuilds the report from the committed compact records (results/paper-dqn-cartpole/records)
# without running anything; `make reproduce-dqn RERUN=1` runs (or resumes) the sweep first (each run's record is
# written as it ends), then rebuilds the report from the records. Same for reproduce-td3, reproduce-ppo and
# reproduce-paper (all three).
# Reruns pack runs into population processes of POPULATION runs (agents/*_population.py; per agent by default the
# fastest size measured on a 2-core CPU, results/population-bench/: DQN 40, PPO 20, TD3 0 = one run per process,
# since its stacked step gains nothing on a CPU; on a GPU try POPULATION=20), into RUNS; a reduced budget, e.g. TD3
# on a CPU (the report states the budget):
#   make reproduce-td3 RERUN=1 RUNS=results/runs-200k SWEEP_ARGS="--total-timesteps 200000 --order seed"
# A run whose finished record is committed is not trained again (a fresh clone reruns only what is missing), and a
# record made with other options is refused, not overwritten: another budget goes into its own folder, OUT, e.g.
#   make reproduce-td3-500k RERUN=1 POPULATION=20    # the author's 500k (below), on a GPU
RERUN ?=
POPULATION ?=
RUNS ?= results/runs
OUT ?=
define reproduce
	@status=0; if [ -n "$(RERUN)" ]; then \
		$(SWEEP) configs/$(1).yaml --population-size $(or $(POPULATION),$(3)) --results-dir $(RUNS) \
			--records $(or $(OUT),results/$(2))/records $(SWEEP_ARGS); status=$$?; fi; \
	$(ANALYZE) $(or $(OUT),results/$(2))/records $(4) && exit $$status
endef

reproduce-dqn: $(STAMP)
	$(call reproduce,paper_dqn_cartpole,paper-dqn-cartpole,40)

reproduce-td3: $(STAMP)
	$(call reproduce,paper_td3_hopper,paper-td3-hopper,0)

reproduce-ppo: $(STAMP)
	$(call reproduce,paper_ppo_halfcheetah,paper-ppo-halfcheetah,20)

# TD3 at the author's 500k steps: Adam and alpha 100-457 in the author's form, seeds 1-5 first (seed by seed), then
# seeds 6-10 for Adam, alpha 100, 250 and 457 (issue's plan; ~1.5 process-hours a run on a CPU core)
TD3_500K_ARMS ?= adam alphagrad-100 alphagrad-150 alphagrad-200 alphagrad-250 alphagrad-457
TD3_500K_SEEDS ?= 1 2 3 4 5
reproduce-td3-500k: $(STAMP)
	@status=0; if [ -n "$(RERUN)" ]; then \
		$(SWEEP) configs/paper_td3_hopper.yaml --arms $(TD3_500K_ARMS) --seeds $(TD3_500K_SEEDS) --order seed \
			--population-size $(or $(POPULATION),0) --results-dir $(RUNS) \
			--records results/paper-td3-hopper-500k/records $(SWEEP_ARGS); status=$$?; fi; \
	$(ANALYZE) results/paper-td3-hopper-500k/records && exit $$status

reproduce-paper: reproduce-dqn reproduce-ppo reproduce-td3 reproduce-td3-500k

# AlphaGrad's final return against k = alpha / sqrt(d) at three lrs, with Adam's band and the saturation ratio
# (results/sensitivity-*/SENSITIVITY.md); from the committed records, or RERUN=1 to run the sweep (DQN CartPole
# 165 x 500k: ~2 h on 2 cores; PPO HalfCheetah 165 x 1M: ~7 h; TD3 Hopper 135 x 500k: a GPU's job, or
# SWEEP_ARGS="--total-timesteps N" on a CPU)
sensitivity-dqn: $(STAMP)
	$(call reproduce,sensitivity_dqn_cartpole,sensitivity-dqn-cartpole,40)

sensitivity-ppo: $(STAMP)
	$(call reproduce,sensitivity_ppo_halfcheetah,sensitivity-ppo-halfcheetah,20)

sensitivity-td3: $(STAMP)
	$(call reproduce,sensitivity_td3_hopper,sensitivity-td3-hopper,0)

# TD3's CPU slice (25 runs x 200k steps, ~15 process-hours): k = 0.05, 0.1, 2, 3, 4 at lr 3e-5, analyzed with the
# 200k-step reproduction's runs (results/paper-td3-hopper/records) into one curve from k = 0.05 to 4
sensitivity-td3-cpu: $(STAMP)
	$(call reproduce,sensitivity_td3_hopper_cpu,sensitivity-td3-hopper-cpu,0,--include results/paper-td3-hopper/records)

# Optuna over AlphaGrad's alpha and lr on DQN CartPole (30k steps, 3 seeds a trial, 12 trials): two tuner processes
# share the study's journal file, then the best settings run on 5 fresh seeds beside Adam (results/tune-dqn-cartpole/:
# TUNING.md, tuning.png). Run it again after a kill: it resumes. (~10 min on 2 idle cores)
TUNE := $(BIN)/python scripts/tune.py
tune-demo: $(STAMP)
	@# the second tuner is stopped (SIGTERM: its trials checkpoint) when the first fails, never left training
	$(TUNE) configs/tune_dqn_cartpole.yaml --worker-id 1 --no-final & other=$$!; \
	$(TUNE) configs/tune_dqn_cartpole.yaml --worker-id 0 --no-final || { kill $$other; wait $$other; exit 1; }; \
	wait $$other
	$(TUNE) configs/tune_dqn_cartpole.yaml

# The RL optimizer benchmark (configs/benchmark.yaml, docs/benchmark.md): `make benchmark OPTIMIZER=lion` tunes and
# evaluates one optimizer on the suite's cpu profile (or PROFILE=full) and adds its row to results/leaderboard/; a
# factory of your own: OPTIMIZER=mypkg.optim:build BENCH_ARGS="--name my-opt --search options.beta=0.5:0.99". Run
# it again after a stop: it resumes. `make leaderboard` rebuilds LEADERBOARD.md and its figures from the committed
# entries, training nothing.
OPTIMIZER ?=
PROFILE ?= cpu
BENCH_ARGS ?=
BENCHMARK := $(BIN)/python scripts/benchmark.py
benchmark: $(STAMP)
	@test -n "$(OPTIMIZER)" || { echo "error: make benchmark OPTIMIZER=<name in configs/benchmark.yaml, entry.yaml or package.module:callable>"; exit 2; }
	$(BENCHMARK) --optimizer $(OPTIMIZER) --profile $(PROFILE) $(BENCH_ARGS)

leaderboard: $(STAMP)
	$(BENCHMARK) --report-only --profile $(PROFILE)

# every bad input of scripts/try_bad_inputs.py (236, ~10 min on 2 cores), each checked against the outcome it must
# have and tallied (clear error / handled / silently accepted / traceback / data loss / interpreter crash);
# BAD_INPUTS_ARGS=--fast runs the 213 that train nothing (~1 min; the tests run them)
BAD_INPUTS_ARGS ?=
try-bad-inputs: $(STAMP)
	$(BIN)/python scripts/try_bad_inputs.py $(BAD_INPUTS_ARGS)

# optimizer.step() time and state bytes: AlphaGrad vs Adam vs SGD
bench-optimizers: $(STAMP)
	$(BIN)/python scripts/bench_optimizers.py

# DQN CartPole 500k (Adam) and PPO HalfCheetah 200k (Adam, AlphaGrad alpha=98): SPS and returns
bench-agents: $(STAMP)
	$(BIN)/python scripts/bench_agents.py

# a full TD3 Hopper checkpoint (1M transitions): size on disk vs memory, save and load times (~6 min)
bench-checkpoint: $(STAMP)
	$(BIN)/python scripts/bench_checkpoint.py

# a TD3 Hopper run killed with SIGKILL, resumed by running its sweep again, compared with an uninterrupted copy
# (~21 min on 2 cores; results/demo-resume/)
demo-resume: $(STAMP)
	$(BIN)/python scripts/demo_resume.py --reference

clean:
	rm -rf $(VENV) .pytest_cache
