"""Published models in the harness (models.published, utils.checkpoint.load_model), checked against torchxrayvision
1.5.7's own code: its models built with weights=None (seeded, the classifier rescaled so that the probabilities
spread over (0, 1)), saved as its release files are, and loaded through our path. Nothing here downloads: the
registry tests run in a temporary HOME, and urllib is replaced where a download would start."""
import io
import json
import math
import os
import pickle
import re
import urllib.error
import urllib.request

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from pydicom.data import get_testdata_file

import torchxrayvision as xrv
from data.classes import CLASSES
from data.decode import read_image
from models import published, uncropped_maps
from utils.checkpoint import CheckpointError, WeightsUnavailable, load_model, registry_path

ONE_TO_ONE = published.ONE_TO_ONE  # the ten classes whose definitions agree
XRV_INDEX = {c: published.XRV_LABELS.index(published.MAPPING[c]) for c in ONE_TO_ONE}
PORT_INDEX = {c: published.CHEXNET_LABELS.index(published.MAPPING[c]) for c in ONE_TO_ONE}
ALL_FILE = published.XRV_RELEASES["densenet121-res224-all"][0]
RESNET_FILE = published.XRV_RELEASES["resnet50-res512-all"][0]


def spread(model, classifier, x):
    """Rescale a randomly initialized classifier so that its probabilities on x spread over (0, 1): the logits'
    spread across classes scaled to 3, each class centred with a seeded offset."""
    with torch.no_grad():
        z = model(x)
        c = 3 / (z - z.mean(1, keepdim=True)).std()
        classifier.weight.mul_(c)
        classifier.bias.copy_(classifier.bias * c - c * z.mean(0) + 2 * torch.randn(z.shape[1]))
    return model


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory):
    """pydicom-data's chest radiograph as DICOM, and PNG and JPEG written from its 8-bit decoding; a landscape
    crop of it (the centre crop then works on the other side)."""
    folder = tmp_path_factory.mktemp("radiographs")
    dicom = get_testdata_file("RG1_UNCI.dcm")
    with open(dicom, "rb") as f:
        (folder / "chest_dicom.dcm").write_bytes(f.read())
    gray = read_image(dicom)
    cv2.imwrite(str(folder / "chest_png.png"), gray)
    cv2.imwrite(str(folder / "chest_jpeg.jpg"), gray)
    cv2.imwrite(str(folder / "wide_png.png"), gray[300:1200, :])
    return folder


def xrv_input(path, size=224):
    """torchxrayvision's documented pipeline on one file: the image (8-bit), normalize(img, 255), XRayCenterCrop,
    XRayResizer."""
    img = read_image(str(path)).astype(np.float32)
    img = xrv.datasets.normalize(img, 255)[None]
    img = xrv.datasets.XRayResizer(size)(xrv.datasets.XRayCenterCrop()(img))
    return torch.from_numpy(img)[None]


def radiograph_batch(folder, size=224):
    return torch.cat([xrv_input(p, size) for p in sorted(folder.iterdir())])


@pytest.fixture(scope="module")
def xrv_densenet(radiographs, tmp_path_factory):
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None).eval()
    spread(model, model.classifier, radiograph_batch(radiographs))
    path = tmp_path_factory.mktemp("xrv") / "densenet.pt"
    torch.save(model, path)  # a whole pickled module, as its release files are
    return model, path


def xrv_resnet_net(seed=1):
    torch.manual_seed(seed)
    net = torchvision.models.resnet50(num_classes=18, weights=None)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # as xrv.models.ResNet
    return net.eval()


@pytest.fixture(scope="module")
def xrv_resnet(radiographs, tmp_path_factory):
    """xrv.models.ResNet reading a seeded state dict through its own loading code (its registry file name in a
    cache folder of ours: it finds the file there and downloads nothing)."""
    net = xrv_resnet_net()
    spread(net, net.fc, radiograph_batch(radiographs, 512)[:2])
    cache = tmp_path_factory.mktemp("xrv_cache")
    torch.save(net.state_dict(), cache / RESNET_FILE)
    theirs = xrv.models.ResNet(weights="resnet50-res512-all", cache_dir=str(cache)).eval()
    theirs.op_threshs = None  # raw logits (its forward applies op_norm otherwise)
    return theirs, cache / RESNET_FILE


class ArnowengDenseNet121(torch.nn.Module):
    """arnoweng/CheXNet's model: torchvision's DenseNet-121 with a Sequential(Linear, Sigmoid) head."""

    def __init__(self):
        super().__init__()
        self.densenet121 = torchvision.models.densenet121(weights=None)
        self.densenet121.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())

    def forward(self, x):
        return self.densenet121(x)


def old_densenet_names(state):
    """A state dict as PyTorch before 0.4 wrote it: denselayerN.norm.1 / conv.2, and no num_batches_tracked."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
            if not k.endswith("num_batches_tracked")}


def imagenet_input(path):
    """The CheXNet ports' input: RGB, Resize(224) + CenterCrop(224) (jrzech's), ImageNet mean and std."""
    img = Image.fromarray(read_image(str(path))).convert("RGB")
    tf = torchvision.transforms
    return tf.Compose([tf.Resize(224), tf.CenterCrop(224), tf.ToTensor(),
                       tf.Normalize(published.IMAGENET_MEAN, published.IMAGENET_STD)])(img)[None]


@pytest.fixture(scope="module")
def arnoweng(radiographs, tmp_path_factory):
    torch.manual_seed(2)
    model = ArnowengDenseNet121().eval()
    x = torch.cat([imagenet_input(p) for p in sorted(radiographs.iterdir())])
    spread(lambda v: torch.logit(model(v), eps=1e-7), model.densenet121.classifier[0], x)
    state = {f"module.{k}": v for k, v in old_densenet_names(model.state_dict()).items()}  # DataParallel's
    path = tmp_path_factory.mktemp("arnoweng") / "model.pth.tar"
    torch.save({"epoch": 1, "state_dict": state, "best_loss": 0.1}, path)
    return model, path


# ------------------------------------------------------------------------------------------------ the registry

def test_release_table_is_torchxrayvisions():
    for key, (file, labels, threshs, size) in published.XRV_RELEASES.items():
        theirs = xrv.models.model_urls[key]
        assert theirs["weights_url"] == published.XRV_URL + file
        assert theirs["labels"] == labels
        assert np.allclose(theirs["op_threshs"], threshs, equal_nan=True, rtol=0, atol=0)
        assert theirs["input_resolution"] == size
    assert published.XRV_LABELS == xrv.datasets.default_pathologies
    for alias, key in published.XRV_ALIASES.items():
        assert xrv.models.model_urls[alias] is xrv.models.model_urls[key]


def test_mapping_table():
    text, matrix, predicted = published.mapping_rows(published.XRV_LABELS, CLASSES)
    assert [c for c in CLASSES if text[c] not in ("NA",) and "mean" not in text[c]] == ONE_TO_ONE
    assert text["pleural effusion"] == "Effusion" and text["pulmonary fibrosis"] == "Fibrosis"
    assert text["infiltrates"] == "mean of the logits of Infiltration and Consolidation"
    assert text["normal"] == "NA" and not predicted[CLASSES.index("normal")]
    assert int(predicted.sum()) == 11
    # chex has no Infiltration: the rule uses what is trained
    chex = published.XRV_RELEASES["densenet121-res224-chex"][1]
    text, _, predicted = published.mapping_rows(chex, CLASSES)
    assert text["infiltrates"] == "Consolidation" and text["emphysema"] == "NA"


def test_op_threshs_become_thresholds():
    _, labels, threshs, _ = published.XRV_RELEASES["densenet121-res224-all"]
    ours = published.mapped_thresholds(threshs, labels, CLASSES)
    assert ours[CLASSES.index("pleural effusion")] == pytest.approx(threshs[labels.index("Effusion")], abs=1e-7)
    t1, t2 = threshs[labels.index("Infiltration")], threshs[labels.index("Consolidation")]
    mean_logit = (math.log(t1 / (1 - t1)) + math.log(t2 / (1 - t2))) / 2
    assert ours[CLASSES.index("infiltrates")] == pytest.approx(1 / (1 + math.exp(-mean_logit)), abs=1e-9)
    assert ours[CLASSES.index("normal")] == 0.5


# -------------------------------------------------------------------------------------- logits, same tensor

def assert_same_outputs(theirs, ours, x, index, sigmoid=False):
    """Our outputs on the one-to-one classes equal theirs on the same tensor within 1e-5 at fp32 (sigmoid: their
    head ends in a Sigmoid, so our logits' sigmoid); returns both."""
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    got = torch.sigmoid(got) if sigmoid else got
    for c in ONE_TO_ONE:
        assert torch.allclose(got[:, CLASSES.index(c)], expected[:, index[c]], rtol=0, atol=1e-5)
    return expected, got


@pytest.mark.slow  # torchxrayvision's networks on full-size radiographs, or traintest.py
@pytest.mark.parametrize("legacy", [False, True])
def test_densenet_logits_equal_torchxrayvisions(xrv_densenet, tmp_path, legacy):
    theirs, path = xrv_densenet
    if legacy:  # the serialization of files saved before torch 1.6
        path = tmp_path / "legacy.pt"
        torch.save(theirs, path, _use_new_zipfile_serialization=False)
    ours, ckpt = load_model(str(path))
    x = torch.randn(2, 1, 224, 224, generator=torch.Generator().manual_seed(3)) * 600
    expected, got = assert_same_outputs(theirs, ours, x, XRV_INDEX)
    infiltrates = (expected[:, 2] + expected[:, 1]) / 2
    assert torch.allclose(got[:, CLASSES.index("infiltrates")], infiltrates, rtol=0, atol=1e-5)
    assert torch.isnan(got[:, CLASSES.index("normal")]).all()
    assert ckpt["thresholds"] is None  # a file of no release's name: no published thresholds
    assert ours.card["architecture"] == "chexnet" and "1 channel" in ours.card["input"]


@pytest.mark.slow  # torchxrayvision's networks on full-size radiographs, or traintest.py
def test_resnet_logits_equal_torchxrayvisions(xrv_resnet):
    theirs, path = xrv_resnet
    ours, ckpt = load_model(str(path))
    assert_same_outputs(theirs, ours, torch.randn(1, 1, 512, 512, generator=torch.Generator().manual_seed(4)) * 600,
                        XRV_INDEX)
    # the file has its release name: its card's thresholds are torchxrayvision's op_threshs
    assert ckpt["thresholds"][CLASSES.index("atelectasis")] == pytest.approx(0.51570356)
    assert ours.card["name"] == "xrv:resnet50-res512-all" and ours.input_size == 512


@pytest.mark.slow  # torchxrayvision's networks on full-size radiographs, or traintest.py
def test_arnoweng_port_with_2017_names(arnoweng):
    theirs, path = arnoweng
    state = torch.load(path, weights_only=True)["state_dict"]
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state
    assert not any(k.endswith("num_batches_tracked") for k in state)
    ours, _ = load_model(str(path))
    assert_same_outputs(theirs, ours, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5)),
                        PORT_INDEX, sigmoid=True)
    assert ours.card["classes"] == published.CHEXNET_LABELS


def test_jrzech_whole_model(tmp_path):
    torch.manual_seed(6)
    net = torchvision.models.densenet121(weights=None)
    net.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    net.eval()
    torch.save({"model": net, "best_loss": 0.2, "epoch": 3, "rng_state": torch.get_rng_state(), "LR": 1e-4},
               tmp_path / "checkpoint")
    ours, _ = load_model(str(tmp_path / "checkpoint"))
    assert_same_outputs(net, ours, torch.randn(1, 3, 224, 224), PORT_INDEX, sigmoid=True)


# --------------------------------------------------------------------------------------------- bad input

class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_a_command_is_refused_unrun(tmp_path):
    marker = tmp_path / "it_ran"
    for legacy in (False, True):
        path = tmp_path / f"evil{legacy}.pt"
        torch.save({"model": RunsAShellCommand(marker)}, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match=r"holds Python objects \((posix|os)\.system\) which no model file "
                                                  r"holds \(refused: nothing of it was run\)"):
            load_model(str(path))
    assert not marker.exists()


def test_other_files_are_named_in_one_line(tmp_path):
    (tmp_path / "random.pt").write_bytes(os.urandom(300))
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    torch.save({"weights": [1, 2]}, tmp_path / "dict.pt")
    for name, message in (("random.pt", "is not a traintest.py checkpoint or a published model file: neither a "
                                         "torch.save file nor a pickle"),
                          ("plain.pkl", "is not a traintest.py checkpoint or a published model file: a plain Python "
                                        "pickle"),
                          ("dict.pt", "it has no 'model' weights and 'model_args' .*; nor is it a published model: "
                                      "it is none of the published formats")):
        with pytest.raises(CheckpointError, match=message) as e:
            load_model(str(tmp_path / name))
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_key_mismatch_is_named(tmp_path, xrv_densenet):
    """Never loaded with strict=False, which would leave the weight at its initial value."""
    state = published.module_state(published.safe_load(str(xrv_densenet[1])))
    del state["features.norm5.running_var"]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \(first: features\.norm5\.running_var\)"):
        load_model(str(tmp_path / "cut.pt"))


def no_network(*args, **kwargs):
    raise urllib.error.URLError("no network (test)")


@pytest.mark.slow  # torchxrayvision's networks on full-size radiographs, or traintest.py
def test_registry_resolves_to_torchxrayvisions_cache(monkeypatch, tmp_path, xrv_densenet):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(CheckpointError, match="no published model 'xrv:densenet121-res224-foo'; the names are "
                                              "xrv:densenet121-res224-all, "):
        load_model("xrv:densenet121-res224-foo")
    where = tmp_path / ".torchxrayvision" / "models_data" / ALL_FILE
    with pytest.raises(WeightsUnavailable, match=f"{where} is not there and could not be downloaded from "
                                                 f"{published.XRV_URL}{ALL_FILE}.*put it at {where}"):
        load_model("xrv:all")
    assert os.listdir(where.parent) == []
    where.write_bytes(xrv_densenet[1].read_bytes())
    model, ckpt = load_model("xrv:all")
    assert model.card["name"] == "xrv:densenet121-res224-all"
    assert "op_threshs of densenet121-res224-all" in model.card["thresholds"]
    assert ckpt["thresholds"][CLASSES.index("pneumothorax")] == pytest.approx(0.0098118475)
    # its labels at those thresholds are torchxrayvision's own binary decisions (op_norm's output above 0.5)
    theirs = xrv.models.DenseNet(weights="densenet121-res224-all", cache_dir=str(where.parent)).eval()
    x = torch.randn(4, 1, 224, 224, generator=torch.Generator().manual_seed(7)) * 600
    with torch.no_grad():
        decided = theirs(x) > 0.5
        ours = torch.sigmoid(model(x)) >= torch.tensor(ckpt["thresholds"])
    for c in ONE_TO_ONE:
        assert torch.equal(ours[:, CLASSES.index(c)], decided[:, XRV_INDEX[c]])


class CutShort(io.BytesIO):
    headers = {"Content-Length": "1000"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_cut_short_download_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: CutShort(b"x" * 10))
    with pytest.raises(WeightsUnavailable, match="cut short: 10 of 1000 bytes"):
        registry_path("xrv:nih", cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # torchxrayvision's networks on full-size radiographs, or traintest.py
def test_flags_that_contradict_the_card(traintest, radiographs, xrv_densenet, tmp_path, capsys):
    for flags, message in ((["--image-size", "320"], "--image-size 320 contradicts the card of densenet.pt"),
                           (["--model", "unified-vgg16"], "--model unified-vgg16 contradicts the card")):
        out = tmp_path / flags[0].strip("-")
        assert traintest("--predict", radiographs, "--load-model", xrv_densenet[1], "--output-dir", out,
                         *flags) == 2
        assert message in capsys.readouterr().err
        assert not (out / "train.log").exists()  # before any work


# ----------------------------------------------------------------------- --predict against their pipelines

def predicted(traintest, radiographs, model_file, run_dir, heatmaps=0):
    """predictions.csv of traintest.py --predict over the radiographs with `model_file`, by ImageID."""
    assert traintest("--predict", radiographs, "--load-model", model_file, "--output-dir", run_dir,
                     "--workers", "0", "--max-heatmaps", str(heatmaps)) == 0
    return pd.read_csv(run_dir / "predictions.csv").set_index("ImageID").sort_index()


def assert_agree(frame, expected, index, radiographs):
    """Our probabilities (predictions.csv) against theirs on the one-to-one classes: within 0.01. Returns the
    largest difference."""
    assert list(frame.index) == sorted(p.stem for p in radiographs.iterdir())
    worst = 0.0
    for c in ONE_TO_ONE:
        diff = np.abs(frame[f"prob_{c}"].to_numpy() - expected[:, index[c]])
        worst = max(worst, float(diff.max()))
    assert worst < 0.01
    return worst


@pytest.mark.slow  # torchxrayvision's networks on full-size radiographs, or traintest.py
def test_predict_agrees_with_torchxrayvisions_pipeline(traintest, radiographs, xrv_densenet, tmp_path):
    theirs, path = xrv_densenet
    frame = predicted(traintest, radiographs, path, tmp_path / "run", heatmaps=2)
    with torch.no_grad():
        expected = torch.sigmoid(theirs(radiograph_batch(radiographs))).numpy()
    print("densenet: largest difference", assert_agree(frame, expected, XRV_INDEX, radiographs))
    assert frame["prob_normal"].isna().all() and frame["label_normal"].isna().all()  # NA, never 0
    assert (frame["model"] == "densenet.pt (torchxrayvision.models.DenseNet)").all()
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["mapping"]["pleural effusion"] == "Effusion" and card["mapping"]["normal"] == "NA"
    assert all(isinstance(v, str) for v in card["mapping"].values()) and isinstance(card["input"], str)
    boxes = pd.read_csv(tmp_path / "run" / "boxes.csv")
    assert set(boxes["class"]) <= {c for c in CLASSES if card["mapping"][c] != "NA"}


@pytest.mark.slow  # torchxrayvision's networks on full-size radiographs, or traintest.py
def test_predict_agrees_for_the_resnet(traintest, radiographs, xrv_resnet, tmp_path):
    theirs, path = xrv_resnet
    frame = predicted(traintest, radiographs, path, tmp_path / "run")
    with torch.no_grad():
        expected = torch.sigmoid(theirs(radiograph_batch(radiographs, 512))).numpy()
    print("resnet: largest difference", assert_agree(frame, expected, XRV_INDEX, radiographs))


@pytest.mark.slow  # torchxrayvision's networks on full-size radiographs, or traintest.py
def test_predict_agrees_for_the_arnoweng_port(traintest, radiographs, arnoweng, tmp_path):
    theirs, path = arnoweng
    frame = predicted(traintest, radiographs, path, tmp_path / "run")
    with torch.no_grad():
        expected = theirs(torch.cat([imagenet_input(p) for p in sorted(radiographs.iterdir())])).numpy()
    print("port: largest difference", assert_agree(frame, expected, PORT_INDEX, radiographs))


def test_uncropped_maps_sit_on_the_centre_square():
    """A map of the centre square, put back on the whole (landscape) image: the square's own cells keep their
    values, the strips beside it are at the map's minimum."""
    maps = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) + 1
    whole = uncropped_maps(maps, torch.tensor([[100, 200]]), "center")
    assert whole.shape == (1, 1, 8, 8)
    assert torch.all(whole[..., :2] == 1) and torch.all(whole[..., -2:] == 1)  # outside: the minimum
    inner = whole[0, 0, :, 2:6]
    assert inner.max() > 10 and inner[0].mean() < inner[-1].mean()  # the square's rows, top to bottom




# ------------------------------------------------------------------------- judged like our own, on the sample world

@pytest.mark.slow
def test_test_only_heatmaps_compare_and_fine_tuning(traintest, xrv_densenet, arnoweng, tmp_path, capsys):
    """A saved torchxrayvision file and a CheXNet port on conftest's small world: --test-only with every table,
    heatmaps and boxes scored against a box CSV, utils.compare between the two, and a short fine-tuning."""
    from conftest import write_dataset
    from utils import compare
    csv = write_dataset(tmp_path / "world", n_train=16, n_val=12, n_test=12)
    test_ids = pd.read_csv(csv).query("split == 'test'")["ImageID"].tolist()
    boxes = tmp_path / "boxes.csv"
    pd.DataFrame({"Image Index": test_ids[:3], "Finding Label": ["Cardiomegaly", "Effusion", "Nodule"],
                  "x": [10, 30, 5], "y": [8, 20, 40], "w": [30, 20, 10], "h": [25, 20, 10]}).to_csv(boxes, index=False)
    common = ["--csv", csv, "--test-only", "--workers", "0", "--bootstrap", "20", "--batch-size", "6"]
    runs = {}
    for name, path in (("xrv", xrv_densenet[1]), ("port", arnoweng[1])):
        runs[name] = tmp_path / name
        assert traintest(*common, "--load-model", path, "--output-dir", runs[name], "--boxes-csv", boxes,
                         "--max-heatmaps", "3") == 0
    run = runs["xrv"]
    metrics = pd.read_csv(run / "metrics.csv")
    everything = metrics[metrics.group == "all"].set_index("class")
    assert math.isnan(everything.at["normal", "auroc"]) and everything.at["normal", "positives"] == 0  # NA
    assert not math.isnan(everything.at["cardiomegaly", "auroc"])
    assert (metrics["model"] == "densenet.pt (torchxrayvision.models.DenseNet)").all()
    for name in ("calibration.csv", "thresholds.csv", "localization.csv", "report.html", "model_card.json"):
        assert (run / name).is_file(), name
    assert len(os.listdir(run / "heatmaps")) > 1
    predictions = pd.read_csv(run / "predictions.csv")
    assert predictions["prob_normal"].isna().all() and predictions["prob_atelectasis"].notna().all()

    assert compare.main([str(runs["xrv"]), str(runs["port"]), "--bootstrap", "20"]) in (0, None)
    table = pd.read_csv(runs["port"] / "compare" / "xrv" / "compare.csv", keep_default_na=True).set_index("class")
    assert table.loc[ONE_TO_ONE, "auroc_a"].notna().any() and math.isnan(table.at["tuberculosis", "auroc_b"])
    capsys.readouterr()

    tuned = tmp_path / "tuned"
    assert traintest("--csv", csv, "--load-model", xrv_densenet[1], "--output-dir", tuned, "--epochs", "1",
                     "--batch-size", "4", "--max-train-batches", "2", "--workers", "0", "--bootstrap", "10",
                     "--max-heatmaps", "0", "--lr", "1e-5") == 0
    best = torch.load(tuned / "checkpoint_best.pt", weights_only=True)
    assert best["model_args"]["in_channels"] == 1 and best["model_args"]["crop"] == "center"
    assert best["model_args"]["num_classes"] == len(CLASSES)
    assert best["card"]["fine_tuned_from"] == "densenet.pt (torchxrayvision.models.DenseNet)"
    tuned_metrics = pd.read_csv(tuned / "metrics.csv")
    assert tuned_metrics[tuned_metrics.group == "all"].set_index("class")["auroc"].notna().sum() > 2
    model, _ = load_model(str(tuned / "checkpoint_best.pt"))  # ours now: every class predicted
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 1, 224, 224))).all()
