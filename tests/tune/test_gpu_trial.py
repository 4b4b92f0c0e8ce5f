"""The ``--gpus-per-trial 1`` path on a machine without a GPU.

A Ray of its own (a subprocess) declares one logical GPU, so Tune schedules a
trial that asks for ``gpu: 1``; Ray sets the trial's CUDA_VISIBLE_DEVICES, torch
finds no CUDA device and the trial trains on the CPU. On a GPU node the same
trial trains on the GPU (``device`` resolves to cuda, AMP on).
"""

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
import ray
from tune.tuner import run_sweep

ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
res = run_sweep("deepsets", sys.argv[1], sys.argv[2], num_samples=1, cpus_per_trial=1, gpus_per_trial=1,
                search="random", scheduler="fifo", epochs=1, tiny=True,
                spec_overrides={"set_size": 200, "sets_per_point": 8})
t = res.trials[0]
print(json.dumps({"status": t["status"], "epochs": t["epochs"], "gpus": res.settings["gpus_per_trial"],
                  "assigned": t["result"].metrics["gpus"], "cuda": t["result"].metrics["cuda"]}))
"""


def test_a_trial_asking_for_one_gpu_is_scheduled_and_trains(tiny_dataset, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_dataset), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "TERMINATED" and out["epochs"] == 1 and out["gpus"] == 1
    assert out["assigned"] == 1.0  # Ray gave the trial the GPU it asked for
    assert out["cuda"] == 0.0  # no device here: it trained on the CPU
