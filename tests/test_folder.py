"""`folder:DIR`: torchvision's ImageFolder layout, decoded once with Pillow, then everything CIFAR has."""

import json

import numpy as np
import pytest
from conftest import dk
from PIL import Image

from darkknowledge import DKError
from darkknowledge.data import FOLDER_CACHE, load_cifar, load_data, load_mnist

CLASSES = ("airplane", "automobile", "bird")


def write_folder(root, x, y, names, split):
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / split / names[label]
        d.mkdir(parents=True, exist_ok=True)
        arr = img.numpy()
        Image.fromarray(arr if arr.ndim == 2 else arr.transpose(1, 2, 0)).save(d / f"{i:05d}.png")


@pytest.fixture(scope="module")
def cifar_folder(cifar_dir, tmp_path_factory):
    """210 training and 60 test images of CIFAR-10's first three classes, as PNG files in class folders."""
    c10 = load_cifar(cifar_dir)
    root = tmp_path_factory.mktemp("folder") / "three"
    picked = {}
    for split, x, y, n in (("train", c10.x_train, c10.y_train, 70), ("test", c10.x_test, c10.y_test, 20)):
        idx = np.concatenate([np.flatnonzero(y.numpy() == c)[:n] for c in (0, 1, 2)])  # the files are class-major
        write_folder(root, x[idx], y[idx], CLASSES, split)
        picked[split] = idx
    return root, c10, picked


def test_a_folder_of_pngs_loads_as_the_images_it_was_written_from(cifar_folder):
    root, c10, picked = cifar_folder
    data = load_data(f"folder:{root}")
    assert data.class_names == CLASSES and data.num_classes == 3 and data.in_shape == (3, 32, 32)
    # ImageFolder's order: class by class, files sorted; PNG is lossless, so every pixel is the original's.
    order = np.argsort(c10.y_train.numpy()[picked["train"]], kind="stable")
    assert data.x_train.dtype == c10.x_train.dtype and len(data.x_train) == 210
    assert np.array_equal(data.x_train.numpy(), c10.x_train.numpy()[picked["train"]][order])
    assert np.array_equal(data.y_train.numpy(), c10.y_train.numpy()[picked["train"]][order])
    assert len(data.y_test) == 60 and set(data.y_test.tolist()) <= {0, 1, 2}


def test_the_decoded_arrays_are_cached_and_a_changed_file_is_decoded_again(cifar_folder, monkeypatch, tmp_path):
    import shutil

    from darkknowledge import data as data_mod

    root = tmp_path / "copy"
    shutil.copytree(cifar_folder[0], root, ignore=shutil.ignore_patterns(FOLDER_CACHE))
    first = load_data(f"folder:{root}")
    assert len(list((root / FOLDER_CACHE).glob("*.npz"))) == 1

    def refuse(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data_mod, "_decode", refuse)
    again = load_data(f"folder:{root}")  # from the cache: nothing decoded
    assert np.array_equal(again.x_train.numpy(), first.x_train.numpy()) and again.class_names == first.class_names
    monkeypatch.undo()
    victim = sorted((root / "train" / "bird").iterdir())[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(victim)  # a changed file: another key
    changed = load_data(f"folder:{root}")
    assert changed.x_train[first.y_train == 2][0].sum() == 0 and len(list((root / FOLDER_CACHE).glob("*.npz"))) == 2


def test_resize_and_grey_images(mnist_dir, tmp_path):
    mn = load_mnist(mnist_dir)
    root = tmp_path / "digits"
    names = [str(i) for i in range(10)]
    write_folder(root, (mn.x_train[:100] * 255).round().byte(), mn.y_train[:100], names, "train")
    write_folder(root, (mn.x_test[:30] * 255).round().byte(), mn.y_test[:30], names, "val")  # val/ serves as test
    data = load_data(f"folder:{root}")
    assert data.in_shape == (28, 28) and data.x_train.dtype.is_floating_point  # grey: as MNIST, floats in [0, 1]
    assert len(data.y_test) == 30 and float(data.x_train.max()) <= 1.0
    small = load_data(f"folder:{root}@14")
    assert small.in_shape == (14, 14)
    wide = load_data(f"folder:{root}@20x10")
    assert wide.in_shape == (10, 20)  # width x height: arrays are [N, H, W]


def test_dk_trains_and_distils_on_an_image_folder(cifar_folder, tmp_path):
    root = cifar_folder[0]
    teacher, student = tmp_path / "t", tmp_path / "s"
    r = dk("train", "--data", f"folder:{root}", "--arch", "resnet-s-w4", "--epochs", "1", "--out", teacher,
           "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads((teacher / "summary.json").read_text())["results"][0]["test_size"] == 60
    r = dk("distill", "--data", f"folder:{root}", "--teacher", teacher, "--arch", "resnet-s-w4", "--epochs", "1",
           "--out", student, "--cache-dir", "", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (student / "model.safetensors").is_file()


def _error(source):
    with pytest.raises(DKError) as e:
        load_data(source)
    return str(e.value)


def test_bad_folders_are_one_clear_error(tmp_path):
    assert "does not exist" in _error(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "a").mkdir()
    assert "no train/ sub-folder" in _error(f"folder:{tmp_path / 'a'}")
    (tmp_path / "a" / "train").mkdir()
    assert "neither test/ nor val/" in _error(f"folder:{tmp_path / 'a'}")
    (tmp_path / "a" / "test").mkdir()
    assert "holds no class folders" in _error(f"folder:{tmp_path / 'a'}")
    (tmp_path / "a" / "train" / "cat").mkdir()
    assert "holds no PNG or JPEG images" in _error(f"folder:{tmp_path / 'a'}")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "train" / "cat" / "0.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "a" / "train" / "cat" / "1.png")
    (tmp_path / "a" / "test" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "test" / "dog" / "0.png")
    assert "classes the training split lacks: dog" in _error(f"folder:{tmp_path / 'a'}")
    (tmp_path / "a" / "test" / "dog").rename(tmp_path / "a" / "test" / "cat")
    msg = _error(f"folder:{tmp_path / 'a'}")
    assert "images differ in size" in msg and "1.png is 8x6" in msg and "@WIDTHxHEIGHT" in msg
    assert load_data(f"folder:{tmp_path / 'a'}@8").in_shape == (3, 8, 8)  # resized: they agree
    (tmp_path / "a" / "train" / "cat" / "2.png").write_bytes(b"not an image")
    assert "cannot decode image" in _error(f"folder:{tmp_path / 'a'}@8") and "2.png" in _error(f"folder:{tmp_path / 'a'}@8")
    assert "WIDTH or WIDTHxHEIGHT" in _error(f"folder:{tmp_path / 'a'}@big")
