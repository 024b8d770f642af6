"""launch/: every accelerate config is what `accelerate launch` itself would accept, and the SLURM node
launcher really starts a 2-process run (on CPU) with accelerate and with torchrun.

No GPU, no DeepSpeed here: the FSDP / DeepSpeed / multi-node configs are checked with accelerate's own
classes, through the same steps `accelerate launch --config_file X` takes before it starts workers:
`load_config_from_file` (ClusterConfig: unknown keys are errors), `_validate_launch_command` (config ->
launcher arguments), `prepare_multi_gpu_env` / `prepare_deepspeed_cmd_env` (arguments -> the environment
the workers get) and finally `FullyShardedDataParallelPlugin()` / `DeepSpeedPlugin()` built from that
environment, as the workers' Accelerator builds them (this is where a DeepSpeed JSON plus a conflicting
YAML key, or a bad FSDP value, fails).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
)

from tests.fixtures.recipe_runner import PYTHON, REPO_ROOT, free_port, read_export, recipe_env
from tests.fixtures.tiny_dataset import build_tiny_dataset

LAUNCH = REPO_ROOT / "launch"
CONFIGS = {  # file -> (distributed type, processes in total, machines)
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2, 1),
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "ddp_8gpu.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "fsdp.yaml": (DistributedType.FSDP, 8, 1),
    "fsdp_cpu_2proc.yaml": (DistributedType.FSDP, 2, 1),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 8, 1),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 8, 1),
    "multinode_2x8.yaml": (DistributedType.MULTI_GPU, 16, 2),
}


def launcher_view(config_file: Path) -> tuple:
    """(args, defaults, worker environment) exactly as `accelerate launch --config_file` computes them."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(config_file), "--main_process_port", "0", "training/train_mf.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        # What launch_command() records before it calls the DeepSpeed launcher.
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.multi_gpu or args.use_fsdp:
        env = prepare_multi_gpu_env(args)
    else:
        env = {}
    return args, defaults, env


def test_every_config_file_is_listed_here_and_in_the_readme():
    on_disk = sorted(p.name for p in (LAUNCH / "accelerate").glob("*.yaml"))
    assert on_disk == sorted(CONFIGS)
    readme = (LAUNCH / "README.md").read_text()
    for name in on_disk:
        assert f"`{name}`" in readme, f"launch/README.md does not document {name}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_loads_with_accelerates_own_classes(name):
    path = LAUNCH / "accelerate" / name
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert ClusterConfig.from_yaml_file(str(path)).to_dict() == config.to_dict()
    distributed_type, processes, machines = CONFIGS[name]
    assert ((config.distributed_type, config.num_processes, config.num_machines)
            == (distributed_type, processes, machines))
    args, _, env = launcher_view(path)
    assert args.num_processes == processes and args.num_machines == machines
    if machines > 1:  # torchrun gets one node's share
        assert (args.nnodes, args.nproc_per_node) == (str(machines), str(processes // machines))
    if env:
        assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # precision comes from the recipe config, not launch/


def test_fsdp_config_builds_the_plugin_the_workers_get(monkeypatch):
    args, defaults, env = launcher_view(LAUNCH / "accelerate" / "fsdp.yaml")
    known = {action.dest for action in launch_command_parser()._actions}
    unknown = [key for key in defaults.fsdp_config if key not in known]  # accelerate would ignore a typo silently
    assert not unknown, f"fsdp_config keys the launcher does not know: {unknown}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.transformer_cls_names_to_wrap == ["DebertaV2Layer"]
    assert plugin.cpu_ram_efficient_loading is False and plugin.activation_checkpointing is False


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_config_builds_the_plugin_the_workers_get(monkeypatch, name, stage):
    args, defaults, env = launcher_view(LAUNCH / "accelerate" / name)
    json_path = REPO_ROOT / defaults.deepspeed_config["deepspeed_config_file"]
    assert json_path.is_file()
    ds_json = json.loads(json_path.read_text())
    assert ds_json["zero_optimization"]["stage"] == stage
    # Batch sizes and accumulation come from the recipe config at prepare() ("auto"), never from launch/.
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert ds_json[key] == "auto"
    monkeypatch.chdir(REPO_ROOT)  # the YAML's JSON path is relative to the repository root
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage and plugin.deepspeed_config["zero_optimization"]["stage"] == stage
    assert plugin.zero3_init_flag is False
    if stage == 3:  # needed for accelerator.get_state_dict to gather the full weights for the export
        assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_a_mixed_precision_key_next_to_a_deepspeed_json_is_refused(monkeypatch, tmp_path):
    # Why the DeepSpeed YAMLs have no mixed_precision: accelerate refuses it next to a JSON file.
    bad = tmp_path / "bad.yaml"
    bad.write_text((LAUNCH / "accelerate" / "deepspeed_zero2.yaml").read_text() + "mixed_precision: bf16\n")
    monkeypatch.chdir(REPO_ROOT)
    _, _, env = launcher_view(bad)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="When using `deepspeed_config_file`"):
        DeepSpeedPlugin()


@pytest.mark.parametrize(("build", "layer"), [("deberta", "DebertaV2Layer"), ("qwen2", "Qwen2DecoderLayer")])
def test_fsdp_wrap_classes_exist_in_the_backbones(build, layer):
    # fsdp.yaml wraps DebertaV2Layer (difficulty); launch/README.md gives Qwen2DecoderLayer for probe / Router-R1.
    from accelerate.utils.dataclasses import get_module_class_from_name
    from transformers import DebertaV2Config, DebertaV2Model, Qwen2Config, Qwen2Model

    if build == "deberta":
        model = DebertaV2Model(DebertaV2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=32))
    else:
        model = Qwen2Model(Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=32))
    assert get_module_class_from_name(model, layer) is not None
    assert (LAUNCH / "accelerate" / "fsdp.yaml").read_text().count(layer) >= 1


@pytest.mark.parametrize("script", ["multinode_accelerate.sbatch", "multinode_torchrun.sbatch", "node_launch.sh"])
def test_slurm_scripts_parse_and_use_the_node_launcher(script):
    path = LAUNCH / "slurm" / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert os.access(path, os.X_OK)
    text = path.read_text()
    if script.endswith(".sbatch"):
        assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=8" in text and "#SBATCH --requeue" in text
        assert "srun --kill-on-bad-exit=1 --ntasks-per-node=1 launch/slurm/node_launch.sh" in text


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"), n_pairs=200)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_node_launcher_runs_a_real_two_process_training(tiny_data, tmp_path, launcher):
    # One "node" with 2 "GPUs": on this CPU machine the recipes form a 2-process gloo world.
    env = recipe_env(LAUNCHER=launcher, NNODES="1", NODE_RANK="0", GPUS_PER_NODE="2", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port()), PYTHON=PYTHON, RECIPE="training/train_mf.py",
                     CONFIG="configs/mf/tiny.yaml")
    proc = subprocess.run([str(LAUNCH / "slurm" / "node_launch.sh"), f"data.path={tiny_data}",
                           f"run.output_dir={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, _, manifest = read_export(tmp_path / "mf" / "mf-tiny" / "final")
    assert manifest["training"]["world_size"] == 2
    digests = manifest["training"]["param_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert manifest["config"]["resume"] == "auto"  # a requeued job continues its run
