import os

import pytest
import torch

from models import ALIASES, MODEL_NAMES, build_model
from models.pooling import GlobalPool, lse_reference
from utils.checkpoint import CheckpointError, WeightsUnavailable, load_checkpoint, pretrained_model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_exposes_the_map_the_classifier_reads(name):
    torch.manual_seed(0)
    model = build_model(name, 22).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = model.feature_map(x)
        pooled = model.pool(fmap)
        logits = model(x)
    assert fmap.ndim == 4 and fmap.shape[0] == 2 and fmap.shape[2] >= 1
    assert isinstance(model.classifier, torch.nn.Linear)
    assert model.classifier.in_features == fmap.shape[1] and model.classifier.out_features == 22
    assert pooled.shape == (2, fmap.shape[1])
    torch.testing.assert_close(logits, model.classifier(pooled))
    # The class activation map identity step 5 relies on: for average pooling the logit is the mean of the CAM.
    if model.pool.mode == "avg":
        cam = torch.einsum("cd,bdhw->bchw", model.classifier.weight, fmap)
        torch.testing.assert_close(cam.mean(dim=(2, 3)) + model.classifier.bias, logits, rtol=1e-4, atol=1e-4)


def test_unified_model_trains_one_step_at_small_size():
    torch.manual_seed(0)
    model = build_model("unified-resnet50", 22, pooling="max").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 2, (4, 22)).float()
    before = model.classifier.weight.detach().clone()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.classifier.weight)


def test_seed_names_are_aliases():
    assert ALIASES["resnet"] == "unified-resnet50" and ALIASES["vgg"] == "unified-vgg16"
    assert ALIASES["densenet"] == "chexnet"
    assert type(build_model("densenet", 3)).__name__ == "CheXNet"
    with pytest.raises(ValueError, match="unknown model"):
        build_model("inception", 3)


def test_map_size_gives_a_uniform_map():
    model = build_model("unified-alexnet", 5, map_size=8).eval()
    with torch.no_grad():
        assert model.feature_map(torch.randn(1, 3, 96, 96)).shape[-2:] == (8, 8)


def test_lse_pooling_matches_the_formula_and_its_limits():
    torch.manual_seed(0)
    fmap = torch.randn(3, 4, 5, 5)
    for r in (0.1, 1.0, 10.0):
        torch.testing.assert_close(GlobalPool("lse", r)(fmap).double(), lse_reference(fmap, r), rtol=1e-5, atol=1e-5)
    # Between average and max, close to max for a large r.
    lse = GlobalPool("lse", 10.0)(fmap)
    assert torch.all(lse <= fmap.flatten(2).amax(2) + 1e-6) and torch.all(lse >= fmap.flatten(2).mean(2) - 1e-6)
    torch.testing.assert_close(GlobalPool("lse", 1e4)(fmap), GlobalPool("max")(fmap), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(GlobalPool("avg")(fmap), fmap.mean(dim=(2, 3)))


def test_lse_pooling_is_stable_where_the_naive_formula_overflows():
    big = torch.full((1, 2, 4, 4), 100.0)
    big[0, 1] = -100.0
    naive32 = torch.log(torch.exp(10.0 * big.flatten(2)).mean(2)) / 10.0
    assert not torch.isfinite(naive32).all()
    out = GlobalPool("lse", 10.0)(big)
    torch.testing.assert_close(out, torch.tensor([[100.0, -100.0]]))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch.hub cache (TORCH_HOME) and a machine without network: every HTTPS request goes to a proxy on a
    closed port, so torchvision's download fails at once, as on a VM without internet access."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_pretrained_offline_says_which_file_to_put_where(tmp_path, offline):
    from utils.checkpoint import cached_weights_path
    path = cached_weights_path("densenet121")
    assert path == str(offline / "densenet121-a639ec97.pth")
    with pytest.raises(WeightsUnavailable) as error:
        pretrained_model("chexnet", 22)
    message = str(error.value)
    assert f"are not at {path} and could not be downloaded from " \
           "https://download.pytorch.org/models/densenet121-a639ec97.pth" in message
    assert f"copy it to {path}" in message and "--weights" in message and "\n" not in message
    assert not os.path.exists(path)  # nothing half-downloaded left behind
    bogus = tmp_path / "bogus.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bogus)
    with pytest.raises(WeightsUnavailable, match="does not hold"):
        pretrained_model("unified-alexnet", 22, str(bogus))


def test_pretrained_reads_a_file_put_in_the_hub_cache_without_downloading(offline):
    from torchvision.models import alexnet
    torch.manual_seed(2)
    reference = alexnet(weights=None)
    offline.mkdir(parents=True)
    torch.save(reference.state_dict(), offline / "alexnet-owt-7be5be79.pth")  # the name torchvision downloads to
    model = pretrained_model("unified-alexnet", 22)
    torch.testing.assert_close(model.backbone[0].weight, reference.features[0].weight)


def test_pretrained_loads_a_weights_file(tmp_path):
    from torchvision.models import googlenet
    torch.manual_seed(1)
    reference = googlenet(weights=None, aux_logits=True, init_weights=True)  # the published file has aux heads
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    model = pretrained_model("unified-googlenet", 22, str(path))
    torch.testing.assert_close(model.backbone[0].conv.weight, reference.conv1.conv.weight)
    # its weights were trained on input in [-1, 1]: that normalization is the model's, and its checkpoint's
    assert model.mean == model.std == (0.5, 0.5, 0.5) and model.model_args["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("name, options", [("unified-alexnet", {"pooling": "avg", "map_size": 4}),
                                           ("chexnet", {"input_size": 32})])
def test_model_args_rebuild_the_model(tmp_path, name, options):
    model = build_model(name, 22, **options).eval()
    again = build_model(**model.model_args).eval()
    again.load_state_dict(model.state_dict())
    assert again.model_args == model.model_args
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_load_checkpoint_reads_the_first_format_too(tmp_path):
    # A checkpoint from before model_args: the flags it stored describe the model.
    model = build_model("unified-alexnet", 22, pooling="avg")
    path = tmp_path / "c.pt"
    args = {"model": "alexnet", "num_classes": 22, "pooling": "avg", "lse_r": 10.0, "image_size": 64,
            "transition_dim": None, "pretrained": 1}
    torch.save({"model": model.state_dict(), "args": args, "epoch": 1}, path)
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and loaded.pool.mode == "avg" and loaded.input_size == 64
    assert loaded.mean == (0.485, 0.456, 0.406)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    torch.save({"model": model.state_dict(), "args": dict(args, num_classes=5)}, path)
    with pytest.raises(CheckpointError, match="5 classes"):
        load_checkpoint(path)
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a traintest.py checkpoint"):
        load_checkpoint(path)
    torch.save({"model": model.state_dict(), "args": dict(args, model="inception")}, path)
    with pytest.raises(CheckpointError, match="describe no model of this toolkit"):
        load_checkpoint(path)


@pytest.mark.parametrize("pretrained, mean", [(1, (0.5, 0.5, 0.5)), (0, (0.485, 0.456, 0.406))])
def test_a_first_format_googlenet_checkpoint_gets_the_input_it_was_trained_on(tmp_path, pretrained, mean):
    # Before model_args, GoogLeNet turned ImageNet-normalized input into its weights' [-1, 1] inside the model when
    # it was built with ImageNet weights; the flags say whether it was.
    model = build_model("unified-googlenet", 22)
    path = tmp_path / "g.pt"
    flags = {"model": "unified-googlenet", "num_classes": 22, "pooling": "lse", "lse_r": 10.0, "image_size": 96,
             "pretrained": pretrained}
    torch.save({"model": model.state_dict(), "args": flags}, path)
    loaded, _ = load_checkpoint(path)
    assert loaded.mean == mean and loaded.input_size == 96


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_min_input_size_is_the_smallest_side_each_network_accepts(name):
    from models import MIN_INPUT_SIZE
    low = MIN_INPUT_SIZE[name]
    model = build_model(name, 22, input_size=max(low, 32)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, low, low)).shape == (1, 22)
        if low > 1:
            with pytest.raises(RuntimeError, match="too small"):
                model(torch.zeros(1, 3, low - 1, low - 1))
    with pytest.raises(ValueError, match=f"below {name}.s minimum input of {low} pixels"):
        build_model(name, 22, input_size=low - 1)
