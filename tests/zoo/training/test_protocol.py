"""Evaluation protocol v2 on a real BreastMNIST subset: choices made on a validation subset
scaled like the training subset, the test split opened once and last, ACC beside the
majority-class rate, and a paired bootstrap interval that tells a real gap from none."""

from __future__ import annotations

import pytest
import torch

from tests.utils import breast_subset
from zoo.architectures import build_encoder
from zoo.datasets.readers import Dataset, Split
from zoo.training.protocol import (
    ProtocolV2,
    classification_metrics,
    evaluate_v2,
    fit_all,
    paired_bootstrap,
    val_subset,
)


@pytest.fixture(scope="module")
def breast() -> Dataset:
    return breast_subset(200, 80, 120)


def encoder(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder("resnet18", 2, 1, [28, 28], {"widths": [8, 8, 16, 16]}).eval()


def test_validation_subset_is_scaled_like_the_training_subset(breast: Dataset) -> None:
    labels = breast.splits["val"].labels
    idx = val_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[idx], minlength=2)
    assert len(idx) <= round(0.1 * len(labels)) + 2 and bool((counts >= 1).all())


def test_test_split_is_opened_once_after_every_choice(breast: Dataset) -> None:
    plan = ProtocolV2(fractions=[0.1, 1.0], subset_seeds=[0, 1], bootstrap=50)
    encoders = {"ssl": [encoder(10), encoder(11)], "random_init": [encoder(0), encoder(1)]}
    fits = fit_all(encoders, breast.splits["train"], breast.splits["val"], 2, plan,
                   log=lambda _: None)
    assert len(fits) == 2 * 2 * len(plan.protocols) * 2 * 2  # arms x reps x protocols x ...
    for f in fits:  # every choice is on record, from its grid, on a scaled validation subset
        key = "weight_decay" if f.protocol == "linear_probe" else "k"
        assert f.protocol == "knn" or f.chosen[key] in f.chosen["grid"]
        assert f.chosen["val_images"] <= max(2, round(f.fraction * 80) + 2)

    log: list[str] = []
    opened: list[int] = []

    def open_test() -> Split:  # the evaluator may ask for the test split only when done
        opened.append(sum("fitted" in line for line in log))
        return breast.splits["test"]

    rows = evaluate_v2(encoders, breast.splits["train"], breast.splits["val"], open_test, 2,
                       "breastmnist", plan, log=log.append)
    assert opened == [4]  # called once, after all four replicates were fitted and tuned
    assert sum("fitted" in line for line in log) == 4  # and nothing was fitted after it
    ssl = [r for r in rows if r["arm"] == "ssl"]
    assert ssl and all("vs_random_init" in r for r in ssl)
    for r in rows:
        assert {"auc", "acc", "balanced_acc", "majority_rate", "auc_sd"} <= set(r)
        assert r["runs"] == 4 and len(r["chosen"]) == 4


def test_metrics_show_a_classifier_at_the_majority_rate(breast: Dataset) -> None:
    labels = breast.splits["test"].labels
    always_majority = torch.zeros(len(labels), 2)
    always_majority[:, int(torch.bincount(labels).argmax())] = 1.0
    m = classification_metrics(always_majority, labels)
    assert m["acc"] == pytest.approx(m["majority_rate"])
    assert m["balanced_acc"] == pytest.approx(0.5)


def test_paired_bootstrap_separates_a_real_gap_from_none(breast: Dataset) -> None:
    labels = breast.splits["test"].labels
    gen = torch.Generator().manual_seed(0)
    truth = torch.nn.functional.one_hot(labels, 2).float()
    good = [0.8 * truth + 0.2 * torch.rand(len(labels), 2, generator=gen) for _ in range(3)]
    noise = [torch.rand(len(labels), 2, generator=gen) for _ in range(3)]
    gap = paired_bootstrap(good, noise, labels, n=200)
    assert gap["diff_lo"] > 0.2 and gap["vs_best_lo"] > 0.1
    other = [torch.rand(len(labels), 2, generator=gen) for _ in range(3)]
    same = paired_bootstrap(noise, other, labels, n=200)  # two arms of chance predictors
    assert same["diff_lo"] < 0 < same["diff_hi"]


def test_noise_rows_score_the_same_probes_on_corrupted_test_images(breast: Dataset) -> None:
    from zoo.training.protocol import corrupt

    images = breast.splits["test"].images
    noisy = corrupt(images, "speckle:0.3")
    assert noisy.dtype == torch.uint8 and noisy.shape == images.shape
    assert torch.equal(noisy, corrupt(images, "speckle:0.3"))  # seeded
    assert not torch.equal(noisy, images)
    # speckle is multiplicative: black stays black; gaussian noise lifts it
    dark = images == 0
    assert bool((noisy[dark] == 0).all())
    assert bool((corrupt(images, "gaussian:0.3")[dark] > 0).any())
    for bad in ("salt:0.1", "gaussian", "gaussian:2"):
        with pytest.raises(ValueError, match="noise"):
            corrupt(images, bad)

    plan = ProtocolV2(fractions=[1.0], subset_seeds=[0], protocols=["linear_probe"],
                      bootstrap=50, test_noise=["gaussian:0.5"])
    rows = evaluate_v2({"ssl": [encoder(10)], "random_init": [encoder(0)]},
                       breast.splits["train"], breast.splits["val"],
                       lambda: breast.splits["test"], 2, "breastmnist", plan,
                       log=lambda _: None)
    clean = [r for r in rows if "test_noise" not in r]
    noisy_rows = [r for r in rows if r.get("test_noise") == "gaussian:0.5"]
    assert len(clean) == len(noisy_rows) == 2
    # the same fitted probes: the choices are identical, the scores are not
    assert [r["chosen"] for r in clean] == [r["chosen"] for r in noisy_rows]
    assert [r["auc"] for r in clean] != [r["auc"] for r in noisy_rows]


def test_best_init_is_the_best_replicate_averaged_over_its_subsets(breast: Dataset) -> None:
    """One init with a lucky and an unlucky label subset is not 'the best init' on the
    strength of its lucky run alone."""
    labels = breast.splits["test"].labels
    perfect = torch.nn.functional.one_hot(labels, 2).float()
    wrong = 1 - perfect
    middle = torch.full_like(perfect, 0.5)
    # init 0: subsets scoring AUC 1 and 0 (mean 0.5); SSL: AUC 0.5 in both runs
    grouped = paired_bootstrap([middle, middle], [perfect, wrong], labels, n=100,
                               base_replicates=[0, 0])
    per_run = paired_bootstrap([middle, middle], [perfect, wrong], labels, n=100)
    assert grouped["vs_best_lo"] == grouped["vs_best_hi"] == 0.0
    assert per_run["vs_best_hi"] == -0.5
