"""Domain metrics for the embedded digits models: a small digit classifier as torch-fidelity's feature extractor.

Inception features say little about 8x8 grayscale digits, so the embedded default measures
FID / KID / precision-recall on the penultimate features of a CNN trained on the same train
split ("domain FID"). The classifier is registered with `torch_fidelity.register_feature_extractor`
under `DOMAIN_EXTRACTOR`, so the metrics go through torch-fidelity's own code; the held-out
split's features and FID statistics are cached by torch-fidelity (atomically) under a name
that holds the split's content hash and the classifier's sha256.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.cache import cache_root
from harness.data import NUM_CLASSES, load_digits_split, upsample
from harness.metrics.quality import ImageArrayDataset
from harness.models.vae import to_uint8

DOMAIN_EXTRACTOR = "digits-cnn"  # torch-fidelity feature extractor name
CLASSIFIER_NAME = "digits-classifier"  # its entry in harness/zoo/manifest.json ("classifiers")
CLASSIFIER_SIZE = 16  # inputs are resized (bilinear) to this many pixels
FEATURE_LAYERS = ("conv", "fc", "logits")  # (N, 64) pooled conv, (N, 128) penultimate, (N, 10) logits
DEFAULT_FEATURE_LAYER = "fc"

# Keys of `domain_metrics` (torch-fidelity's values, renamed with a domain_ prefix).
DOMAIN_FID = "domain_fid"
DOMAIN_KID_MEAN = "domain_kid_mean"
DOMAIN_KID_STD = "domain_kid_std"
DOMAIN_PRECISION = "domain_precision"
DOMAIN_RECALL = "domain_recall"
DOMAIN_F_SCORE = "domain_f_score"
DOMAIN_ACCURACY = "domain_class_accuracy"  # share of samples classified as their conditioning label
DOMAIN_NUM_SAMPLES = "domain_num_samples"
DOMAIN_KEYS = (DOMAIN_FID, DOMAIN_KID_MEAN, DOMAIN_KID_STD, DOMAIN_PRECISION, DOMAIN_RECALL, DOMAIN_F_SCORE,
               DOMAIN_ACCURACY, DOMAIN_NUM_SAMPLES)
_FIDELITY_KEYS = {
    "frechet_inception_distance": DOMAIN_FID, "kernel_inception_distance_mean": DOMAIN_KID_MEAN,
    "kernel_inception_distance_std": DOMAIN_KID_STD, "precision": DOMAIN_PRECISION, "recall": DOMAIN_RECALL,
    "f_score": DOMAIN_F_SCORE,
}


#################################################################################
#                                 The classifier                                #
#################################################################################

class DigitsClassifier(nn.Module):
    """Four 3x3 convolutions, two 2x2 poolings, a 128-unit hidden layer, 10 logits; 16x16 grayscale in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 4 * 4, 128)
        self.head = nn.Linear(128, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All feature layers for images x (N, 1, h, w) in [-1, 1] (resized to 16x16 here)."""
        x = upsample(x, CLASSIFIER_SIZE)
        h = self.conv(x)  # (N, 64, 4, 4)
        fc = F.relu(self.fc(h.flatten(1)))  # (N, 128)
        return {"conv": h.mean(dim=(2, 3)), "fc": fc, "logits": self.head(fc)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]


def uint8_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) with C = 1 or 3 (gray replicated) -> float (N, 1, H, W) in [-1, 1]."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1 or 3, H, W); got shape {tuple(images.shape)}")
    return images[:, :1].float() / 127.5 - 1.0


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the same images after the sampler's uint8 rounding, back in [-1, 1]."""
    return uint8_to_input(torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2))


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shifts each image by up to `max_shift` pixels (background fill -1), for a classifier that generalises."""
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    size = x.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
    return torch.stack([pad[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets.tolist())])


def train_classifier(epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple[DigitsClassifier, dict]:
    """Trains the domain classifier on the train split (16x16, uint8-rounded, random 1-pixel shifts).

    Args:
        epochs, batch_size, lr: Adam's schedule (constant lr).
        seed: torch seed for init, shuffling and shifts.
    Returns the classifier (eval mode) and a summary with the held-out accuracy.
    """
    import time

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train = load_digits_split("train", CLASSIFIER_SIZE)
    x, y = quantize(train.images), train.labels
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for lo in range(0, len(y), batch_size):
            idx = order[lo:lo + batch_size]
            loss = F.cross_entropy(model(random_shift(x[idx], generator)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    summary = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "train_data_hash": train.data_hash,
               "device": f"cpu ({torch.get_num_threads()} threads)",
               "wall_time_s": round(time.perf_counter() - start, 1), "final_loss": round(loss.item(), 6),
               "heldout_accuracy": round(heldout_accuracy(model), 4)}
    return model, summary


@torch.no_grad()
def heldout_accuracy(model: DigitsClassifier, resolution: int = CLASSIFIER_SIZE) -> float:
    """Top-1 accuracy on the held-out split at `resolution`, after uint8 rounding."""
    heldout = load_digits_split("heldout", resolution)
    predictions = model.eval()(quantize(heldout.images)).argmax(dim=1)
    return (predictions == heldout.labels).float().mean().item()


def install_classifier(model: DigitsClassifier, summary: dict, command: str, zoo_dir: str | os.PathLike | None = None) -> dict:
    """Writes the classifier's fp16 weights and its manifest entry to the zoo; returns the entry."""
    from harness.models.zoo import ZOO_DIR, record_entry
    from harness.provenance import sha256_file
    from harness.cache import atomic_torch_save

    zoo = Path(zoo_dir or ZOO_DIR)
    zoo.mkdir(parents=True, exist_ok=True)
    file = CLASSIFIER_NAME + ".pt"
    atomic_torch_save({k: v.half() for k, v in model.state_dict().items()}, zoo / file)
    entry = dict(summary, name=CLASSIFIER_NAME, kind="classifier", file=file, sha256=sha256_file(zoo / file), dtype="float16",
                 architecture="DigitsClassifier (4 conv 3x3, 2 maxpool, fc 128, 10 logits), 16x16 input",
                 training_command=command, feature_extractor=DOMAIN_EXTRACTOR)
    record_entry(entry, zoo)
    return entry


def classifier_entry(zoo_dir: str | os.PathLike | None = None) -> dict:
    from harness.models.zoo import ZOO_DIR, read_manifest

    entries = read_manifest(zoo_dir or ZOO_DIR)
    if entries.get(CLASSIFIER_NAME, {}).get("kind") != "classifier":
        raise FileNotFoundError(f"the domain classifier {CLASSIFIER_NAME!r} is not in the zoo manifest; "
                                "train it with `python -m harness train digits-classifier --install`")
    return entries[CLASSIFIER_NAME]


def load_classifier(path: str | os.PathLike | None = None) -> DigitsClassifier:
    """The shipped classifier (sha256-checked against the manifest), or the weights at `path`; eval mode, float32."""
    from harness.models.zoo import ZOO_DIR, verified_file

    file = Path(path) if path is not None else verified_file(classifier_entry(), CLASSIFIER_NAME, ZOO_DIR)
    model = DigitsClassifier()
    state = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


#################################################################################
#                        torch-fidelity feature extractor                       #
#################################################################################

def _extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class DigitsFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor: the digit classifier's layers for uint8 (N, 1 or 3, H, W) images."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.classifier = load_classifier(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return FEATURE_LAYERS

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits"}.get(metric, DEFAULT_FEATURE_LAYER)

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, CLASSIFIER_SIZE, CLASSIFIER_SIZE, dtype=torch.uint8)

        def forward(self, x):
            features = self.classifier.features(uint8_to_input(x))
            return tuple(features[name].double() for name in self.features_list)

    return DigitsFeatureExtractor


def register_domain_extractor() -> str:
    """Registers the digit classifier with torch-fidelity (once); returns its name, `DOMAIN_EXTRACTOR`."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if DOMAIN_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN_EXTRACTOR, _extractor_class())
    return DOMAIN_EXTRACTOR


#################################################################################
#                          Reference and domain metrics                         #
#################################################################################

def cache_dir() -> Path:
    """Where torch-fidelity caches the reference features and statistics: <harness cache>/domain."""
    return cache_root() / "domain"


def resolve_resolution(model_or_resolution: str | int | None, images: np.ndarray | None = None) -> int:
    """A pixel size from an embedded model name, an int, or (None) the images' own height."""
    from harness.models.zoo import EMBEDDED_ARCHS, canonical_name

    if isinstance(model_or_resolution, str):
        return EMBEDDED_ARCHS[canonical_name(model_or_resolution)]["input_size"]
    if model_or_resolution is None and images is not None:
        return int(images.shape[1])
    if not isinstance(model_or_resolution, int) or model_or_resolution < 1:
        raise ValueError(f"expected an embedded model name or a positive resolution; got {model_or_resolution!r}")
    return model_or_resolution


def reference_images(resolution: int) -> tuple[np.ndarray, str]:
    """The held-out split at `resolution` as uint8 (N, H, W, 1), and the cache name holding its content hash."""
    heldout = load_digits_split("heldout", resolution)
    images = to_uint8(heldout.images)
    name = f"digits-heldout-{resolution}px-{heldout.data_hash[:16]}-clf{classifier_entry()['sha256'][:16]}"
    return images, name


def domain_provenance(model_or_resolution: str | int) -> dict:
    """Hashes a record needs to say which features and reference produced its domain metrics."""
    resolution = resolve_resolution(model_or_resolution)
    _, name = reference_images(resolution)
    return {"domain_feature_extractor": DOMAIN_EXTRACTOR, "domain_classifier_sha256": classifier_entry()["sha256"],
            "domain_reference": name, "domain_feature_layer": DEFAULT_FEATURE_LAYER}


@torch.no_grad()
def conditional_accuracy(images: np.ndarray, labels: np.ndarray | list[int]) -> float:
    """Share of uint8 images (N, H, W, C) that the classifier assigns to their label."""
    x = uint8_to_input(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    predictions = load_classifier()(x).argmax(dim=1)
    return (predictions == torch.as_tensor(np.asarray(labels))).float().mean().item()


def domain_metrics(images: np.ndarray, model_or_resolution: str | int | None = None, labels=None,
                   feature_layer: str = DEFAULT_FEATURE_LAYER, kid_subsets: int = 100, prc_neighborhood: int = 3,
                   verbose: bool = False) -> dict[str, float]:
    """Domain FID, KID, precision / recall against the held-out digits (and accuracy given labels).

    Args:
        images: generated uint8 images (N, H, W, C), C = 1 or 3.
        model_or_resolution: "embedded/digits-8", 16, ... (default: the images' height); picks the reference.
        labels: the conditioning labels, one per image, for `DOMAIN_ACCURACY` (omitted when None).
        feature_layer: the classifier layer for FID / KID / PR, one of `FEATURE_LAYERS`.
        kid_subsets: KID subsets; the subset size is min(1000, N, reference size).
        prc_neighborhood: k of the k-NN manifolds for precision / recall.
    Returns a dict with the `DOMAIN_*` keys.
    """
    import torch_fidelity

    if feature_layer not in FEATURE_LAYERS:
        raise ValueError(f"unknown feature layer {feature_layer!r}; accepted: {', '.join(FEATURE_LAYERS)}")
    resolution = resolve_resolution(model_or_resolution, images)
    if images.shape[1:3] != (resolution, resolution):
        raise ValueError(f"images are {images.shape[1]}x{images.shape[2]}; the reference for this model is {resolution}x{resolution}")
    reference, cache_name = reference_images(resolution)
    if len(images) < prc_neighborhood + 1:
        raise ValueError(f"need at least {prc_neighborhood + 1} images for domain metrics; got {len(images)}")
    result = torch_fidelity.calculate_metrics(
        input1=ImageArrayDataset(images), input2=ImageArrayDataset(reference), input2_cache_name=cache_name,
        cache_root=str(cache_dir()), feature_extractor=register_domain_extractor(), feature_layer_fid=feature_layer,
        feature_layer_kid=feature_layer, feature_layer_prc=feature_layer, fid=True, kid=True, prc=True,
        kid_subsets=kid_subsets, kid_subset_size=min(1000, len(images), len(reference)),
        prc_neighborhood=prc_neighborhood, cuda=False, save_cpu_ram=True, batch_size=256, verbose=verbose,
    )
    out = {_FIDELITY_KEYS[k]: float(v) for k, v in result.items() if k in _FIDELITY_KEYS}
    out[DOMAIN_NUM_SAMPLES] = len(images)
    if labels is not None:
        out[DOMAIN_ACCURACY] = conditional_accuracy(images, labels)
    return out
