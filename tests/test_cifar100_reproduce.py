"""`dk reproduce cifar100` at smoke scale on real CIFAR-100: every stage, the results contract, the clusters."""

import json

import pytest

from conftest import dk, run_dk

EXPERIMENTS = {"generalist", "combined", "distilled_back", "covered_by_0", "combine_examples_per_second",
               "clusters_ari_superclasses", "soft_targets_for_specialists_gain_points"}


@pytest.fixture(scope="module")
def smoke(cifar_dir, tmp_path_factory):
    if not (cifar_dir / "cifar-100-python").is_dir():
        pytest.skip("real CIFAR-100 not laid out: `python ../shared/tools/datasets.py install DIR --only cifar100` "
                    "(.ci/run does this)")
    out = tmp_path_factory.mktemp("c100") / "run"
    r = run_dk("reproduce", "cifar100", "--scale", "smoke", "--device", "cpu", "--data-dir", cifar_dir, "--out", out,
               "--no-progress", timeout=900)
    return r, out


def test_smoke_reproduction_writes_the_results_contract(smoke):
    r, out = smoke
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    rows = {row["experiment"]: row for row in res["rows"]}
    assert EXPERIMENTS <= set(rows), set(rows)
    for name in EXPERIMENTS:
        assert rows[name]["status"] == "done", (name, rows[name])
        assert {"metric", "paper", "mean", "std", "seeds", "values", "seconds"} <= set(rows[name])
    assert res["stages_done"] == res["stages_total"]
    for name in ("generalist", "combined", "distilled_back"):
        assert 0 <= rows[name]["mean"] <= 100
    # Table 4: every test example counted once, by how many specialists cover its true class.
    assert sum(t["examples"] for t in res["table4"]) == 10_000
    clusters = json.loads((out / "clusters" / "s0.json").read_text())
    assert len(clusters["subsets"]) == 3 and all(2 <= len(s["classes"]) <= 8 for s in clusters["subsets"])
    assert all(len(s["names"]) == len(s["classes"]) for s in clusters["subsets"])  # with CIFAR-100's class names
    combine = res["combine"]["combine/s0"]
    assert combine["top_n"] in (1, 2, 3) and combine["combine_examples_per_second"] > 0
    assert (out / "clusters.png").stat().st_size > 1000 and (out / "results.md").read_text().count("|") > 40
    (check,) = res["teacher_check"]  # the combination (distilled back) against the generalist, on validation
    val = res["scale_config"]["val_size"]
    assert check["split"] == "validation" and check["row"] == "combined"
    stage = json.loads((out / "stages" / "combine__s0.json").read_text())["result"]
    assert check["baseline_errors"] == [round(val * (1 - stage["val_generalist_accuracy"]))]
    assert check["teacher_better"] == (check["warning"] is None)
    assert "Traceback" not in r.stderr


def test_resume_of_a_finished_reproduction_runs_nothing(smoke, cifar_dir):
    _, out = smoke
    r = dk("reproduce", "cifar100", "--scale", "smoke", "--device", "cpu", "--data-dir", cifar_dir, "--out", out,
               "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resuming: 11 of 11 stages already done" in r.stderr


def test_reproduce_cifar100_refuses_cifar10(tmp_path, cifar_dir):
    import shutil

    d = tmp_path / "only10"
    d.mkdir()
    (d / "cifar-10-batches-py").symlink_to(cifar_dir / "cifar-10-batches-py")
    r = dk("reproduce", "cifar100", "--scale", "smoke", "--data-dir", d, "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cifar-100" in r.stderr.lower() and not (tmp_path / "o").exists()
    shutil.rmtree(d)
