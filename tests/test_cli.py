"""The real entry point, end to end, and one clear error line for each kind of bad input."""

import json

import numpy as np
import pytest
from conftest import dk, run_dk
from safetensors.torch import load_file, save_file
from test_data import fake_mnist

QUICK = ["--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "t"
    r = dk("train", "--arch", "mlp-300x2", "--out", out, *QUICK)
    assert r.returncode == 0, r.stderr
    return out


def assert_clean_error(r, *fragments, out=None):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dk: error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), "half-written output left behind"


def test_train_distill_evaluate_round_trip(teacher, tmp_path):
    meta = json.loads((teacher / "model.json").read_text())
    assert meta["arch"] == "mlp-300x2" and meta["epoch"] == 2 and len(meta["history"]) == 2
    assert json.loads((teacher / "summary.json").read_text())["results"][0]["test_size"] == 899

    recipe = tmp_path / "distill.yaml"
    recipe.write_text("arch: mlp-30x2\ntemperature: 4\nhard_weight: 0.1\nepochs: 3\n")
    out = tmp_path / "student"
    r = run_dk("distill", "--config", recipe, "--teacher", teacher, "--teacher", teacher, "--combine", "geometric",
               "--epochs", "2", "--out", out, "--cache-dir", tmp_path / "cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "distilled-mlp-30x2" in r.stdout and "test_errors" in r.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["distill_config"]["temperature"] == 4.0 and meta["epochs"] == 2  # flag beat the recipe
    assert meta["combine"] == "geometric" and len(list((tmp_path / "cache").iterdir())) == 1

    r = run_dk("evaluate", "--checkpoint", out, "--bias-fix", "3=2.5", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["bias_fix"] for row in rows] == ["none", "3=2.5"] and rows[0]["test_size"] == 899
    assert rows[0]["errors"] == sum(rows[0]["per_class_errors"])


def test_distill_with_omitted_class_and_unlabelled(teacher, tmp_path):
    r = dk("distill", "--teacher", teacher, "--omit-classes", "3", "--unlabelled", "--out", tmp_path / "s",
               "--cache-dir", "", *QUICK)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "s" / "model.json").read_text())
    assert meta["transfer_config"]["omit_classes"] == [3] and meta["transfer_config"]["unlabelled"]
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    from darkknowledge.data import load_digits

    assert summary["results"][0]["transfer_size"] == int((load_digits().y_train != 3).sum())  # every 3 is gone


def test_distill_warns_when_the_student_augments_without_a_view_bank(teacher, tmp_path):
    r = dk("distill", "--teacher", teacher, "--jitter", "1", "--flip", "--epochs", "1", "--no-progress",
           "--out", tmp_path / "plain")
    assert r.returncode == 0, r.stderr
    assert "warning: the student's jitter 1 and flips change its images" in r.stderr and "--view-bank" in r.stderr
    r = dk("distill", "--teacher", teacher, "--jitter", "1", "--flip", "--view-bank", "2", "--epochs", "1",
           "--no-progress", "--out", tmp_path / "bank")
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr  # the bank's views carry the teacher's targets on each


def test_distill_checks_its_teacher_against_a_hard_label_baseline_on_the_validation_split(tmp_path):
    val = ["--val-size", "200"]
    good, weak = tmp_path / "good", tmp_path / "weak"
    assert dk("train", "--arch", "mlp-300x2", "--out", good, *val, *QUICK).returncode == 0
    assert dk("train", "--arch", "mlp-30x2", "--lr", "1e-6", "--epochs", "1", "--out", weak, *val,
              "--no-progress").returncode == 0  # a teacher that learnt nothing
    assert json.loads((good / "model.json").read_text())["val_size"] == 200

    r = dk("distill", "--teacher", good, "--baseline", weak, "--out", tmp_path / "s1", "--cache-dir", "", *val, *QUICK)
    assert r.returncode == 0, r.stderr
    check = json.loads((tmp_path / "s1" / "summary.json").read_text())["teacher_check"]
    assert check["split"] == "validation" and check["size"] == 200 and check["teacher_better"]
    assert "warning" not in r.stderr and "teacher check (validation split, 200 images)" in r.stderr

    r = dk("distill", "--teacher", weak, "--baseline", good, "--out", tmp_path / "s2", "--cache-dir", "", *val, *QUICK)
    assert r.returncode == 0, r.stderr  # a warning, not an error: the user may know better
    assert "warning: the teacher (" in r.stderr and "not better than the hard-label baseline" in r.stderr
    assert not json.loads((tmp_path / "s2" / "summary.json").read_text())["teacher_check"]["teacher_better"]

    out = tmp_path / "s3"  # another --val-size: images the teacher learnt from could be in the validation split
    r = dk("distill", "--teacher", good, "--baseline", weak, "--out", out, "--val-size", "300", *QUICK)
    assert_clean_error(r, "--val-size 200", "give the --val-size it was trained with", out=out)

    r = dk("distill", "--teacher", good, "--baseline", weak, "--out", tmp_path / "s4", "--cache-dir", "", *QUICK)
    assert r.returncode == 0, r.stderr  # no --val-size: the check runs on the test split and says so
    assert json.loads((tmp_path / "s4" / "summary.json").read_text())["teacher_check"]["split"] == "test"
    assert "teacher check (test split, 899 images)" in r.stderr


def test_archs_lists_the_registry():
    r = dk("archs")
    assert r.returncode == 0 and "mlp-1200x2" in r.stdout and "mlp-30x2" in r.stdout


def test_existing_checkpoint_is_not_clobbered(teacher):
    before = (teacher / "model.safetensors").read_bytes()
    assert_clean_error(dk("train", "--arch", "mlp-300x2", "--out", teacher, *QUICK), "already holds a checkpoint")
    assert (teacher / "model.safetensors").read_bytes() == before


# ---- bad input: one clear line, exit 2, nothing written ---------------------------------------------

def test_missing_data(tmp_path):
    out = tmp_path / "o"
    assert_clean_error(dk("train", "--data", tmp_path / "nope", "--out", out, *QUICK), "neither 'digits'", out=out)


def test_corrupt_mnist_wrong_magic(tmp_path):
    root = fake_mnist(tmp_path / "m")
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(__import__("gzip").compress(b"\x00\x00\x09\x99" + bytes(100)))
    out = tmp_path / "o"
    assert_clean_error(dk("train", "--data", root, "--out", out, *QUICK), "not an IDX file", out=out)


def test_truncated_mnist(tmp_path):
    root = fake_mnist(tmp_path / "m", gz=False)
    f = root / "train-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-3])
    out = tmp_path / "o"
    assert_clean_error(dk("train", "--data", root, "--out", out, *QUICK), "truncated", out=out)


def test_class_count_mismatch_between_teacher_and_data(teacher, tmp_path):
    p = tmp_path / "three.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x_train=rng.random((30, 8, 8)), y_train=np.arange(30) % 3, x_test=rng.random((9, 8, 8)),
             y_test=np.arange(9) % 3)
    out = tmp_path / "o"
    assert_clean_error(dk("distill", "--teacher", teacher, "--data", p, "--out", out, *QUICK),
                       "teacher predicts 10 classes but the data has 3", out=out)


def test_input_size_mismatch_between_teacher_and_data(teacher, tmp_path):
    out = tmp_path / "o"
    assert_clean_error(dk("distill", "--teacher", teacher, "--data", fake_mnist(tmp_path / "m"), "--out", out,
                              *QUICK), "does not take this data's inputs", out=out)


@pytest.mark.parametrize("t", ["0", "-3"])
def test_nonpositive_temperature(teacher, tmp_path, t):
    out = tmp_path / "o"
    assert_clean_error(dk("distill", "--teacher", teacher, "--temperature", t, "--out", out, *QUICK),
                       "temperature must be > 0", out=out)


def test_nan_teacher(teacher, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    weights = load_file(teacher / "model.safetensors")
    weights["net.0.weight" if "net.0.weight" in weights else "net.1.weight"][:] = float("nan")
    save_file(weights, bad / "model.safetensors")
    meta = json.loads((teacher / "model.json").read_text())
    meta["weights_sha256"] = __import__("hashlib").sha256((bad / "model.safetensors").read_bytes()).hexdigest()
    (bad / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "o"
    assert_clean_error(dk("distill", "--teacher", bad, "--out", out, "--cache-dir", "", *QUICK), "NaN or inf", out=out)


def test_unknown_architecture(tmp_path):
    out = tmp_path / "o"
    assert_clean_error(dk("train", "--arch", "mlp-9x9", "--out", out, *QUICK), "unknown architecture 'mlp-9x9'", out=out)


def test_unknown_recipe_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 2\nlearning_rate: 0.1\n")
    out = tmp_path / "o"
    assert_clean_error(dk("train", "--config", recipe, "--out", out), "unknown key 'learning_rate'", "allowed:", out=out)


def test_wrong_type_in_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: many\n")
    assert_clean_error(dk("train", "--config", recipe, "--out", tmp_path / "o"), "key 'epochs' must be int")


def test_unknown_flag_value_is_rejected():
    r = dk("distill", "--combine", "median", "--teacher", "x")
    assert_clean_error(r, "unknown combine method 'median'")


def test_checkpoint_of_another_architecture(teacher, tmp_path):
    import shutil

    out = tmp_path / "o"
    shutil.copytree(teacher, out)
    assert_clean_error(dk("train", "--arch", "mlp-800x2", "--out", out, "--resume", *QUICK),
                       "is a 'mlp-300x2' model, expected 'mlp-800x2'")


def test_bad_bias_fix(teacher):
    assert_clean_error(dk("evaluate", "--checkpoint", teacher, "--bias-fix", "three"), "CLASS=OFFSET")
    assert_clean_error(dk("evaluate", "--checkpoint", teacher, "--bias-fix", "12=1"), "outside 0..9")


def test_demo_end_to_end(tmp_path):
    """The README's first command: teacher, hard-label student and distilled student on embedded digits."""
    r = run_dk("demo", "--out", tmp_path / "demo", "--no-progress", timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["test_size"] == 899
    assert summary["distilled_errors"] < summary["student_errors"]
    assert summary["teacher_errors"] < summary["distilled_errors"]
    assert (tmp_path / "demo" / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for role in ("teacher", "student", "distilled"):
        assert (tmp_path / "demo" / role / "model.safetensors").is_file()
    assert "beats the hard-label student" in r.stdout
