from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from backdoorlab.metrics import predict_logits
from backdoorlab.training import TrainRecipe, fit, lr_at, resolve_device
from tests.conftest import tiny_net


def _init(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny_net()


def test_fit_learns_toy(toy):
    model = _init()
    hist = fit(model, toy, TrainRecipe(epochs=5, batch_size=32, lr=0.05), device="cpu")
    assert len(hist) == 5
    assert hist[-1]["loss"] < hist[0]["loss"]
    acc = (predict_logits(model, toy).argmax(1) == toy.labels).float().mean()
    assert acc > 0.9


def test_fit_is_deterministic(toy):
    recipe = TrainRecipe(epochs=2, batch_size=32, lr=0.05, crop_padding=1, flip=True)
    a, b = _init(), _init()
    fit(a, toy, recipe, seed=3, device="cpu")
    fit(b, toy, recipe, seed=3, device="cpu")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = _init()
    fit(c, toy, recipe, seed=4, device="cpu")
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_resume_matches_uninterrupted(toy, tmp_path):
    recipe = TrainRecipe(epochs=4, batch_size=32, lr=0.05)
    full = _init()
    h_full = fit(full, toy, recipe, seed=1, device="cpu")
    part = _init()
    fit(part, toy, recipe.model_copy(update={"epochs": 2}), seed=1, device="cpu", checkpoint_dir=tmp_path)
    resumed = _init(99)  # weights are overwritten by the checkpoint
    h_res = fit(resumed, toy, recipe, seed=1, device="cpu", checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in h_res] == [1, 2, 3, 4]
    assert h_res[-1]["loss"] == pytest.approx(h_full[-1]["loss"], rel=1e-5)
    for pa, pb in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_callback_stops_early_and_progress_reported(toy):
    calls = []
    hist = fit(
        _init(),
        toy,
        TrainRecipe(epochs=5, batch_size=100),
        device="cpu",
        callbacks=[lambda epoch, logs, model: epoch >= 2],
        progress=lambda s, t, info: calls.append((s, t)),
    )
    assert len(hist) == 2
    assert calls[0] == (1, 15) and calls[-1] == (6, 15)


def test_custom_objective_is_used(toy):
    seen = []

    def objective(model, x, y):
        seen.append(len(x))
        return torch.nn.functional.cross_entropy(model(x), y)

    hist = fit(_init(), toy, TrainRecipe(epochs=1, batch_size=100), objective=objective, device="cpu")
    assert seen == [100, 100, 100]
    assert "train_acc" not in hist[0]


def test_schedules():
    r = TrainRecipe(lr=1.0, schedule="multistep", milestones=(2, 4), gamma=0.1, epochs=6)
    assert [lr_at(r, e) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    r = TrainRecipe(lr=1.0, schedule="cosine", epochs=4)
    assert lr_at(r, 0) == 1.0 and lr_at(r, 2) == pytest.approx(0.5)
    r = TrainRecipe(lr=1.0, schedule="step", step_size=2, gamma=0.5)
    assert lr_at(r, 3) == 0.5


def test_recipe_validation_names_field():
    with pytest.raises(ValidationError, match="epochs"):
        TrainRecipe(epochs=-1)
    with pytest.raises(ValidationError, match="milestones"):
        TrainRecipe(schedule="multistep")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}


def test_augment_mask_keeps_flagged_out_samples_as_stored(toy):
    from backdoorlab.data.loader import Augment, Batches

    mask = torch.arange(len(toy)) % 2 == 0  # augment even samples only
    batches = Batches(toy, 64, augment=Augment(crop_padding=2, flip=True), augment_mask=mask, seed=0)
    x, _ = next(iter(batches))
    original = toy.float01(slice(0, 64))
    assert torch.equal(x[1::2], original[1::2])
    assert not torch.equal(x[0::2], original[0::2])
    with pytest.raises(Exception, match="one flag per sample"):
        Batches(toy, 64, augment=Augment(flip=True), augment_mask=mask[:10])
