"""The benchmark scripts run end to end on tiny settings and write their JSON (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script, *args):
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_mnist_speed_benchmark(mnist_dir, tmp_path):
    r = run("mnist_speed.py", "--data-dir", mnist_dir, "--device", "cpu", "--epochs", "1", "--train-limit", "1000",
            "--tuned-batch", "256", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "mnist-speed-cpu.json").read_text())
    assert res["train_images"] == 1000 and res["commit"] and res["hardware"]
    impls = {(row["stage"], row["impl"], row["batch_size"]) for row in res["rows"]}
    assert ("distilled", "naive", 128) in impls and ("distilled", "fast-bf16", 256) in impls
    assert all(v > 0 for k, v in res["summary"].items() if k.startswith(("speedup", "distillation_overhead")))


def test_deployment_benchmark(tmp_path):
    r = run("deployment.py", "--device", "cpu", "--repeats", "5", "--throughput-batch", "256", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "deployment-cpu.json").read_text())
    assert [row["arch"] for row in res["rows"]] == ["mlp-1200x2", "mlp-800x2", "mlp-30x2"]
    assert res["rows"][0]["parameters"] > res["rows"][1]["parameters"]
