"""`dk reproduce mnist` at smoke scale on real MNIST: the results contract, failures, kills and resumes."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from conftest import dk, run_dk

from darkknowledge import cli
from darkknowledge.experiments import mnist
from darkknowledge.experiments.report import reproduce

REQUIRED = {"teacher", "student", "distilled", "omit3", "omit3_bias_fixed", "only78", "only78_bias_fixed"}
SMOKE = ["reproduce", "mnist", "--scale", "smoke", "--device", "cpu", "--no-progress"]
# Smaller than smoke, for the in-process runs: every stage kind, a third of the images, one sweep point. The scale
# travels with each stage, so worker processes run it too.
TINY = replace(mnist.SCALES["smoke"], train_limit=1000, val_size=200, sweep_temperatures=(20.0,))
TINY_EXPERIMENT = replace(mnist.EXPERIMENT, scales={"tiny": TINY})


def numbers(res):
    """Everything measured in a results.json, without timings."""
    return ({r["experiment"]: r["values"] for r in res["rows"] + res["beyond_paper_rows"]}, res["sweep"],
            res["logit_matching"], res["bias_offsets"])


def _stages_done(path):
    try:
        return json.loads(path.read_text())["stages_done"]
    except (OSError, ValueError):  # not written yet (it is replaced atomically, never torn)
        return 0


@pytest.fixture(scope="module")
def reference(mnist_dir, tmp_path_factory):
    """An uninterrupted sequential run: one seed, every stage."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_dk(*SMOKE, "--data-dir", mnist_dir, "--out", out, timeout=600)
    assert r.returncode == 0, r.stderr
    return out, r, json.loads((out / "results.json").read_text())


def test_results_contract(reference):
    out, r, res = reference
    assert isinstance(res["hardware"], str) and isinstance(res["commit"], str) and res["workers"] == 1
    rows = {row["experiment"]: row for row in res["rows"]}
    assert REQUIRED <= set(rows) and rows["teacher"]["paper"] == 67
    for row in rows.values():
        assert row["metric"] in ("test_errors", "test_error_percent") and row["status"] == "done"
        assert all(isinstance(row[k], (int, float)) for k in ("paper", "mean", "std", "seconds"))
        assert row["seeds"] == 1 and len(row["values"]) == 1
    assert rows["omit3_errors_on_3"]["mean"] <= rows["omit3"]["mean"]  # errors on 3s are part of all errors
    assert len(res["bias_offsets"]["omit3"]["validation_fitted"]) == 1
    assert {s["width"] for s in res["sweep"]} == {30} and len(res["logit_matching"]) == 2
    # Each width's T chosen on validation (the sweep's students learn without it), test errors beside it.
    (chosen,) = res["sweep_chosen"]
    best = min(res["sweep"], key=lambda s: (s["val_errors"], s["temperature"]))
    assert chosen == {"width": 30, "temperature": best["temperature"], "val_errors": best["val_errors"],
                      "test_errors": best["test_errors"]}
    assert f"Width 30: T = {best['temperature']:g} chosen on validation" in (out / "results.md").read_text()
    sc = mnist.SCALES["smoke"]
    for s in res["sweep"]:
        record = json.loads((out / "stages" / f"sweep__w30-T{s['temperature']:g}.json").read_text())["result"]
        assert record["transfer_size"] == sc.train_limit - sc.val_size
    assert res["stages_done"] == res["stages_total"] == len(res["stages"]) == 15
    assert "| teacher | test_errors | 67 |" in (out / "results.md").read_text()
    for png in ("sweep.png", "bias_fix.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "only78_bias_fixed" in r.stdout and "15/15 stages done" in r.stdout
    assert (out / "teachers" / "seed0" / "model.safetensors").is_file()
    assert len(list((out / "stages").glob("*.json"))) == 15
    beyond = res["beyond_paper_rows"]
    assert [b["experiment"] for b in beyond] == ["distilled_jittered_transfer"] and beyond[0]["status"] == "done"
    assert beyond[0]["compared_with"] == "distilled" and "Beyond the paper" in (out / "results.md").read_text()
    val_check, check = res["teacher_check"]
    assert check["row"] == "teacher" and check["split"] == "test" and check["size"] == 10_000
    assert check["teacher_errors"] == rows["teacher"]["values"] and check["baseline_errors"] == rows["student"]["values"]
    assert check["teacher_better"] == (check["warning"] is None)
    assert (check["teacher_better"] and val_check["teacher_better"]) == ("warning" not in rows["teacher"])
    assert "Teacher check" in (out / "results.md").read_text()
    # What the validation split chose: the option (and the T, hard weight pair) with the fewest validation
    # errors, used by every seed's teacher (and distilled students); the validation teacher check compares it
    # with a hard-label student trained on the same images.
    teacher, distill = res["choices"]["teacher"], res["choices"]["distill"]
    assert [o["option"] for o in teacher["options"]] == ["paper", "none"]
    best = min(teacher["options"], key=lambda o: o["val_errors"])
    assert teacher["chosen"] == best["option"] and all(o["val_size"] == 500 for o in teacher["options"])
    assert val_check["split"] == "validation" and val_check["size"] == 500
    assert val_check["teacher_errors"] == [best["val_errors"]] and val_check["baseline_errors"] == [
        teacher["student_val_errors"]]
    assert [(g["temperature"], g["hard_weight"]) for g in distill["grid"]] == [(2.5, 0.1), (20.0, 0.1)]
    pick = min(distill["grid"], key=lambda g: g["val_errors"])
    assert distill["chosen"] == {"temperature": pick["temperature"], "hard_weight": pick["hard_weight"]}
    stage = {n: json.loads((out / "stages" / f"{n}.json").read_text())["result"]
             for n in ("teacher__s0", "distilled__s0", "omit3__s0")}
    assert stage["teacher__s0"]["option"] == teacher["chosen"]
    assert all(stage[n]["temperature"] == pick["temperature"] for n in ("distilled__s0", "omit3__s0"))
    assert "Chosen on the validation split" in (out / "results.md").read_text()


def test_killed_run_resumes_to_the_same_numbers(reference, mnist_dir, tmp_path):
    """SIGKILL a real run after its third stage, resume it, and compare every number with the reference."""
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "darkknowledge", *SMOKE, "--data-dir", str(mnist_dir), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _stages_done(out / "results.json") < 3:
        assert time.time() < deadline and proc.poll() is None, "run ended before its third stage"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    partial = json.loads((out / "results.json").read_text())  # written after each stage: never lost
    assert 3 <= partial["stages_done"] < 15
    assert {r["status"] for r in partial["rows"]} <= {"done", "pending"}

    again = run_dk(*SMOKE, "--data-dir", mnist_dir, "--out", out)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently overwritten
    r = run_dk(*SMOKE, "--data-dir", mnist_dir, "--out", out, "--resume", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming:" in r.stderr
    res = json.loads((out / "results.json").read_text())
    assert numbers(res) == numbers(reference[2])
    first, resumed = res["invocations"]  # the killed run and its resume, each with the machine it ran on
    assert first["hardware"] == resumed["hardware"] == res["hardware"] and first["started"] <= resumed["started"]
    # the wall time is the whole run's: the killed piece (as its last results.json had it) plus the resume
    assert first["wall_seconds"] == partial["wall_seconds"] > 0 and resumed["wall_seconds"] > 0
    assert res["wall_seconds"] == pytest.approx(first["wall_seconds"] + resumed["wall_seconds"], abs=0.11)
    assert "over 2 invocations" in (out / "results.md").read_text()


def test_a_failing_stage_is_recorded_and_the_others_still_run(mnist_dir, tmp_path, monkeypatch, capsys):
    # A distilled student that diverges (unclipped, absurd lr): its stages fail with the divergence message; the
    # rest finish, and the command exits 1 saying so. At the tiny scale, under smoke's name.
    monkeypatch.setattr(mnist, "EXPERIMENT", replace(mnist.EXPERIMENT, scales={"smoke": TINY}))
    monkeypatch.setattr(mnist, "DISTILLED", replace(mnist.DISTILLED, lr=1e9, warmup_epochs=0.0, grad_clip=0.0))
    out = tmp_path / "fail"
    code = cli.main([*SMOKE, "--data-dir", str(mnist_dir), "--out", str(out)])
    assert code == 1 and "stages failed" in capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    rows = {r["experiment"]: r for r in res["rows"]}
    assert rows["teacher"]["status"] == "done" and rows["student"]["status"] == "done"
    assert rows["distilled"]["status"] == "failed"
    # Every distillation setting tried on validation diverged too: recorded there, never chosen, and said.
    assert "every distill setting tried on the validation split diverged" in rows["distilled"]["errors"]["distilled/s0"]
    assert all(g["val_errors"] is None and "diverged" in g["diverged"] for g in res["choices"]["distill"]["grid"])
    assert "chosen" not in res["choices"]["distill"] and "| diverged |" in (out / "results.md").read_text()
    stages = {s["stage"]: s for s in res["stages"]}
    assert stages["teacher/s0"]["status"] == stages["student/s0"]["status"] == "done"
    assert stages["distilled/s0"]["status"] == "failed" and "diverged" in stages["distilled/s0"]["error"]
    assert stages["choose/distill-T20-h0.1"]["status"] == "done"  # a diverged option is an outcome, not a failure
    assert "Failed stages" in (out / "results.md").read_text()


def test_resume_refuses_another_scale(reference, mnist_dir):
    out = reference[0]
    r = dk("reproduce", "mnist", "--quick", "--data-dir", mnist_dir, "--out", out, "--resume")
    assert r.returncode == 2 and "'smoke'-scale reproduction, not 'quick'" in r.stderr


def test_reproduce_needs_data_dir(tmp_path):
    r = dk("reproduce", "mnist", "--out", tmp_path / "o")
    assert r.returncode == 2 and "needs --data-dir" in r.stderr and not (tmp_path / "o").exists()


def test_parallel_workers_run_every_stage(mnist_dir, tmp_path):
    out = tmp_path / "par"
    res = reproduce(TINY_EXPERIMENT, mnist_dir, out, scale="tiny", device="cpu", progress=False, workers=2,
                    log=lambda m: None)
    assert res["workers"] == 2 and res["stages_done"] == res["stages_total"] == 14
    assert {r["status"] for r in res["rows"] + res["beyond_paper_rows"]} == {"done"}
    assert {r["experiment"] for r in res["rows"]} == set(mnist.PAPER)


def test_a_reproduction_from_before_stages_passed_results_is_not_resumed(mnist_dir, tmp_path):
    """Its done stages' results lack the checkpoints their dependants now read: one clear error, nothing touched."""
    out = tmp_path / "old"
    (out / "stages").mkdir(parents=True)
    (out / "reproduction.json").write_text(json.dumps({"scale": "smoke", "seeds": 1}))  # no "experiment" key
    (out / "stages" / "teacher__s0.json").write_text("{}")
    r = dk(*SMOKE, "--data-dir", mnist_dir, "--out", out, "--resume")
    assert r.returncode == 2 and "started by an older darkknowledge" in r.stderr and "--overwrite" in r.stderr
    assert (out / "stages" / "teacher__s0.json").read_text() == "{}"


def test_resume_refuses_another_experiment(reference, cifar_dir):
    out = reference[0]
    r = dk("reproduce", "cifar10", "--scale", "smoke", "--data-dir", cifar_dir, "--out", out, "--resume")
    assert r.returncode == 2 and "it is a mnist reproduction, not cifar10" in r.stderr


def test_resume_into_a_directory_with_no_run_starts_one(mnist_dir, tmp_path, monkeypatch, capsys):
    # --resume on a fresh directory (what benchmarks/cpu_long.sh always passes) starts the run, recording one
    # invocation; a teacher no better than its student would be flagged on its row, in results.md and on stderr.
    monkeypatch.setattr(mnist, "EXPERIMENT", replace(mnist.EXPERIMENT, scales={"smoke": TINY}))
    out = tmp_path / "fresh"
    assert cli.main([*SMOKE, "--data-dir", str(mnist_dir), "--out", str(out), "--resume"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["invocations"]) == 1 and res["stages_done"] == res["stages_total"]
    checks = res["teacher_check"]
    rows = {r["experiment"]: r for r in res["rows"]}
    better = all(c["teacher_better"] for c in checks) and len(checks) == 2
    assert ("warning" in rows["teacher"]) == (not better)
    assert ("warning: the teacher" in capsys.readouterr().err) == (not better)


def test_the_validation_split_chooses_the_fewest_errors_within_a_standard_error_and_ties_go_earlier():
    sc = replace(mnist.SCALES["smoke"], teacher_options=("paper", "dropout", "none"), distill_temperatures=(4, 20),
                 distill_hard_weights=(0.1, 0.5))
    inputs = {"choose/teacher-paper": {"option": "paper", "val_errors": 30, "val_size": 1000},
              "choose/teacher-dropout": {"option": "dropout", "val_errors": 20, "val_size": 1000},
              "choose/teacher-none": {"option": "none", "val_errors": 20, "val_size": 1000},
              "teacher/s0": {"checkpoint": "x"}}
    assert mnist.chosen_teacher(inputs, sc) == "dropout"  # 30 is more than one standard error (4.4) above 20
    # The one-standard-error rule: within sqrt(20 x 0.98) = 4.4 of the fewest, the earliest option.
    assert mnist.chosen_teacher({**inputs, "choose/teacher-paper": {"option": "paper", "val_errors": 24,
                                                                     "val_size": 1000}}, sc) == "paper"
    assert mnist.chosen_teacher({**inputs, "choose/teacher-paper": {"option": "paper", "val_errors": 25,
                                                                     "val_size": 1000}}, sc) == "dropout"
    # With a second rung, its runs decide: the first rung's best need not be the best at full length.
    rungs = replace(sc, teacher_epochs=4, choice_teacher_epochs=2, long_choices=2)
    long = {"choose/long-teacher-1": {"rank": 1, "option": "dropout", "val_errors": 35, "val_size": 5000,
                                      "checkpoint": "d"},
            "choose/long-teacher-2": {"rank": 2, "option": "none", "val_errors": 22, "val_size": 5000,
                                      "checkpoint": "n"}}
    assert mnist.chosen_teacher({**inputs, **long}, rungs) == "none"
    assert mnist.chosen_teacher_run({**inputs, **long}, rungs)["checkpoint"] == "n"
    grid = {f"choose/distill-T{t:g}-h{h:g}": {"temperature": t, "hard_weight": h, "val_errors": e}
            for (t, h), e in zip(mnist.distill_grid(sc), (50, 41, 41, 60))}
    assert list(grid) == ["choose/distill-T4-h0.1", "choose/distill-T4-h0.5", "choose/distill-T20-h0.1",
                          "choose/distill-T20-h0.5"]
    d = mnist.chosen_distill(grid, sc)
    assert (d.temperature, d.hard_weight, d.soft_weight) == (4, 0.5, mnist.DISTILL.soft_weight)
    # Nothing to choose: the recipe's.
    plain = replace(sc, teacher_options=(), distill_temperatures=())
    assert mnist.chosen_teacher({}, plain) == "paper" and mnist.chosen_distill({}, plain) == mnist.DISTILL
    assert not [s for s in mnist.build_stages(plain, 1, {}) if s.kind.startswith("choose_")]


def test_held_out_teachers_reuse_the_choice_run_and_are_checked_on_validation(mnist_dir, tmp_path):
    # teacher_holdout: every seed's teacher learns without the validation split, so seed 0's is the chosen
    # option's choice run itself (no second training), and every seed's teacher is checked there.
    sc = replace(TINY, teacher_options=("jitter", "none"), teacher_holdout=True, sweep_widths=(),
                 matching_temperatures=())
    exp = replace(mnist.EXPERIMENT, scales={"held": sc})
    out = tmp_path / "held"
    res = reproduce(exp, mnist_dir, out, scale="held", seeds=2, device="cpu", progress=False, log=lambda m: None)
    assert res["stages_done"] == res["stages_total"]
    stages = {p.stem: json.loads(p.read_text())["result"] for p in (out / "stages").glob("*.json")}
    chosen = res["choices"]["teacher"]["chosen"]
    choice, t0, t1 = stages[f"choose__teacher-{chosen}"], stages["teacher__s0"], stages["teacher__s1"]
    assert t0["checkpoint"] == choice["checkpoint"] and t0["val_errors"] == choice["val_errors"]
    assert not (out / "teachers" / "seed0").exists() and (out / "teachers" / "seed1" / "model.safetensors").is_file()
    assert "less validation" in t1["trained_on"] and t1["val_size"] == sc.val_size
    val_check = res["teacher_check"][0]
    assert val_check["split"] == "validation" and val_check["teacher_errors"] == [t0["val_errors"], t1["val_errors"]]
    assert val_check["baseline_errors"] == [stages["choose__student"]["val_errors"]] * 2
    with pytest.raises(ValueError, match="epochs must agree"):
        replace(sc, choice_teacher_epochs=sc.teacher_epochs + 1)


def test_the_second_rung_trains_the_best_short_choices_to_full_length_and_chooses_among_them(mnist_dir, tmp_path):
    # long_choices: the first rung's best N options train again for teacher_epochs on the same split; the teacher
    # of every seed, and the distillation choices, come from the second rung's best.
    sc = replace(TINY, teacher_options=("paper", "none", "jitter"), teacher_epochs=2, choice_teacher_epochs=1,
                 long_choices=2, sweep_widths=(), matching_temperatures=(), beyond_paper_seeds=0)
    exp = replace(mnist.EXPERIMENT, scales={"rungs": sc})
    out = tmp_path / "rungs"
    res = reproduce(exp, mnist_dir, out, scale="rungs", seeds=1, device="cpu", progress=False, log=lambda m: None)
    assert res["stages_done"] == res["stages_total"]
    stages = {p.stem: json.loads(p.read_text())["result"] for p in (out / "stages").glob("*.json")}
    first = sorted(res["choices"]["teacher"]["options"],
                   key=lambda o: (o["val_errors"], sc.teacher_options.index(o["option"])))
    long = res["choices"]["teacher"]["long"]
    assert [o["option"] for o in long] == [o["option"] for o in first[:2]] and [o["rank"] for o in long] == [1, 2]
    assert all(o["epochs"] == 2 for o in long) and all(o["epochs"] == 1 for o in first)
    for o in long:
        run = stages[f"choose__long-teacher-{o['rank']}"]
        assert run["checkpoint"] == f"models/choose__teacher-long-{o['option']}"
        assert (out / run["checkpoint"] / "model.safetensors").is_file()
    fewest = min(o["val_errors"] for o in long)  # the one-standard-error rule, options in the scale's order
    close = [o["option"] for o in long if o["val_errors"] <= fewest + mnist.standard_error(fewest, sc.val_size)]
    chosen = min(close, key=sc.teacher_options.index)
    assert res["choices"]["teacher"]["chosen"] == chosen == stages["teacher__s0"]["option"]
    assert {stages[f"choose__distill-T{t:g}-h0.1"]["teacher_option"] for t in sc.distill_temperatures} == {chosen}
    assert "teacher, second rung, 2 epochs" in (out / "results.md").read_text()
    # One rung fewer on --resume: the second rung's stages run again, from their checkpoints (named by option,
    # not rank), and every teacher after them with its own checkpoint forgotten.
    kept = out / f"models/choose__teacher-long-{long[0]['option']}" / "model.json"
    before = kept.read_bytes()  # with each epoch's seconds: a run trained again would not match it
    (out / "teachers" / "seed0" / "stale.txt").write_text("forgotten with teacher/s0")
    exp.scales["rungs"] = replace(sc, long_choices=1)
    again = reproduce(exp, mnist_dir, out, scale="rungs", seeds=1, device="cpu", progress=False, resume=True,
                      log=lambda m: None)
    assert again["stages_done"] == again["stages_total"]
    rungs = again["choices"]["teacher"]
    assert rungs["long"] == long[:1] and rungs["chosen"] == long[0]["option"]
    assert "teacher/s0" in again["invocations"][-1]["ran_again"]
    assert kept.read_bytes() == before and not (out / "teachers" / "seed0" / "stale.txt").exists()
    assert (out / "teachers" / "seed0" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="must be shorter"):
        replace(sc, choice_teacher_epochs=2)


def test_a_training_limit_keeps_every_class_of_a_sorted_data_set():
    """The scale's train_limit takes a fixed, stratified subset in file order, not the first N images: on a
    data set sorted by class the first N would hold a class or two."""
    import torch

    y = torch.arange(10).repeat_interleave(600)  # sorted by class, 600 each
    keep = mnist.training_subset(y, 1000)
    assert len(keep) == 1000 and bool((keep[1:] > keep[:-1]).all())
    assert torch.bincount(y[keep], minlength=10).tolist() == [100] * 10
    assert torch.equal(keep, mnist.training_subset(y, 1000))  # fixed: every seed and stage sees the same images


def test_restricted_transfer_sets_take_as_many_steps_as_the_whole_one():
    """With restricted_same_steps the omit-3 and 7s-and-8s students' epochs grow as their transfer set shrinks."""
    import torch

    y = torch.arange(10).repeat_interleave(100)
    assert mnist.restricted_epochs(8, y, (7, 8), only=True) == 40  # 200 of 1,000 images: 5x the epochs
    assert mnist.restricted_epochs(8, y, (3,), only=False) == 9  # 900 of 1,000: ceil(8.9)
    assert mnist.restricted_epochs(8, y, (3,), only=False) >= 8
    assert mnist.SCALES["quick"].restricted_same_steps and not mnist.SCALES["full"].restricted_same_steps


def test_a_training_limit_stratifies_when_a_label_is_absent():
    """A class with no images at all (label 5 never used) must not turn stratification off."""
    import torch

    y = torch.tensor([0, 1, 2, 3, 4, 6, 7, 8, 9]).repeat_interleave(100)
    keep = mnist.training_subset(y, 450)
    assert torch.bincount(y[keep], minlength=10).tolist() == [50] * 5 + [0] + [50] * 4


def test_the_diagnosis_rereads_the_runs_students_and_offsets(reference, mnist_dir, tmp_path):
    # benchmarks/mnist_diagnosis.py: each student's fit to its teacher, and the bias fix's errors per offset on
    # validation and test; its numbers at the fitted offset are the reproduction's own.
    from pathlib import Path

    out, _, res = reference
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "mnist_diagnosis.py"
    r = subprocess.run([sys.executable, str(script), "--run", str(out), "--data-dir", str(mnist_dir), "--out",
                        str(tmp_path / "d.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    diag = json.loads((tmp_path / "d.json").read_text())
    rows = {row["experiment"]: row["values"][0] for row in res["rows"]}
    fit = {(f["net"], f["split"]): f for f in diag["fit"]}
    assert fit[("teacher", "test")]["errors"] == rows["teacher"]
    assert fit[("distilled", "test")]["errors"] == rows["distilled"] and fit[("student", "test")]["errors"] == rows["student"]
    assert all(0 <= f["agreement_percent"] <= 100 and f["kl_t1_nats"] >= 0 for f in diag["fit"] if f["net"] != "teacher")
    for b in diag["bias_fix"]:
        stage = json.loads((out / "stages" / f"{b['experiment']}__s0.json").read_text())["result"]
        assert b["fitted_offset"] == b["recorded_offset"] == stage["offset"]
        assert b["test_errors"]["fitted"] == stage["fixed_errors"] and b["test_errors_unfixed"] == stage["test_errors"]
        assert b["test_errors"]["test_optimal"] == min(b["curve"]["test_errors"]) <= b["test_errors"]["fitted"]
    assert {b["experiment"] for b in diag["bias_fix"]} == {"omit3", "only78"}
    assert (tmp_path / "d-bias.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, str(script), "--run", str(tmp_path), "--data-dir", str(mnist_dir)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no readable reproduction.json" in bad.stderr and "Traceback" not in bad.stderr
