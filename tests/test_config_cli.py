"""Config loading (unknown keys named with their file, dotted overrides) and the CLI's --help."""

import subprocess
import sys

import pytest

from adamllm_ray.cli import COMMANDS
from adamllm_ray.config import ConfigError, SynthesisConfig, load_config

GOOD = """\
source: {format: parquet, path: data/}
output: out/
synthesizer: {model: m, concurrency: 1}
"""


def test_misspelled_key_names_key_and_file(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(GOOD.replace("concurrency: 1", "concurency: 1"))
    with pytest.raises(ConfigError) as err:
        load_config(SynthesisConfig, p)
    assert "synthesizer.concurency" in str(err.value) and str(p) in str(err.value)


def test_overrides_and_types(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(GOOD)
    cfg = load_config(SynthesisConfig, p, ["synthesizer.concurrency=[1,4]", "source.limit=10"])
    assert cfg.synthesizer.concurrency == (1, 4) and cfg.source.limit == 10
    with pytest.raises(ConfigError, match="synthesizer.concurrency"):
        load_config(SynthesisConfig, p, ["synthesizer.concurrency=[4,1]"])
    with pytest.raises(ConfigError, match="missing key 'output'"):
        load_config(SynthesisConfig, None, [])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(SynthesisConfig, p, ["synthesizer.model"])


def test_cli_reports_config_errors_without_traceback(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(GOOD + "typo_key: 1\n")
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "synthesize", "--config", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "unknown key 'typo_key'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help(command):
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", command, "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and COMMANDS[command][1].split()[0] in r.stdout


def test_engine_pool_size_is_fixed_or_a_range():
    from adamllm_ray import engine
    from adamllm_ray.config import EngineConfig

    fixed = engine.processor_config(EngineConfig(model="m", concurrency=2), multimodal=True)
    assert fixed.get_concurrency() == {"min_size": 2, "max_size": 2}
    scaling = engine.processor_config(EngineConfig(model="m", concurrency=(1, 4)), multimodal=True)
    assert scaling.get_concurrency() == {"min_size": 1, "max_size": 4}


def test_unknown_placement_strategy_is_named():
    from adamllm_ray.config import TrainConfig
    from conftest import ROOT

    with pytest.raises(ConfigError, match="scaling.placement_strategy"):
        load_config(TrainConfig, ROOT / "jobs" / "train" / "tiny_cpu.yaml", ["scaling.placement_strategy=SPREAD_OUT"])
