"""Step 4 as a hostile user tries it (issue 12): bad files among good ones, bad flags and output locations, foreign
checkpoints, an interrupted --overwrite, Ctrl-C. Each answer is one line on stderr naming what is wrong, exit status 2
(Ctrl-C: 130 outside training; inside it, a checkpoint and exit 0), before any work is spent, and nothing of one run
is mixed into another."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT
from data.classes import CLASSES
from models import MIN_INPUT_SIZE

SMALL = ["--model", "unified-alexnet", "--image-size", 32, "--workers", 0, "--bootstrap", 5, "--max-heatmaps", 0]
PWNED = "pwned.txt"


class Pwn:
    """A pickle that would write PWNED into the working folder if it were ever unpickled by a full unpickler."""

    def __reduce__(self):
        return (exec, (f"open({PWNED!r}, 'w').write('x')",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small dataset and a finished 2-epoch run on it (shared: the tests below only read it or copy it)."""
    import traintest as script
    from conftest import with_amp, write_dataset
    root = tmp_path_factory.mktemp("hostile")
    csv = write_dataset(root / "data", n_train=8, n_val=4, n_test=4, size=32)
    run = root / "run"
    assert script.main(with_amp(["--csv", csv, "--output-dir", run, "--epochs", 2, *SMALL])) == 0
    return {"root": root, "csv": csv, "run": run, "best": run / "checkpoint_best.pt"}


def outcome(capsys, traintest, *args):
    """(exit status, stderr) of a traintest run in this process; argparse's exit counts as a status too."""
    capsys.readouterr()
    try:
        code = traintest(*args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def one_line_error(capsys, traintest, *args):
    """The one stderr line of a run refused as bad input: status 2, that line only, no traceback."""
    code, err = outcome(capsys, traintest, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("traintest.py: error: "), err
    assert "weights_only" not in err  # never torch's advice to turn the safe loader off
    return lines[0]


# ---- 1. bad images: --predict lists them and predicts the rest; training stops with the path or skips them ----

def bad_files(folder):
    """One of each kind of bad image file in `folder`; {file name: words its error must contain}."""
    good = (folder / "test000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[:len(good) // 2])
    (folder / "text.png").write_text("this is not a PNG\n")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "dangling.png").symlink_to(folder / "gone.png")  # listed, but nothing can be read through it
    os.mkfifo(folder / "fifo.png")  # a reader would block on it for good
    return {"truncated.png": "truncated", "text.png": "not a readable PNG", "empty.dcm": "DICOM",
            "dangling.png": "No such file", "fifo.png": "not a regular file"}


@pytest.mark.parametrize("workers", [0, 1])
def test_predict_lists_each_bad_file_and_predicts_the_others(tmp_path, capsys, trained, traintest, workers):
    folder = tmp_path / "new"
    shutil.copytree(trained["root"] / "data" / "images", folder)
    good = sorted(p.stem for p in folder.iterdir())
    expected = bad_files(folder)
    out = tmp_path / "pred"
    code, err = outcome(capsys, traintest, "--predict", folder, "--load-model", trained["best"], "--output-dir", out,
                        "--workers", workers, "--max-heatmaps", 2)
    assert code == 0, err
    errors = pd.read_csv(out / "predict_errors.csv")
    assert list(errors.columns) == ["path", "error"]
    assert sorted(os.path.basename(p) for p in errors["path"]) == sorted(expected)
    for path, error in zip(errors["path"], errors["error"]):
        assert expected[os.path.basename(path)] in error, (path, error)
    assert sorted(pd.read_csv(out / "predictions.csv")["ImageID"]) == good
    assert f"{len(expected)} of {len(good) + len(expected)} files did not decode" in err
    assert (out / "report.html").is_file()


def test_predict_with_no_file_that_decodes_is_an_error(tmp_path, capsys, traintest, trained):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_text("no")
    (folder / "b.jpg").write_bytes(b"")
    code, err = outcome(capsys, traintest, "--predict", folder, "--load-model", trained["best"], "--output-dir",
                        tmp_path / "pred")
    lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line and "?it" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("traintest.py: error: none of the 2 files"), err
    assert len(pd.read_csv(tmp_path / "pred" / "predict_errors.csv")) == 2
    assert len(pd.read_csv(tmp_path / "pred" / "predictions.csv")) == 0  # no old predictions left standing


def broken_copy(trained, tmp_path, broken):
    """The dataset with `broken` images (file names) replaced by text; its combined.csv."""
    data = tmp_path / "data"
    shutil.copytree(trained["root"] / "data", data)
    for name in broken:
        (data / "images" / name).write_text("not an image")
    return data / "combined.csv"


@pytest.mark.parametrize("workers", [0, 1])
def test_training_stops_at_a_bad_image_naming_it(tmp_path, capsys, traintest, trained, workers):
    csv = broken_copy(trained, tmp_path, ["train003.png"])
    code, err = outcome(capsys, traintest, "--csv", csv, "--output-dir", tmp_path / "run", "--epochs", 1, *SMALL,
                        "--workers", workers)
    assert code == 2 and "Traceback" not in err
    last = err.rstrip().splitlines()[-1].strip()
    assert last.startswith(f"traintest.py: error: cannot decode {tmp_path / 'data' / 'images' / 'train003.png'}: ")
    assert "--skip-bad-images" in last
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


@pytest.mark.slow
def test_skip_bad_images_trains_without_them_and_lists_them(tmp_path, capsys, traintest, trained):
    csv = broken_copy(trained, tmp_path, ["train003.png", "val001.png", "test002.png"])
    run = tmp_path / "run"
    code, err = outcome(capsys, traintest, "--csv", csv, "--output-dir", run, "--epochs", 2, *SMALL,
                        "--skip-bad-images", "--batch-size", 4)
    assert code == 0, err
    skipped = pd.read_csv(run / "skipped_images.csv")
    assert sorted(os.path.basename(p) for p in skipped["path"]) == ["test002.png", "train003.png", "val001.png"]
    assert "skipped 3 images that did not decode" in (run / "train.log").read_text()
    predicted = pd.read_csv(run / "predictions.csv")["ImageID"].tolist()
    assert predicted == ["test000.png", "test001.png", "test003.png"]
    table = pd.read_csv(run / "metrics.csv")
    assert table[table["group"] == "all"].set_index("class").loc["macro", "positives"] <= 3 * len(CLASSES)


# ---- 2. --overwrite never leaves a new args.json beside an old checkpoint ----

def test_an_interrupted_overwrite_cannot_be_resumed_from_the_old_run(tmp_path, capsys, monkeypatch, traintest,
                                                                     trained):
    import traintest as script
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    old_args = json.loads((run / "args.json").read_text())

    # A bad flag refuses the overwrite before anything of the old run is touched.
    one_line_error(capsys, traintest, "--csv", trained["csv"], "--output-dir", run, "--overwrite", *SMALL,
                   "--max-heatmaps", 1, "--boxes-csv", tmp_path / "missing.csv")
    assert (run / "checkpoint_last.pt").is_file() and json.loads((run / "args.json").read_text()) == old_args

    def interrupted(*args, **kwargs):  # the new run stopped before its first epoch ended
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "train_one_epoch", interrupted)
    code, err = outcome(capsys, traintest, "--csv", trained["csv"], "--output-dir", run, "--overwrite", *SMALL,
                        "--lr", 0.5, "--epochs", 3)
    assert code == 130 and "nothing to resume" in err
    assert json.loads((run / "args.json").read_text())["lr"] == 0.5
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.csv", "predictions.csv", "report.html"):
        assert not (run / name).exists(), name
    monkeypatch.undo()
    line = one_line_error(capsys, traintest, "--resume", run)
    assert "has no checkpoint_last.pt" in line


def tree_bytes(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["missing image", "bad label", "unknown source", "other model"])
def test_overwrite_with_a_bad_input_leaves_the_old_run_byte_identical(tmp_path, capsys, traintest, trained, bad):
    # Inputs that are wrong only once read: the old run must still be whole when the new one is refused.
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "heatmaps").mkdir()
    (run / "heatmaps" / "x__cardiomegaly.png").write_bytes(b"a picture of the old run")
    before = tree_bytes(run)
    frame = pd.read_csv(trained["csv"])
    flags = []
    if bad == "missing image":
        frame.loc[3, "path"] = "images/gone.png"
    elif bad == "bad label":
        frame.loc[5, "cardiomegaly"] = 7
    elif bad == "unknown source":
        flags = ["--train-sources", "openi"]
    else:
        other = tmp_path / "chexnet.pt"
        torch.save({"format": 2, "model": {}, "model_args": {"name": "chexnet", "num_classes": len(CLASSES)},
                    "classes": CLASSES}, other)
        flags = ["--load-model", other]
    csv = os.path.join(os.path.dirname(trained["csv"]), f"bad-{bad.replace(' ', '-')}.csv")
    frame.to_csv(csv, index=False)
    line = one_line_error(capsys, traintest, "--csv", csv, "--output-dir", run, "--overwrite", *SMALL, *flags)
    assert {"missing image": "gone.png", "bad label": "cardiomegaly is '7'", "unknown source": "openi",
            "other model": "chexnet model"}[bad] in line
    assert tree_bytes(run) == before


# ---- 3. every flag and output location checked before any work ----

def write_csv(trained, tmp_path, name, change):
    frame = pd.read_csv(trained["csv"])
    frame["path"] = [os.path.join(os.path.dirname(trained["csv"]), p) for p in frame["path"]]
    frame = change(frame)
    frame.to_csv(tmp_path / name, index=False)
    return tmp_path / name


def nan_path(frame):
    frame.loc[5, "path"] = np.nan
    return frame


CASES = {
    # id: (arguments after the run folder, words of the message); RUN, FILE, CSV and ROOT are replaced
    "run-folder-is-a-file": (["--output-dir", "FILE"], "is a file, not a folder"),
    "run-folder-under-a-file": (["--output-dir", "FILE/run"], "not a writable folder"),
    "save-model-is-a-folder": (["--save_model", "ROOT"], "is a folder"),
    "save-model-under-a-file": (["--save_model", "FILE/m.pt"], "cannot be written"),
    "boxes-csv-missing": (["--max-heatmaps", 1, "--boxes-csv", "ROOT/nope.csv"], "nope.csv"),
    "boxes-csv-malformed": (["--max-heatmaps", 1, "--boxes-csv", "BOXES"], "row 2: box"),
    "boxes-csv-without-heatmaps": (["--boxes-csv", "BOXES"], "--boxes-csv does nothing with --max-heatmaps 0"),
    "box-thresholds-abc": (["--box-thresholds", "abc"], "heatmap levels from 0 to 255"),
    "heatmap-classes-foo": (["--heatmap-classes", "foo"], "unknown classes ['foo']"),
    "image-size-0": (["--image-size", 0], "--image-size: must be >= 1"),
    "image-size-16": (["--image-size", 16],
                      f"below unified-alexnet's minimum input of {MIN_INPUT_SIZE['unified-alexnet']}"),
    "image-size-16-chexnet": (["--model", "chexnet", "--image-size", 16], "below chexnet's minimum input of 29"),
    "epochs-0": (["--epochs", 0], "--epochs: must be >= 1"),
    "lr-nan": (["--lr", "nan"], "--lr: must be > 0.0"),
    "weights-without-pretrained": (["--weights", "FILE"], "add --pretrained"),
    "no-test-rows": (["--csv", "NOTEST"], "has no test rows"),
    "csv-a-folder": (["--csv", "ROOT"], "is a folder"),
    "nan-in-path": (["--csv", "NANPATH"], "row 7: path is empty"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_flags_and_locations_are_one_line_before_any_work(tmp_path, capsys, traintest, trained, case):
    args, words = CASES[case]
    (tmp_path / "file").write_text("a file")
    (tmp_path / "boxes.csv").write_text("Image Index,Finding Label,x,y,w,h\ntest000.png,Mass,1,2,three,4\n")
    names = {"RUN": tmp_path / "run", "FILE": tmp_path / "file", "ROOT": tmp_path, "BOXES": tmp_path / "boxes.csv",
             "NOTEST": write_csv(trained, tmp_path, "notest.csv", lambda f: f[f["split"] != "test"]),
             "NANPATH": write_csv(trained, tmp_path, "nanpath.csv", nan_path)}
    args = [str(a) for a in args]
    for key, value in names.items():
        args = [a.replace(key, str(value)) if a.startswith(key) else a for a in args]
    defaults = ["--csv", trained["csv"], "--output-dir", tmp_path / "run", "--epochs", 1, *SMALL]
    line = one_line_error(capsys, traintest, *defaults, *args)
    assert words in line
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_read_only_run_folder_and_save_model_folder(tmp_path, capsys, traintest, trained, read_only_dir):
    common = ["--csv", trained["csv"], "--epochs", 1, *SMALL]
    line = one_line_error(capsys, traintest, *common, "--output-dir", read_only_dir)
    assert str(read_only_dir) in line and "not a writable folder" in line
    line = one_line_error(capsys, traintest, *common, "--output-dir", tmp_path / "run", "--save_model",
                          read_only_dir / "model.pt")
    assert "model.pt cannot be written" in line
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_device_cuda_without_a_gpu(tmp_path, capsys, traintest, trained):
    line = one_line_error(capsys, traintest, "--csv", trained["csv"], "--output-dir", tmp_path / "run", "--device",
                          "cuda", *SMALL)
    assert "--device cuda: no CUDA GPU" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_csv(tmp_path, capsys, traintest, trained):
    csv = tmp_path / "combined.csv"
    shutil.copyfile(trained["csv"], csv)
    csv.chmod(0)
    line = one_line_error(capsys, traintest, "--csv", csv, "--output-dir", tmp_path / "run", *SMALL)
    assert str(csv) in line and "Permission denied" in line


def test_test_only_and_resume_check_before_work(tmp_path, capsys, traintest, trained):
    notest = write_csv(trained, tmp_path, "notest.csv", lambda f: f[f["split"] != "test"])
    line = one_line_error(capsys, traintest, "--csv", notest, "--output-dir", tmp_path / "eval", "--test-only",
                          "--load-model", trained["best"], "--workers", 0)
    assert "has no test rows" in line and not (tmp_path / "eval" / "thresholds.csv").exists()
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    line = one_line_error(capsys, traintest, "--resume", run, "--epochs", 1)
    assert f"--epochs 1: {run} has already trained 2 epochs" in line
    line = one_line_error(capsys, traintest, "--predict", trained["root"] / "data" / "images", "--load-model",
                          trained["best"], "--output-dir", tmp_path / "p", "--image-size", 30)
    assert "--image-size 30 is below unified-alexnet's minimum input of 31" in line


# ---- 4. checkpoints and weights that are not ours ----

def foreign_files(folder, trained):
    """{kind: (path, words of the message)}: files that are not what --load-model, --weights or --resume need."""
    best = trained["best"].read_bytes()
    files = {"empty": (b"", "it is empty (0 bytes)"),
             "random": (np.random.default_rng(0).bytes(4096), "neither a torch.save file nor a pickle"),
             "pickle": (pickle.dumps({"weights": [1, 2, 3]}), "a plain Python pickle"),
             "malicious-pickle": (pickle.dumps(Pwn()), "a plain Python pickle"),
             "truncated": (best[:len(best) // 3], "a damaged or truncated torch.save file")}
    paths = {}
    for kind, (data, words) in files.items():
        (folder / f"{kind}.pt").write_bytes(data)
        paths[kind] = (folder / f"{kind}.pt", words)
    torch.save({"model": {"a": np.zeros(2)}}, folder / "numpy.pt")
    paths["numpy"] = (folder / "numpy.pt", "it holds Python objects (numpy")
    return paths


def test_foreign_checkpoints_and_weights_files_are_named(tmp_path, capsys, monkeypatch, traintest, trained):
    monkeypatch.chdir(tmp_path)  # where the malicious pickle would write if it ran
    files = foreign_files(tmp_path, trained)
    torch.save({"epochs": 3, "lr": torch.tensor(0.1)}, tmp_path / "handmade.pt")
    files["handmade"] = (tmp_path / "handmade.pt", "is not a traintest.py checkpoint: it has no 'model' weights")
    torch.save(torch.load(trained["best"], weights_only=True)["model"], tmp_path / "state_dict.pt")
    files["state-dict"] = (tmp_path / "state_dict.pt", "is not a traintest.py checkpoint")
    for kind, (path, words) in files.items():
        line = one_line_error(capsys, traintest, "--csv", trained["csv"], "--output-dir", tmp_path / "eval",
                              "--test-only", "--load-model", path, "--workers", 0)
        assert f"{path} is not a traintest.py checkpoint" in line and words in line, (kind, line)
    for kind in ("empty", "random", "pickle", "malicious-pickle", "numpy"):
        path, words = files[kind]
        line = one_line_error(capsys, traintest, "--csv", trained["csv"], "--output-dir", tmp_path / "w" / kind,
                              "--pretrained", "--weights", path, *SMALL)
        assert f"{path} is not a file of alexnet ImageNet weights: {words}" in line, (kind, line)
    line = one_line_error(capsys, traintest, "--csv", trained["csv"], "--output-dir", tmp_path / "w" / "ours",
                          "--pretrained", "--weights", trained["best"], *SMALL)
    assert "does not hold alexnet ImageNet weights: its weights do not fit AlexNet: 16 missing keys" in line
    assert not (tmp_path / PWNED).exists()


def test_resume_refuses_a_best_checkpoint_a_broken_one_and_a_corrupt_args_json(tmp_path, capsys, traintest,
                                                                              trained):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    shutil.copyfile(run / "checkpoint_best.pt", run / "checkpoint_last.pt")
    line = one_line_error(capsys, traintest, "--resume", run, "--epochs", 3)
    assert f"{run / 'checkpoint_last.pt'} is not a training checkpoint that --resume can continue" in line
    (run / "checkpoint_last.pt").write_bytes(b"")
    line = one_line_error(capsys, traintest, "--resume", run, "--epochs", 3)
    assert "checkpoint_last.pt is not a traintest.py checkpoint: it is empty (0 bytes)" in line
    for text in ('{"epochs": 3,', "[1, 2]", ""):
        (run / "args.json").write_text(text)
        line = one_line_error(capsys, traintest, "--resume", run, "--epochs", 3)
        assert f"cannot resume: {run / 'args.json'}" in line, line


# ---- 5. a run with no heatmap drawn still gets its report ----

@pytest.mark.slow
def test_a_run_with_no_heatmap_drawn_gets_its_report(tmp_path, capsys, traintest, trained):
    ckpt = torch.load(trained["best"], weights_only=True)
    ckpt["thresholds"] = [1.0] * len(CLASSES)  # no class is ever predicted, so no heatmap is drawn
    torch.save(ckpt, tmp_path / "never.pt")
    out = tmp_path / "pred"
    code, err = outcome(capsys, traintest, "--predict", trained["root"] / "data" / "images", "--load-model",
                        tmp_path / "never.pt", "--output-dir", out, "--workers", 0, "--max-heatmaps", 3)
    assert code == 0, err
    assert len(pd.read_csv(out / "heatmaps" / "index.csv")) == 0 and (out / "report.html").is_file()
    (out / "report.html").unlink()
    again = subprocess.run([sys.executable, "-m", "utils.report", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and (out / "report.html").is_file(), again.stderr
    (out / "heatmaps" / "index.csv").write_text("")
    broken = subprocess.run([sys.executable, "-m", "utils.report", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1 and "index.csv" in broken.stderr


# ---- 6. Ctrl-C ----

@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path, trained):
    run = tmp_path / "run"
    command = [sys.executable, os.path.join(ROOT, "traintest.py"), "--csv", str(trained["csv"]), "--output-dir",
               str(run), "--epochs", "1000", "--amp", "off", *map(str, SMALL), "--workers", "1"]
    # its own process group, which Ctrl-C in a terminal signals whole: the loader's worker gets SIGINT too
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (run / "checkpoint_last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err[-3000:]  # a stop while training saves where it is (issue 11: preemption)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("traintest.py: stopped by SIGINT ") and \
        last.endswith(f"continue with python traintest.py --resume {run}"), last
    done = torch.load(run / "checkpoint_last.pt", weights_only=True)["epoch"]
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, "traintest.py"), "--resume", str(run), "--epochs",
                              str(done + 1)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(run / "checkpoint_last.pt", weights_only=True)["epoch"] == done + 1
    assert (run / "metrics.csv").is_file()


def test_a_blank_class_cell_is_unknown_and_left_out(tmp_path, make_dataset):
    """NIH never annotates nine classes: combined.csv leaves them blank; step 4 reads a blank as -1 (left out)."""
    from data.dataset import read_combined
    from data.errors import InputError
    csv = make_dataset(tmp_path / "data")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.loc[0, "catheter"] = ""
    frame.loc[1, "tuberculosis"] = "NA"
    frame.to_csv(csv, index=False)
    with pytest.raises(InputError, match=r"row 3: tuberculosis is 'NA', expected 1, 0, -1 or blank"):
        read_combined(str(csv), CLASSES)
    frame.loc[1, "tuberculosis"] = "1"
    frame.to_csv(csv, index=False)
    read = read_combined(str(csv), CLASSES)
    assert read.loc[0, "catheter"] == -1 and read.loc[1, "tuberculosis"] == 1
