"""`dk reproduce cifar10` at smoke scale on real CIFAR-10: every stage, the results contract, the plot."""

import json

import pytest

from conftest import dk, run_dk

EXPERIMENTS = {"single", "ensemble", "ensemble_geometric", "distilled_from_ensemble", "distilled_from_geometric",
               "gain_kept_percent", "hard_3pct", "soft_3pct", "hard_100pct", "gap_recovered_percent", "single_long",
               "single_tta", "ensemble_tta", "distilled_from_ensemble_tta", "gain_kept_tta_percent"}


@pytest.fixture(scope="module")
def smoke(cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("c10") / "run"
    r = run_dk("reproduce", "cifar10", "--scale", "smoke", "--device", "cpu", "--data-dir", cifar_dir, "--out", out,
               "--no-progress", timeout=900)
    return r, out


def test_smoke_reproduction_writes_the_results_contract(smoke):
    r, out = smoke
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    rows = {row["experiment"]: row for row in res["rows"]}
    assert EXPERIMENTS <= set(rows)
    for name in EXPERIMENTS:
        row = rows[name]
        assert row["status"] == "done", (name, row)
        assert {"metric", "paper", "mean", "std", "seeds", "values", "seconds"} <= set(row)
    for name in ("single", "ensemble", "distilled_from_ensemble", "hard_3pct", "soft_3pct", "single_long",
                 "single_tta", "ensemble_tta", "distilled_from_ensemble_tta"):
        assert 0 <= rows[name]["mean"] <= 100
    # The students train twice the members' epochs: the gain kept is measured against the equal-budget single net.
    assert "equal-budget" in rows["gain_kept_percent"]["note"]
    long = json.loads((out / "stages" / "single-long__s0.json").read_text())["result"]
    assert long["epochs"] == 2 and long["tta"] == 1
    assert res["stages_done"] == res["stages_total"] and res["test_size"] == 10_000
    assert {s["temperature"] for s in res["temperature_selection"]} == {2.0, 5.0}
    tc = res["teacher_cost"]
    assert tc["bank_seconds"] > 0 and tc["cache_hits"] >= 1  # the students drew on the bank, not the members
    soft = json.loads((out / "stages" / "soft3__s0.json").read_text())["result"]
    assert soft["views"] == 4 and soft["transfer_size"] == res["curves_3pct"]["soft3/s0"]["train_size"]
    small = res["temperature_selection_3pct"]  # the soft 3% run's T, chosen on validation
    assert {s["temperature"] for s in small} == {2.0, 5.0} and soft["mixup"] == 1.0
    assert soft["temperature"] == min(small, key=lambda s: (s["val_errors"], s["temperature"]))["temperature"]
    assert (out / "results.md").read_text().count("|") > 50 and (out / "small_data.png").stat().st_size > 1000
    assert "gap_recovered_percent" in r.stdout and "Traceback" not in r.stderr
    (check,) = res["teacher_check"]  # the ensemble against each member, on the validation split
    ens = res["ensemble"]
    assert check["split"] == "validation" and check["size"] == ens["val_size"] == res["scale_config"]["val_size"]
    assert check["baseline_errors"] == ens["val_members"] and set(check["teacher_errors"]) == {ens["val_arithmetic"]}
    assert check["teacher_better"] == (check["warning"] is None)


def test_resume_of_a_finished_reproduction_runs_nothing(smoke, cifar_dir):
    _, out = smoke
    r = dk("reproduce", "cifar10", "--scale", "smoke", "--device", "cpu", "--data-dir", cifar_dir, "--out", out,
               "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resuming: 12 of 12 stages already done" in r.stderr


def test_reproduce_cifar10_refuses_a_directory_without_cifar(tmp_path):
    r = dk("reproduce", "cifar10", "--scale", "smoke", "--data-dir", tmp_path, "--out", tmp_path / "o")
    assert r.returncode == 2 and "batches.meta not found" in r.stderr and "Traceback" not in r.stderr


def test_the_per_epoch_test_sample_spans_every_class_of_a_class_ordered_split():
    from types import SimpleNamespace

    import torch

    from darkknowledge.experiments.cifar10 import CURVE, _curve

    y = torch.arange(10).repeat_interleave(1000)  # stored class by class, as ../shared's CIFAR is
    x, y_sample = _curve(SimpleNamespace(x_test=torch.arange(10_000), y_test=y))
    counts = torch.bincount(y_sample, minlength=10)
    assert len(y_sample) == CURVE and torch.equal(y[x], y_sample)
    assert counts.min() > 0.7 * CURVE / 10 and counts.max() < 1.3 * CURVE / 10


def test_the_teacher_check_of_a_run_from_before_it_uses_the_test_split(smoke):
    from darkknowledge.experiments import cifar10
    from darkknowledge.experiments.runner import read_records

    _, out = smoke
    sc = cifar10.SCALES["smoke"]
    stages = cifar10.build_stages(sc, 1, {"scale": sc})
    records = read_records(out, stages)
    old = records["ensemble"]["result"]
    for key in ("val_members", "val_arithmetic", "val_size"):  # what an ensemble stage recorded before the check
        old.pop(key)
    (check,) = cifar10.summarise(stages, records, sc, 1)["teacher_check"]
    members = [records[f"member/m{i}"]["result"]["test_errors"] for i in range(sc.members)]
    assert check["split"] == "test" and check["baseline_errors"] == members
    assert check["teacher_errors"] == [old["arithmetic"]] * sc.members and "predates" in check["note"]


def test_generality_summary_reads_a_reproduction(smoke, tmp_path):
    # benchmarks/cifar_generality.py: per seed, the orderings the issue asks of unseen data sets, from results.json
    import subprocess
    import sys
    from pathlib import Path

    _, out = smoke
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "cifar_generality.py"
    r = subprocess.run([sys.executable, str(script), f"smoke={out}", "--out", str(tmp_path / "g.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    row = json.loads((tmp_path / "g.json").read_text())["sets"][0]
    res = json.loads((out / "results.json").read_text())
    single = next(x for x in res["rows"] if x["experiment"] == "single")["values"]
    assert row["set"] == "smoke" and row["single_mean"] == pytest.approx(sum(single) / len(single))
    assert row["distilled_above_single_every_seed"] == all(s["distilled"] > row["single_mean"] for s in row["seeds"])
    assert "| smoke |" in r.stdout
    bad = subprocess.run([sys.executable, str(script), f"x={tmp_path / 'none'}"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no results.json" in bad.stderr


def test_fidelity_of_the_students_to_their_ensemble(smoke, cifar_dir, tmp_path):
    # benchmarks/fidelity.py: agreement and KL of members and distilled students with the ensemble, per split
    import subprocess
    import sys
    from pathlib import Path

    _, out = smoke
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "fidelity.py"
    r = subprocess.run([sys.executable, str(script), "--run", str(out), "--data-dir", str(cifar_dir), "--scale",
                        "smoke", "--out", str(tmp_path / "f.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "f.json").read_text())
    assert res["sizes"] == {"transfer": 1000, "validation": 200, "test": 10000}
    ens = [x for x in res["rows"] if x["net"] == "ensemble"]
    assert all(x["agreement_percent"] == 100 and x["kl_nats"] == 0 for x in ens)
    acc = {x["split"]: x["accuracy_percent"] for x in ens}
    summary = json.loads((out / "results.json").read_text())
    ensemble = next(x for x in summary["rows"] if x["experiment"] == "ensemble")["values"][0]
    assert acc["test"] == pytest.approx(ensemble, abs=0.01)  # the same ensemble the reproduction measured
    students = [x for x in res["rows"] if x["net"].startswith("distilled")]
    assert len(students) == 3 and all(0 <= x["agreement_percent"] <= 100 and x["kl_nats"] >= 0 for x in students)
    bad = subprocess.run([sys.executable, str(script), "--run", str(tmp_path), "--data-dir", str(cifar_dir)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "needs a finished dk reproduce cifar10 run" in bad.stderr
    assert "Traceback" not in bad.stderr
