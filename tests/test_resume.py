"""A run interrupted and resumed ends with the same parameters as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from focus_detr.engine.trainer import Trainer
from focus_detr.engine.training_checkpoint import load_resume_checkpoint
from tests.helpers import (
    final_parameters,
    max_difference,
    tiny_recipe,
    train_arguments,
    train_set,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def _recipe(**train: object):
    # trainable BatchNorm (buffers), denoising (random), warm-up and a drop inside the run
    settings: dict[str, object] = {"epochs": 3.0, "lr_drop_epochs": (2.0,), "warmup_iters": 2}
    settings.update(train)
    return tiny_recipe(model={"backbone_norm": "bn", "backbone_frozen_stages": 0}, **settings)


def _run(config, dataset, out: Path, **options) -> dict[str, torch.Tensor]:
    trainer = Trainer(config, dataset, output_dir=out, progress=False, **options)
    trainer.train()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_and_resumed_run_equals_uninterrupted(synthetic, tmp_path, workers):
    config = _recipe(num_workers=workers, checkpoint_every_iters=2)
    dataset = train_set(synthetic, config)
    full = _run(config, dataset, tmp_path / "full")
    first = _run(config, dataset, tmp_path / "split", max_iters=3)
    assert max_difference(full, first) > 0  # stopped half-way
    found = load_resume_checkpoint(tmp_path / "split")
    assert found is not None and found[1]["iteration"] == 3
    resumed = _run(config, dataset, tmp_path / "split", resume=True)
    assert max_difference(full, resumed) == 0.0
    assert torch.load(tmp_path / "split" / "last.pth", weights_only=True)["iteration"] == 6


def test_resume_falls_back_to_the_previous_checkpoint(synthetic, tmp_path):
    config = _recipe(checkpoint_every_iters=1)
    dataset = train_set(synthetic, config)
    full = _run(config, dataset, tmp_path / "full")
    _run(config, dataset, tmp_path / "split", max_iters=4)
    (tmp_path / "split" / "last.pth").write_bytes(b"truncated")  # a damaged file
    found = load_resume_checkpoint(tmp_path / "split")
    assert found is not None and found[0].name == "last_previous.pth"
    assert found[1]["iteration"] == 3
    resumed = _run(config, dataset, tmp_path / "split", resume=True)
    assert max_difference(full, resumed) == 0.0


def test_resume_refuses_another_architecture(synthetic, tmp_path):
    from focus_detr.weights.checkpoint import CheckpointError

    config = _recipe()
    dataset = train_set(synthetic, config)
    _run(config, dataset, tmp_path, max_iters=1)
    other = tiny_recipe(model={"embed_dim": 32, "backbone_norm": "bn"})
    with pytest.raises(CheckpointError, match=r"another model.*model.embed_dim: 64 -> 32"):
        Trainer(other, train_set(synthetic, other), output_dir=tmp_path, resume=True)


def _iteration_on_disk(out: Path) -> int:
    path = out / "last.pth"
    if not path.is_file():
        return -1
    try:
        return int(torch.load(path, weights_only=True)["iteration"])
    except Exception:  # replaced while reading
        return -1


def test_killed_process_resumes_to_the_same_parameters(synthetic, tmp_path):
    config = _recipe(epochs=12.0, lr_drop_epochs=(8.0,), checkpoint_every_iters=1)
    command = [
        sys.executable,
        "-m",
        "focus_detr.cli",
        *train_arguments(config, synthetic.root, tmp_path / "killed"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _iteration_on_disk(tmp_path / "killed") < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = _iteration_on_disk(tmp_path / "killed")
    assert 3 <= stopped_at < 24
    resumed = subprocess.run([*command, "--resume"], env=env, cwd=tmp_path, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert f"at iteration {stopped_at}" in resumed.stderr.decode() + resumed.stdout.decode()
    reference = _run(config, train_set(synthetic, config), tmp_path / "reference")
    assert max_difference(reference, final_parameters(tmp_path / "killed")) == 0.0
