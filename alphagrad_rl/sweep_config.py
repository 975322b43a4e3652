"""Sweep configuration: the schema of a sweep config, its expansion into runs, and their validation through the
agents' own parsers and checks (the first layer of the launcher; planning, execution and progress build on it).

Config (YAML), in the layout of a Weights & Biases grid sweep plus one harness extension, `arms`:

    name: paper-dqn-cartpole              # runs go to <results_dir>/<name>/<run name>/
    program: agents/dqn.py                # one of the agents
    method: grid
    description: free text
    metric: {name: charts/episodic_return, goal: maximize}
    parameters:                           # the agent's flags: `value` (fixed) or `values` (a grid axis)
      env-id: {value: CartPole-v1}
      total-timesteps: {value: 500000}
      seed: {values: [1, 2, 3]}
    arms:                                 # named optimizer settings, each crossed with the grid
      adam: {}
      alphagrad-93: {optim.name: alphagrad, optim.alpha: 93}

Each run is `python <program> --<flag> <value> ... --run-name <run> --results-dir <results_dir>/<name>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tyro
import tyro.extras
import yaml

from .runs import is_safe_name, safe_name, trained_options

TOP_LEVEL_KEYS = {"name", "program", "method", "description", "metric", "parameters", "arms"}
REQUIRED_KEYS = {"name", "program", "parameters", "arms"}
RESERVED_FLAGS = {"run-name", "results-dir"}
OPTION_KEY = ".options."  # "<optimizer>.options.<key>": one keyword argument of a custom optimizer (--optim.options)


class SweepConfigError(ValueError):
    """A malformed sweep config; the message names the file, the key and what is allowed."""


@dataclasses.dataclass(frozen=True)
class AgentEntry:
    """An agent that sweeps can run: its script, its tyro Args dataclass and its argument checks (raise ValueError).
    The launcher is given a registry {program as configs name it (e.g. "agents/dqn.py"): AgentEntry}."""

    path: Path
    args_type: type
    check: Callable[[Any], None]
    population: Path | None = None  # its population variant's script, which takes --seeds and --run-names
    # what its population takes per member: ((the flags one value sets, e.g. TD3's actor and critic alpha), the
    # population's list option), e.g. ((("optim.alpha",), "alphas"), (("optim.lr",), "lrs"))
    member_flags: tuple[tuple[tuple[str, ...], str], ...] = ()


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    arm: str
    seed: int
    flags: tuple[tuple[str, Any], ...]  # (flag without dashes, value), in order

    def flag_args(self) -> list[str]:
        """The agent's command-line flags for this run, without the launcher's own (run name, results folder)."""
        return [arg for flag, value in merged_options(self.flags) for arg in _flag_args(flag, value)]

    def argv(self, program: Path, results_dir: Path, extra: tuple[str, ...] = ()) -> list[str]:
        return [sys.executable, str(program), *self.flag_args(), *self.exp_name_args(), "--run-name", self.name,
                "--results-dir", str(results_dir), *extra]

    def exp_name_args(self) -> list[str]:
        """`--exp-name <arm>` (CleanRL's experiment name: W&B's job type and openrlbenchmark's selector), unless the
        config sets exp-name itself."""
        return [] if any(flag == "exp-name" for flag, _ in self.flags) else ["--exp-name", self.arm]


@dataclasses.dataclass
class Sweep:
    name: str
    program: str
    agent: AgentEntry
    runs: list[RunSpec]
    parameters: dict[str, dict[str, Any]]
    arms: dict[str, dict[str, Any]]
    metric: dict[str, Any] | None = None
    description: str = ""


def _flag_args(flag: str, value: Any) -> list[str]:
    if isinstance(value, bool):  # tyro booleans: --flag / --no-flag (nested: --optim.no-agr)
        prefix, dot, leaf = flag.rpartition(".")
        return [f"--{flag}" if value else f"--{prefix}{dot}no-{leaf}"]
    if isinstance(value, (list, tuple)):
        return [f"--{flag}", *map(str, value)]
    if isinstance(value, dict):  # a custom optimizer's options: JSON text
        return [f"--{flag}", json.dumps(value)]
    return [f"--{flag}", "None" if value is None else str(value)]


def merged_options(flags: tuple[tuple[str, Any], ...]) -> list[tuple[str, Any]]:
    """`flags` with each "<optimizer>.options.<key>" folded into that optimizer's options mapping (given as a mapping
    or as JSON text, or not at all), which goes to the agent as one JSON flag; the other flags as they are."""
    merged: dict[str, Any] = {}
    for flag, value in flags:
        spec, found, key = flag.partition(OPTION_KEY)
        if found:
            flag, value = f"{spec}.options", {key: value}
        if flag.endswith(".options") and flag in merged:
            value = {**_options(merged[flag]), **_options(value)}
        merged[flag] = value
    return list(merged.items())


def _options(value: Any) -> dict[str, Any]:
    """A custom optimizer's options as a mapping, from a mapping or JSON text (ValueError for anything else)."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"invalid optimizer options: {value!r} (allowed: a mapping, or a JSON object)")
    return parsed


def flag_problem(flag: str, flags: set[str], program: str) -> str | None:
    """Why the agent `program` does not take `flag`, or None when it does: one of its `flags`, or
    "<optimizer>.options.<key>", one keyword argument of a custom optimizer (merged_options)."""
    spec, found, key = flag.partition(OPTION_KEY)
    if flag in flags or (found and f"{spec}.options" in flags and key.isidentifier()):
        return None
    return (f"{flag!r} is not a flag of {program} (allowed: {', '.join(sorted(flags))}; and <optimizer>.options.<key> "
            "for one keyword argument of a custom optimizer)")


def agent_flags(args_type: type) -> set[str]:
    """Every flag the agent accepts (tyro style: dashes, nested dataclasses joined by dots)."""

    def walk(cls: type, prefix: str) -> set[str]:
        flags = set()
        for f in dataclasses.fields(cls):
            name = prefix + f.name.replace("_", "-")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                flags |= walk(type(default), name + ".")
            else:
                flags.add(name)
        return flags

    return walk(args_type, "")


class AgentArgumentError(ValueError):
    """Arguments an agent's parser refuses; the message names the flag, the value and what the flag takes."""


def parse_agent_args(args_type: type, args: Sequence[str]) -> Any:
    """`args` read by the agent's own parser (tyro; defaults filled in). AgentArgumentError names the first flag it
    refuses, with its value and what the flag takes (the parser's own description of it)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # tyro prints some refusals even without console outputs
            return tyro.cli(args_type, args=list(args), console_outputs=False)
    except SystemExit:
        raise AgentArgumentError(_refusal(args_type, list(args))) from None


def _refusal(args_type: type, args: list[str]) -> str:
    """Which of `args` the parser refuses: each flag with its values is parsed alone, the first refused is named."""
    actions = _flag_actions(args_type)
    groups: list[list[str]] = []
    for arg in args:
        if arg.startswith("--") or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    for flag, *values in groups:
        action = actions.get(flag.partition("=")[0])
        if action is None:
            return f"{flag}: not a flag of the agent"
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                tyro.cli(args_type, args=[flag, *values], console_outputs=False)
        except SystemExit:
            takes = "no value" if action.nargs == 0 else f"one of {action.metavar}" if action.choices else (
                action.metavar or "a value")
            return f"{' '.join([flag, *values])}: refused by the agent's parser (the flag takes {takes})"
    return f"{' '.join(args)}: refused by the agent's parser (each flag alone is accepted)"


@functools.lru_cache(maxsize=16)
def _flag_actions(args_type: type) -> dict[str, Any]:
    """{option string: its argparse action} of the agent's parser (tyro builds an argparse parser)."""
    return {option: action for action in tyro.extras.get_parser(args_type)._actions for option in action.option_strings}


def check_run_arguments(agent: AgentEntry, run: RunSpec) -> None:
    """Parse a run's flags with the agent's own parser and run the agent's own checks; ValueError if they fail."""
    agent.check(parsed_args(run, agent))


def parsed_args(run: RunSpec, agent: AgentEntry) -> Any:
    """The agent's options for `run`, as its own parser reads them (defaults filled in)."""
    return _parse(agent.args_type, tuple(run.flag_args()), run.name)


@functools.lru_cache(maxsize=4096)
def _parse(args_type: type, flag_args: tuple[str, ...], run_name: str) -> Any:
    return parse_agent_args(args_type, [*flag_args, "--run-name", run_name])


def run_settings(run: RunSpec, agent: AgentEntry) -> dict[str, Any]:
    """What `run` trains: its options as the agent parses them, without those that do not change a run
    (runs.RESUME_MAY_CHANGE: run name, results folder, logging, ...)."""
    return trained_options(dataclasses.asdict(parsed_args(run, agent)))


def settings_digest(runs: list[RunSpec], agent: AgentEntry) -> str:
    """8 hex digits that change with what any of `runs` trains (a sweep's folder for its edited settings)."""
    text = json.dumps([[run.name, run_settings(run, agent)] for run in runs], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with a key given twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)

ConfigErrorMaker = Callable[[str, str], SweepConfigError]


def read_yaml(path: Path, what: str, error: type[SweepConfigError] = SweepConfigError) -> Any:
    """A YAML file's content, a key given twice refused; `error` naming the file when it is missing or not YAML."""
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML: {problem}") from None


def read_config(path: Path, kind: str, top_level_keys: set[str], required_keys: set[str],
                agents: Mapping[str, AgentEntry]) -> tuple[dict[str, Any], ConfigErrorMaker, AgentEntry]:
    """A YAML config file (a sweep's or a tuner's) as a mapping whose top-level keys, `name` and `program` are
    checked, with its error maker fail(key, problem) and its agent. SweepConfigError names the file and the key
    (a missing or malformed file, a key given twice, an unknown or missing key, an unsafe name, an unknown program)."""
    config = read_yaml(path, f"{kind} config")
    if not isinstance(config, dict):
        raise SweepConfigError(f"{path}: the top level must be a mapping of {sorted(top_level_keys)}")

    def fail(key: str, problem: str) -> SweepConfigError:
        return SweepConfigError(f"{path}: key {key!r}: {problem}")

    for key in config:
        if key not in top_level_keys:
            raise fail(key, f"unknown key (allowed: {', '.join(sorted(top_level_keys))})")
    for key in sorted(required_keys - set(config)):
        raise fail(key, "missing (required: " + ", ".join(sorted(required_keys)) + ")")
    name = config["name"]
    if not (isinstance(name, str) and is_safe_name(name)):
        raise fail("name", f"{name!r} must be one folder name of letters, digits and '-_.=+,@'")
    if config["program"] not in agents:
        raise fail("program", f"{config['program']!r} (allowed: {', '.join(agents)})")
    return config, fail, agents[config["program"]]


def load_sweep(path: str | Path, agents: Mapping[str, AgentEntry]) -> Sweep:
    """Read, validate and expand a sweep config whose program is one of `agents` (SweepConfigError on any
    problem). Every run's arguments are checked with the agent's own parser and checks."""
    path = Path(path)
    config, fail, agent = read_config(path, "sweep", TOP_LEVEL_KEYS, REQUIRED_KEYS, agents)
    name, program = config["name"], config["program"]
    if config.get("method", "grid") != "grid":
        raise fail("method", f"{config['method']!r} is not supported (allowed: grid)")
    flags = agent_flags(agent.args_type)

    def check_flag(key: str, flag: Any) -> None:
        if flag in RESERVED_FLAGS:
            raise fail(key, f"{flag!r} is set by the launcher")
        if problem := flag_problem(flag, flags, program):
            raise fail(key, problem)

    parameters = config["parameters"]
    if not isinstance(parameters, dict):
        raise fail("parameters", "must map flags to {value: x} or {values: [x, ...]}")
    axes: list[tuple[str, list[Any]]] = []
    for flag, spec in parameters.items():
        check_flag(f"parameters.{flag}", flag)
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"value", "values"} & set(spec)):
            raise fail(f"parameters.{flag}", "must be {value: x} or {values: [x, ...]}")
        values = [spec["value"]] if "value" in spec else spec["values"]
        if not isinstance(values, list) or not values:
            raise fail(f"parameters.{flag}.values", "must be a non-empty list")
        as_flags = [" ".join(_flag_args(flag, value)) for value in values]  # 5000 and "5000" are the same run
        if repeated := sorted({shown for shown in as_flags if as_flags.count(shown) > 1}):
            raise fail(f"parameters.{flag}.values", f"lists a value more than once ({', '.join(repeated)}): "
                       "two runs would share one folder")
        axes.append((flag, values))
    if "seed" not in parameters:
        axes.append(("seed", [1]))

    arms = config["arms"]
    if not isinstance(arms, dict) or not arms:
        raise fail("arms", "must map arm names to flag settings (an empty {} keeps the agent's defaults)")
    for arm, settings in arms.items():
        if not isinstance(arm, str) or not arm.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise fail(f"arms.{arm}", "arm names use letters, digits, '-', '_' and '.'")
        if not isinstance(settings, dict):
            raise fail(f"arms.{arm}", "must map flags to values")
        for flag in settings:
            check_flag(f"arms.{arm}.{flag}", flag)
            if flag in parameters:
                raise fail(f"arms.{arm}.{flag}", "is also set under parameters")

    varying = [flag for flag, values in axes if len(values) > 1 and flag != "seed"]
    runs = []
    for arm, settings in arms.items():
        for combination in itertools.product(*(values for _, values in axes)):
            chosen = dict(zip((flag for flag, _ in axes), combination))
            label = "__".join([arm] + [safe_name(f"{flag}={chosen[flag]}") for flag in varying] + [f"s{chosen['seed']}"])
            seed = chosen["seed"]
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise fail("parameters.seed", f"seed {seed!r} is not an integer")
            runs.append(RunSpec(label, arm, seed, tuple({**chosen, **settings}.items())))
    names = [run.name for run in runs]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise fail("arms", f"two runs would share the folder {repeated[0]!r}: arm names and grid values must tell "
                   "every run apart")
    for run in runs:
        try:
            check_run_arguments(agent, run)
        except ValueError as error:
            raise fail(f"run {run.name}", f"{' '.join(run.flag_args())}: {error}") from None
    trains: dict[str, str] = {}  # what a run trains (its options as the agent parses them) -> its name
    for run in runs:
        other = trains.setdefault(json.dumps(run_settings(run, agent), sort_keys=True, default=str), run.name)
        if other != run.name:
            raise fail("parameters", f"runs {other} and {run.name} train the same options as the agent reads them "
                       "(e.g. YAML reads 1e-3 as text and 0.001 as a number): they would count as two runs; list "
                       "each setting once")
    return Sweep(name=name, program=program, agent=agent, runs=runs, parameters=parameters, arms=arms,
                 metric=config.get("metric"), description=str(config.get("description", "")))


def wandb_sweep_configs(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """One plain W&B grid-sweep config per arm (W&B has no arms: the arm's settings become fixed
    parameters). Each run logs to W&B in the group named after the sweep, with the arm as its exp_name (its
    job type); `wandb sweep FILE` then `wandb agent ID` runs it on the W&B service."""
    varied = [flag for flag, spec in sweep.parameters.items() if OPTION_KEY in flag and len(spec.get("values", [0])) > 1]
    if varied:
        raise SweepConfigError(f"{sweep.name}: a W&B sweep cannot vary one key of a custom optimizer's options "
                               f"({', '.join(varied)}): give each value its own arm")
    booleans = [flag for flag, spec in sweep.parameters.items() if len(spec.get("values", [0])) > 1
                and any(isinstance(value, bool) for value in spec["values"])]
    if booleans:
        raise SweepConfigError(f"{sweep.name}: a W&B sweep cannot vary a boolean flag ({', '.join(booleans)}): W&B "
                               "passes a false one by leaving it out, so the agent's default would train; give each "
                               "value its own arm")
    fixed = {flag: spec["value"] if "value" in spec else spec["values"][0] for flag, spec in sweep.parameters.items()
             if len(spec.get("values", [0])) == 1}
    configs = {}
    for arm, settings in sweep.arms.items():
        parameters = {**{flag: spec for flag, spec in sweep.parameters.items() if flag not in fixed},
                      **dict(_wandb_parameter(flag, value)
                             for flag, value in merged_options(tuple({**fixed, **settings}.items())))}
        configs[f"{sweep.name}-{arm}"] = {
            "name": f"{sweep.name}-{arm}",
            "description": f"{sweep.description} (arm {arm})".strip(),
            "program": sweep.program,
            "method": "grid",
            **({"metric": sweep.metric} if sweep.metric else {}),
            "parameters": parameters,
            "command": ["${env}", "${interpreter}", "${program}", "--track", "--wandb-group", sweep.name,
                        *([] if "exp-name" in {**fixed, **settings} or "exp-name" in parameters else
                          ["--exp-name", arm]),
                        "${args_no_boolean_flags}"],  # --flag=value, and true booleans as bare --flag (tyro)
        }
    return configs


def _wandb_parameter(flag: str, value: Any) -> tuple[str, dict[str, Any]]:
    """One fixed flag as a W&B sweep parameter. W&B's ${args_no_boolean_flags} passes a true boolean as a bare
    --flag and drops a false one, so a false boolean is given as its tyro negation set true (--no-flag, nested
    --optim.no-agr); a custom optimizer's options mapping as its JSON text."""
    if isinstance(value, bool):
        prefix, dot, leaf = flag.rpartition(".")
        return (flag if value else f"{prefix}{dot}no-{leaf}"), {"value": True}
    return flag, {"value": json.dumps(value) if isinstance(value, dict) else value}


def filter_runs(runs: list[RunSpec], arms: tuple[str, ...] = (), seeds: tuple[int, ...] = ()) -> list[RunSpec]:
    known_arms = {run.arm for run in runs}
    unknown = set(arms) - known_arms
    if unknown:
        raise SweepConfigError(f"unknown arm(s) {sorted(unknown)} (allowed: {', '.join(sorted(known_arms))})")
    unknown_seeds = set(seeds) - {run.seed for run in runs}
    if unknown_seeds:
        raise SweepConfigError(f"unknown seed(s) {sorted(unknown_seeds)} (allowed: "
                               f"{', '.join(map(str, sorted({run.seed for run in runs})))})")
    selected = [run for run in runs if (not arms or run.arm in arms) and (not seeds or run.seed in seeds)]
    if not selected:
        raise SweepConfigError(f"no run of arm(s) {', '.join(arms)} has seed(s) {', '.join(map(str, seeds))}")
    return selected


def override_flag(runs: list[RunSpec], flag: str, value: Any, agent: AgentEntry) -> list[RunSpec]:
    """Set `flag` to `value` in every run (e.g. a smaller total-timesteps for a quick version), each run checked again
    by the agent (SweepConfigError naming the first it refuses, e.g. a budget below learning-starts)."""
    changed = [dataclasses.replace(run, flags=tuple({**dict(run.flags), flag: value}.items())) for run in runs]
    for run in changed:
        try:
            check_run_arguments(agent, run)
        except ValueError as error:
            raise SweepConfigError(f"--{flag} {value}: run {run.name}: {error}") from None
    return changed
