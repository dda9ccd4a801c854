"""The benchmark scripts run end to end on tiny settings and write their JSON (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script, *args):
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_mnist_speed_benchmark(mnist_dir, tmp_path):
    r = run("mnist_speed.py", "--data-dir", mnist_dir, "--device", "cpu", "--epochs", "1", "--train-limit", "1000",
            "--tuned-batch", "256", "--no-compile", "--out-dir", tmp_path)  # test_training checks torch.compile
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


def test_roofline_benchmark(tmp_path):
    r = run("roofline.py", "--device", "cpu", "--nets", "mlp-30x2", "--batch-sizes", "64", "--rounds", "1",
            "--steps", "3", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "roofline-cpu.json").read_text())
    assert "avx512_bf16" in res["cpu"]["flags"] and res["matmul_gflops"]["fp32"] > 0
    row = res["rows"][0]
    assert row["arch"] == "mlp-30x2" and row["step_over_floor"]["median"] > 0 and row["epoch_seconds"] > 0
    assert {r["path"] for r in res["rows"]} == {"fused", "autograd"}


def test_variants_are_canonical_idx_that_dk_reads(mnist_dir, tmp_path):
    sys.path.insert(0, str(BENCH))
    from variants import PERMUTATION, build, write_idx

    from darkknowledge.data import load_mnist

    plain = load_mnist(mnist_dir)
    inverted = load_mnist(write_idx(tmp_path / "inv", build("inverted", mnist_dir)))
    assert torch.allclose(inverted.x_test[:100], 1 - plain.x_test[:100], atol=1e-6)
    assert torch.equal(inverted.y_train, plain.y_train)
    remapped = build("remapped", mnist_dir)
    assert (remapped["y_test"] == np.asarray(PERMUTATION)[plain.y_test.numpy()]).all()
    rotated = build("rotated", mnist_dir)
    assert rotated["x_train"].shape == (60000, 28, 28) and rotated["x_train"].dtype == np.uint8
    assert not (rotated["x_train"][:100] == (plain.x_train[:100] * 255).round().numpy()).all()


def test_clipping_benchmark(mnist_dir, tmp_path):
    out = tmp_path / "clip.json"
    r = run("clipping.py", "--mnist", mnist_dir, "--variants", "inverted", "--seeds", "1", "--teacher-epochs", "1",
            "--student-epochs", "1", "--train-limit", "1500", "--val-size", "300", "--no-progress", "--out", out)
    assert r.returncode == 0, r.stderr
    run_ = json.loads(out.read_text())["runs"][0]
    assert run_["variant"] == "inverted" and run_["seed"] == 0
    for k in ("teacher", "student", "distilled_default", "distilled_no_clip"):
        assert run_[k]["diverged"] or run_[k]["test_errors"] >= 0
    assert run_["distilled_no_clip"].get("clipped_steps", 0) == 0  # the "off" run records norms, clips nothing


def test_cifar_derived_28x28_sets_are_idx_files_that_dk_reads(cifar_dir, tmp_path):
    from variants import build, write_idx

    from darkknowledge.data import load_cifar, load_mnist

    a = build("cifar100-grey", cifar_dir=cifar_dir)
    d = load_mnist(write_idx(tmp_path / "c100", a))
    assert d.x_train.shape == (25000, 28, 28) and d.x_test.shape == (5000, 28, 28)
    assert torch.bincount(d.y_train).tolist() == [2500] * 10 and torch.bincount(d.y_test).tolist() == [500] * 10
    assert len(set(d.y_train[:1000].tolist())) == 10  # shuffled: a prefix (the smoke scale's) has every class
    grey = build("cifar10-grey", cifar_dir=cifar_dir)
    c10 = load_cifar(cifar_dir)
    assert grey["x_test"].shape == (10000, 28, 28) and grey["x_test"].dtype == np.uint8
    assert sorted(grey["y_test"].tolist()) == sorted(c10.y_test.tolist())
    # Luma of the mean image, down-sized: close to the colour images' mean over channels.
    assert abs(grey["x_test"].mean() - c10.x_test.float().mean().item()) < 3
    with pytest.raises(ValueError, match="built from CIFAR"):
        build("cifar10-grey", mnist_dir=tmp_path)


def test_robustness_runs_the_reproduction_on_data_it_never_saw(mnist_dir, cifar_dir, tmp_path):
    out, work = tmp_path / "rob.json", tmp_path / "work"
    args = ("--mnist", mnist_dir, "--cifar", cifar_dir, "--sets", "cifar100-grey", "--scale", "smoke",
            "--work", work, "--out", out)
    r = run("robustness.py", *args)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(out.read_text())["sets"]
    assert row["set"] == "cifar100-grey" and len(row["seeds"]) == 1 and "| cifar100-grey |" in r.stdout
    s0 = row["seeds"][0]
    assert s0["teacher_beats_student"] == (s0["teacher"] < s0["student"])
    assert row["ordering_held_on_every_seed"] == (s0["teacher_beats_student"] and s0["distilled_beats_student"])
    (on_test,) = [c for c in row["teacher_check"] if c["split"] == "test"]
    assert on_test["teacher_errors"] == [s0["teacher"]] and row["chosen"]["teacher"] in ("paper", "none")
    assert f"{row['chosen']['teacher']} teacher, T " in r.stdout
    again = run("robustness.py", *args, "--resume")  # every stage is done: nothing trains again
    assert again.returncode == 0 and json.loads(out.read_text())["sets"][0]["seeds"] == row["seeds"]
    # its wall is the reproduction's over both calls, not the resumed call's few seconds
    assert json.loads(out.read_text())["sets"][0]["wall_seconds"] >= row["wall_seconds"] > 0
    refused = run("robustness.py", *args)  # neither --resume nor --overwrite: the finished run is kept
    assert refused.returncode != 0 and "--resume" in refused.stderr


def test_speedup_benchmark(mnist_dir, tmp_path):
    r = run("speedup.py", "--data-dir", mnist_dir, "--device", "cpu", "--epochs", "1", "--train-limit", "1500",
            "--val-size", "300", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "speedup-cpu.json").read_text())
    assert {row["role"] for row in res["rows"]} == {"teacher", "distilled"}
    assert all(row["speedup"] > 0 and row["before"]["test_errors"] >= 0 for row in res["rows"])


def test_precision_benchmark(mnist_dir, tmp_path):
    r = run("precision.py", "--data-dir", mnist_dir, "--device", "cpu", "--seeds", "2", "--teacher-epochs", "1",
            "--student-epochs", "1", "--train-limit", "1500", "--val-size", "300", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "precision-cpu.json").read_text())
    assert {(row["role"], row["precision"]) for row in res["rows"]} == {
        (role, p) for role in ("teacher", "distilled") for p in ("fp32", "bf16")}
    assert len(res["rows"]) == 8 and "test_difference_bf16_minus_fp32" in res["summary"]["distilled"]


def test_combine_speed_benchmark(tmp_path):
    r = run("combine_speed.py", "--device", "cpu", "--examples", "300", "--specialists", "10", "--top-n", "2",
            "--repeats", "2", "--scipy-sample", "5", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "combine-speed-cpu.json").read_text())
    (row,) = res["rows"]
    assert row["specialists"] == 10 and row["classes"] == 100 and row["examples_per_second_median"] > 0
    assert row["max_abs_diff_to_tight_solve"] < 1e-4 and row["scipy_examples_per_second"] > 0


def test_time_to_accuracy_benchmark_side_by_side_and_resumable(cifar_dir, tmp_path):
    out = tmp_path / "t2a.json"
    args = ("--data-dir", cifar_dir, "--archs", "airnet-8-16-16", "resnet-s-w4", "--epochs", "1", "2",
            "--train-limit", "600", "--val-size", "100", "--out", out, "--test-limit", "500")
    r = run("time_to_accuracy.py", *args)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert {(row["arch"], row["epochs"]) for row in res["runs"]} == {
        ("airnet-8-16-16", 1), ("airnet-8-16-16", 2), ("resnet-s-w4", 1), ("resnet-s-w4", 2)}
    assert res["conv_gflops"]["fp32"] > 0 and res["cpu"]["flags"] and res["train_size"] == res["test_size"] == 500
    assert all(len(row["curve"]) == row["epochs"] and 0 <= row["test_accuracy_tta"] <= 1 for row in res["runs"])
    assert set(res["convergence"]["airnet-8-16-16"]["gains"]) == {"1->2"}
    from PIL import Image

    assert Image.open(out.with_suffix(".png")).size[0] > 500  # the curves, drawn beside the JSON
    out.with_suffix(".png").unlink()
    redraw = run("time_to_accuracy.py", "--plot-only", "--out", out)
    assert redraw.returncode == 0 and out.with_suffix(".png").exists()
    again = run("time_to_accuracy.py", *args, "--resume")  # every run is there already: nothing trains
    assert again.returncode == 0 and len(json.loads(out.read_text())["runs"]) == 4
    assert "epochs seed" not in again.stdout
    variant = "lookahead=true,alternate_flips=true"  # beside base: only the new variant trains
    more = run("time_to_accuracy.py", *args[:2], "--archs", "airnet-8-16-16", "--epochs", "1", *args[8:],
               "--variants", "base", variant, "--resume", "--save", tmp_path / "nets")
    assert more.returncode == 0, more.stderr
    res = json.loads(out.read_text())
    assert len(res["runs"]) == 5 and [v["variant"] for v in res["variants"]] == [variant]
    assert res["variants"][0]["seeds"] == [0] and "vs base" in more.stdout
    # --save keeps the run's net (the new variant's only: the others ran before), a checkpoint dk reads
    from darkknowledge.checkpoint import load_checkpoint
    saved = [p.name for p in (tmp_path / "nets").iterdir()]
    assert saved == ["airnet-8-16-16-e1-s0-lookahead-true_alternate_flips-true"]
    _, meta, _ = load_checkpoint(tmp_path / "nets" / saved[0])
    assert meta["arch"] == "airnet-8-16-16" and meta["epoch"] == 1
    wrong = run("time_to_accuracy.py", *args, "--variants", "lookahead=maybe")
    assert wrong.returncode != 0 and "'lookahead' must be bool" in wrong.stderr
    bad = run("time_to_accuracy.py", "--data-dir", cifar_dir, "--archs", "vgg-16", "--out", tmp_path / "bad.json")
    assert bad.returncode != 0 and "no recipe for 'vgg-16'" in bad.stderr and not (tmp_path / "bad.json").exists()


def test_cifar_variants_are_cifar10_pickles_that_dk_reads(cifar_dir, tmp_path):
    from darkknowledge.data import load_cifar

    r = run("cifar_variants.py", "--data-dir", cifar_dir, "--variant", "cifar100-10", "--out", tmp_path / "v")
    assert r.returncode == 0, r.stderr
    d = load_cifar(tmp_path / "v", "cifar10")
    assert d.x_train.shape == (5000, 3, 32, 32) and len(d.y_test) == 1000 and len(set(d.class_names)) == 10
    assert torch.bincount(d.y_train, minlength=10).tolist() == [500] * 10
    r = run("cifar_variants.py", "--data-dir", cifar_dir, "--variant", "inverted", "--out", tmp_path / "i")
    assert r.returncode == 0, r.stderr
    inv, orig = load_cifar(tmp_path / "i", "cifar10"), load_cifar(cifar_dir, "cifar10")
    assert torch.equal(inv.x_test[:5, 0], 255 - orig.x_test[:5, 1]) and not torch.equal(inv.y_test, orig.y_test)
    assert inv.class_names[int(inv.y_test[0])] == orig.class_names[int(orig.y_test[0])]  # names follow the labels


def test_cifar10_tuning_runs_the_recipe_as_the_reproduction_scales_it(cifar_dir, tmp_path):
    # One tuning line per run, on the scale's validation split, with the reproduction's own config: the peak lr
    # scaled with the scale's batch (section 6: batch 64), unless --set gives another batch (scaled too) or lr.
    from darkknowledge.experiments import cifar10

    out = tmp_path / "tuning.jsonl"
    sc = cifar10.SCALES["smoke"]
    for role, extra in (("member", ()), ("hard_small", ("--set", "epochs=1")),
                        ("member", ("--set", "epochs=1", "batch_size=64"))):
        r = run("cifar10_tuning.py", "--data-dir", cifar_dir, "--scale", "smoke", "--role", role, "--tag", role,
                "--out", out, *extra)
        assert r.returncode == 0, r.stderr
    member, small, other = [json.loads(line) for line in out.read_text().splitlines()]
    want = cifar10.scaled(cifar10.MEMBER, sc, sc.member_epochs, 0, "cpu")
    assert (member["config"]["lr"], member["config"]["batch_size"]) == (want.lr, want.batch_size)
    assert member["config"]["arch"] == sc.arch and member["val_size"] == sc.val_size
    small_lr = cifar10.scaled(cifar10.MEMBER, sc, 1, 0, "cpu", cifar10.SMALL_BATCH).lr
    assert small["config"]["batch_size"] == cifar10.SMALL_BATCH and small["config"]["lr"] == pytest.approx(small_lr)
    assert other["config"]["lr"] == pytest.approx(want.lr * 64 / want.batch_size)
