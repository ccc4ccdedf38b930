"""`dlkit eval` and `dlkit predict` on checkpoints; the report maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolkit.evaluate import classification_report, top_k


def test_classification_report_counts():
    logits = np.array([[2, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2]], dtype=np.float32)
    report = classification_report(logits, np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert report["accuracy"] == 0.75 and report["num_samples"] == 4
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert report["per_class"]["c"] == {"accuracy": 0.5, "num_samples": 2}


def test_top_k_is_sorted_probabilities():
    ranked = top_k(np.array([[0.0, 3.0, 1.0]]), ["a", "b", "c"], k=2)[0]
    assert [r["label"] for r in ranked] == ["b", "c"]
    assert ranked[0]["probability"] == pytest.approx(np.exp(3) / (1 + np.exp(3) + np.exp(1)))


@pytest.mark.slow
def test_eval_json_on_the_models_own_validation_split(dlkit, tiny_run):
    report = dlkit.json("eval", tiny_run["best_checkpoint"])
    assert report["accuracy"] == pytest.approx(tiny_run["best_val_accuracy"])
    assert report["num_samples"] == 359 and report["split"] == "val"
    assert len(report["confusion_matrix"]) == 10 and set(report["per_class"]) == set("0123456789")


@pytest.mark.slow
def test_eval_on_the_same_images_as_a_folder(dlkit, tiny_run, digits_dir):
    embedded = dlkit.json("eval", tiny_run["best_checkpoint"])
    folder = dlkit.json("eval", tiny_run["best_checkpoint"], "--data", digits_dir)
    assert folder["split"] == "val" and folder["accuracy"] == embedded["accuracy"]
    text = dlkit("eval", tiny_run["best_checkpoint"]).output
    assert text.startswith(f"accuracy {embedded['accuracy']:.4f} on 359 images")


@pytest.mark.slow
def test_predict_prints_classes_and_saves_a_grid(dlkit, tiny_run, digits_dir, tmp_path):
    images = sorted((digits_dir / "val" / "7").glob("*.png"))[:4]
    out = dlkit.json(
        "predict",
        tiny_run["best_checkpoint"],
        *images,
        "--top-k",
        "2",
        "--grid",
        tmp_path / "g.png",
    )
    assert [p["image"] for p in out["predictions"]] == [str(p) for p in images]
    assert all(len(p["top_k"]) == 2 for p in out["predictions"])
    assert sum(p["top_k"][0]["label"] == "7" for p in out["predictions"]) >= 3
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_bad_inputs(dlkit, digits_checkpoint, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    result = dlkit("predict", digits_checkpoint, bad, expect=1)
    assert (
        result.output
        == f"Error: corrupt or unreadable image: {bad} (cannot identify image file '{bad}')\n"
    )
    result = dlkit("predict", digits_checkpoint, tmp_path / "none.png", expect=1)
    assert (
        result.output
        == f"Error: image not found: {tmp_path / 'none.png'} (no file, folder or glob match)\n"
    )


def test_predict_takes_folders_and_globs(dlkit, digits_checkpoint, digits_dir):
    folder = digits_dir / "val" / "3"
    from_folder = dlkit.json("predict", digits_checkpoint, folder)["predictions"]
    from_glob = dlkit.json("predict", digits_checkpoint, f"{folder}/*.png")["predictions"]
    expected = sorted(str(p) for p in folder.glob("*.png"))
    assert [p["image"] for p in from_folder] == expected
    assert [p["image"] for p in from_glob] == expected


def test_a_decompression_bomb_is_one_clear_error(dlkit, digits_checkpoint, tmp_path):
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 MP, a few KB on disk
    result = dlkit("predict", digits_checkpoint, bomb, expect=1)
    assert result.output.startswith(f"Error: image too large: {bomb}")


def test_eval_on_a_folder_with_some_of_the_models_classes(
    dlkit, digits_checkpoint, digits_dir, tmp_path
):
    """Classes are matched by name: a folder of 3s and 5s evaluates a 10-class model."""
    import shutil

    for digit in ("3", "5"):
        shutil.copytree(digits_dir / "val" / digit, tmp_path / "some" / digit)
    counts = {d: len(list((tmp_path / "some" / d).iterdir())) for d in ("3", "5")}
    report = dlkit.json("eval", digits_checkpoint, "--data", tmp_path / "some")
    assert report["split"] == "all" and report["num_samples"] == sum(counts.values())
    assert report["data_classes"] == ["3", "5"] and report["classes"] == list("0123456789")
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum(1).tolist() == [counts.get(str(d), 0) for d in range(10)]
    assert report["per_class"]["3"]["num_samples"] == counts["3"]
    assert report["per_class"]["0"] == {"accuracy": None, "num_samples": 0}
    expected = (matrix[3, 3] + matrix[5, 5]) / sum(counts.values())
    assert report["accuracy"] == pytest.approx(expected)
    text = dlkit("eval", digits_checkpoint, "--data", tmp_path / "some").output
    assert "2 of the model's 10 classes" in text.splitlines()[0]

    shutil.copytree(digits_dir / "val" / "7", tmp_path / "some" / "cat")
    result = dlkit("eval", digits_checkpoint, "--data", tmp_path / "some", expect=1)
    assert result.output.startswith("Error: the data has classes the model does not know: 'cat'")


def test_an_exif_turned_jpeg_predicts_and_evaluates_like_the_upright_one(
    dlkit, make_checkpoint, make_exif_jpegs, tmp_path
):
    model = make_checkpoint(tmp_path / "m.pt", classes=2)  # RGB, 32 px, classes c0 and c1
    upright, turned = make_exif_jpegs(tmp_path / "pictures")
    ranked = dlkit.json("predict", model, upright, turned, "--top-k", "2")["predictions"]
    assert ranked[0]["top_k"] == ranked[1]["top_k"]
    reports = []
    for picture in (upright, turned):
        for label in ("c0", "c1"):
            (tmp_path / picture.stem / label).mkdir(parents=True)
            (tmp_path / picture.stem / label / picture.name).write_bytes(picture.read_bytes())
        reports.append(dlkit.json("eval", model, "--data", tmp_path / picture.stem))
    assert reports[0]["confusion_matrix"] == reports[1]["confusion_matrix"]


def test_grid_captions_name_the_file_and_mark_wrong_answers():
    from toolkit.commands.predict import grid_captions

    def top(label):
        return [{"label": label, "probability": 0.75, "index": 0}]

    paths = ["d/3/a.png", "d/3/b.png", "photos/c.png", "x/" + "long" * 10 + ".png"]
    titles, wrong = grid_captions(paths, [top("3"), top("5"), top("3"), top("3")], ["3", "5"])
    assert titles[:3] == ["a.png\n3 (0.75)", "b.png\n5 (0.75)\nwrong: true 3", "c.png\n3 (0.75)"]
    assert wrong == [False, True, None, None]
    assert titles[3].startswith("longlonglon…") and len(titles[3].splitlines()[0]) == 24
    assert grid_captions(paths[:1], [top("5")])[1] == [None]  # classes unknown (a server)


def test_predict_grid_from_a_folder(dlkit, digits_checkpoint, digits_dir, tmp_path):
    images = sorted((digits_dir / "val" / "4").glob("*.png"))[:3]
    dlkit("predict", digits_checkpoint, *images, "--grid", tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_the_confusion_matrix_is_headed_by_class_names(
    dlkit, make_checkpoint, make_folder, tmp_path
):
    model = make_checkpoint(tmp_path / "m.pt", classes=3)  # classes c0, c1, c2
    make_folder(tmp_path / "data", classes=("c0", "c2"), per_class=2)
    lines = dlkit("eval", model, "--data", tmp_path / "data").output.splitlines()
    header = lines.index("confusion matrix (rows: true, columns: predicted)") + 1
    assert lines[header].split() == ["c0", "c1", "c2"]
    assert [row.split()[0] for row in lines[header + 1 : header + 4]] == ["c0", "c1", "c2"]


def test_predict_counts_right_answers_and_draws_only_mistakes(
    dlkit, digits_checkpoint, digits_dir, tmp_path
):
    images = [p for d in "34" for p in sorted((digits_dir / "val" / d).glob("*.png"))[:6]]
    out = dlkit.json("predict", digits_checkpoint, *images)
    right = sum(p["top_k"][0]["label"] == Path(p["image"]).parent.name for p in out["predictions"])
    assert (out["correct"], out["labelled"]) == (right, 12) and right < 12  # untrained
    text = dlkit("predict", digits_checkpoint, *images).output
    assert f"{right}/12 correct" in text
    grid = tmp_path / "mistakes.png"
    wrong = dlkit.json("predict", digits_checkpoint, *images, "--mistakes-only", "--grid", grid)
    assert len(wrong["predictions"]) == 12 - right and wrong["grid"] == str(grid)
    assert all(p["top_k"][0]["label"] != Path(p["image"]).parent.name for p in wrong["predictions"])
    assert grid.read_bytes()[:4] == b"\x89PNG"
    unlabelled = tmp_path / "loose.png"
    unlabelled.write_bytes(images[0].read_bytes())
    refused = dlkit("predict", digits_checkpoint, unlabelled, "--mistakes-only", expect=1)
    assert "--mistakes-only needs images in folders named after" in refused.output
