"""Domain metrics for the embedded digits models: a small digit classifier's features, FID / KID / PR on them.

Inception features say little about 8x8 grayscale digits, so the embedded default measures FID,
unbiased KID and precision / recall on a small CNN's penultimate (fc, 128-d) features, projected on
their 32 principal axes and whitened ("domain FID", `feature_basis` says why). The CNN is trained on
digits that no compared set contains (`harness.metrics.domain_sets`: classifier / reference / floor
roles), generated images are scored against the reference role, and the floor role gives a real-data
floor of the same size. Every set metric comes with bootstrap replicates
over images on the shared resampling plan (`harness.bootstrap`), so tables can pair any two cells.
The classifier is also registered as a torch-fidelity feature extractor (`DOMAIN_EXTRACTOR`) for
anyone who wants torch-fidelity's own metrics on these features; the tests check both agree.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import bootstrap
from harness.data import NUM_CLASSES, load_digits_split, upsample
from harness.metrics.feature_stats import ReferenceSet, frechet_distance, kernel_distance, precision_recall
from harness.models.vae import to_uint8

DOMAIN_EXTRACTOR = "digits-cnn"  # torch-fidelity feature extractor name
CLASSIFIER_NAME = "digits-classifier"  # its entry in harness/zoo/manifest.json ("classifiers")
CLASSIFIER_SIZE = 16  # inputs are resized (bilinear) to this many pixels
FEATURE_LAYERS = ("conv", "fc", "logits")  # (N, 64) pooled conv, (N, 128) penultimate, (N, 10) logits
DEFAULT_FEATURE_LAYER = "fc"
FEATURE_COMPONENTS = 32  # principal axes of the fc features that the set metrics use (whitened)
FEATURE_SPACE = f"{DEFAULT_FEATURE_LAYER}-pca{FEATURE_COMPONENTS}-whitened"  # named in every record's provenance

# Keys of `domain_metrics`.
DOMAIN_FID = "domain_fid"
DOMAIN_KID = "domain_kid"  # unbiased MMD^2 on the whole sets (no subsets)
DOMAIN_PRECISION = "domain_precision"
DOMAIN_RECALL = "domain_recall"
DOMAIN_ACCURACY = "domain_class_accuracy"  # share of samples classified as their conditioning label
DOMAIN_NUM_SAMPLES = "domain_num_samples"
DOMAIN_NUM_REFERENCE = "domain_num_reference"
BOOTSTRAP_KEY = "bootstrap"  # replicates of the set metrics (harness.bootstrap), a nested object
FLOOR_KEY = "floor"  # the real-data floor of the same size (full-compute cells only), a nested object
DOMAIN_KEYS = (DOMAIN_FID, DOMAIN_KID, DOMAIN_PRECISION, DOMAIN_RECALL, DOMAIN_ACCURACY, DOMAIN_NUM_SAMPLES,
               DOMAIN_NUM_REFERENCE, BOOTSTRAP_KEY)
BOOTSTRAPPED = (DOMAIN_FID, DOMAIN_KID, DOMAIN_ACCURACY)
FEATURE_DISTANCE = "domain_feature_distance"  # fidelity: LPIPS-like distance to the full-compute image


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


def train_classifier(epochs: int = 120, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple[DigitsClassifier, dict]:
    """Trains the domain classifier on the "classifier" role's digits (16x16, uint8-rounded, random 1-pixel shifts).

    Those are the 359 held-out digits (`harness.metrics.domain_sets`): neither the DiTs nor the reference
    and floor sets contain them, so the feature space is not fitted to any image a metric compares.
    Deterministic: one torch thread, a seeded generator for init, shuffling and shifts.

    Args:
        epochs, batch_size, lr: Adam's schedule (constant lr).
        seed: torch seed for init, shuffling and shifts.
    Returns the classifier (eval mode) and a summary with its accuracy on the unseen train split.
    """
    import time

    from harness.metrics.domain_sets import role_images

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU kernels' reduction order, hence the weights, depend on the thread count
    try:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        images, y, data_hash = role_images("classifier", CLASSIFIER_SIZE)
        x = quantize(images)
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
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    summary = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "train_role": "classifier",
               "train_data_hash": data_hash, "device": "cpu (1 thread)", "wall_time_s": round(wall, 1),
               "final_loss": round(loss.item(), 6), "unseen_accuracy": round(unseen_accuracy(model), 4)}
    return model, summary


@torch.no_grad()
def unseen_accuracy(model: DigitsClassifier, resolution: int = CLASSIFIER_SIZE) -> float:
    """Top-1 accuracy on the train split (the reference and floor roles, which the classifier never saw), uint8-rounded."""
    train = load_digits_split("train", resolution)
    predictions = model.eval()(quantize(train.images)).argmax(dim=1)
    return (predictions == train.labels).float().mean().item()


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
                 data="the 359 held-out digits (harness.metrics.domain_sets role 'classifier'); accuracy on the 1,438 unseen train digits",
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


@torch.no_grad()
def raw_features(images: np.ndarray, layer: str = DEFAULT_FEATURE_LAYER) -> np.ndarray:
    """The classifier's `layer` activations (N, d) float64 of uint8 images (N, H, W, C)."""
    if layer not in FEATURE_LAYERS:
        raise ValueError(f"unknown feature layer {layer!r}; accepted: {', '.join(FEATURE_LAYERS)}")
    x = uint8_to_input(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    return _classifier().features(x)[layer].double().numpy()


@functools.lru_cache(maxsize=None)
def feature_basis(*, layer: str = DEFAULT_FEATURE_LAYER, resolution: int = CLASSIFIER_SIZE,
                  whiten: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """The evaluation feature space: mean, top `FEATURE_COMPONENTS` principal axes (d, k) and the KID scale.

    Fitted on the classifier role's digits (the classifier's own training images, which no compared set
    contains), so the space is fixed before any generated, reference or floor image is seen. Each axis is
    divided by the real digits' standard deviation along it (`whiten`), so FID measures a distribution's
    offset in units of natural variation on every axis (a Mahalanobis metric). Unwhitened, the first few
    axes (stroke mass, class identity) hold most of the variance; the embedded DiTs sit far from the data
    along them, which made FID noisy (paired 95% half-widths of 2-4 FID against DDIM-25 vs DDIM-50
    differences of 2-3) and let any approximation that drifted along them score *better* than full
    compute. Whitened, the finer axes that step budgets and reuse change count as much: the same images
    resolve DDIM-25 vs DDIM-50 at z = 9-10 and rank every approximation at or below full compute
    (results/embedded/README.md "Resolving power"). Fewer axes than the classifier's 128 keep the noisy
    low-variance tail out.
    The KID scale makes the projected features' root-mean-square coordinate 1 (whitened: 1 by construction),
    so the polynomial kernel sees O(1) inputs (as with Inception features).
    """
    images, _, _ = role_uint8("classifier", resolution)
    raw = raw_features(images, layer)
    mean = raw.mean(axis=0)
    _, singular, vt = np.linalg.svd(raw - mean, full_matrices=False)
    basis = vt[:FEATURE_COMPONENTS].T
    basis = basis * np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])])  # sign-fixed axes
    if whiten:
        basis = basis / (singular[:FEATURE_COMPONENTS] / np.sqrt(len(raw)))
    projected = (raw - mean) @ basis
    return mean, basis, float(np.sqrt((projected ** 2).mean()))


def image_features(images: np.ndarray, layer: str = DEFAULT_FEATURE_LAYER, whiten: bool = True) -> np.ndarray:
    """Evaluation features (N, FEATURE_COMPONENTS): the classifier's `layer` projected on `feature_basis`."""
    mean, basis, _ = feature_basis(layer=layer, whiten=whiten)
    return (raw_features(images, layer) - mean) @ basis


@functools.lru_cache(maxsize=None)
def _classifier() -> DigitsClassifier:
    return load_classifier()


@functools.lru_cache(maxsize=None)
def role_uint8(role: str, resolution: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A role's digits (`domain_sets`) as uint8 (N, H, W, 1) the way a sampler writes them, labels, content hash."""
    from harness.metrics.domain_sets import role_images

    images, labels, data_hash = role_images(role, resolution)
    return to_uint8(images), labels.numpy(), data_hash


@functools.lru_cache(maxsize=None)
def reference_set(resolution: int, *, layer: str = DEFAULT_FEATURE_LAYER, whiten: bool = True) -> ReferenceSet:
    """The reference role's features at `resolution` (computed once per process)."""
    images, _, _ = role_uint8("reference", resolution)
    return ReferenceSet(image_features(images, layer, whiten), kid_scale=feature_basis(layer=layer, whiten=whiten)[2])


def reference_name(resolution: int) -> str:
    """Names the reference set and the feature space: content hash and classifier sha256."""
    _, _, data_hash = role_uint8("reference", resolution)
    return f"digits-reference-{resolution}px-{data_hash[:16]}-clf{classifier_entry()['sha256'][:16]}"


def domain_provenance(model_or_resolution: str | int) -> dict:
    """Hashes a record needs to say which features and reference produced its domain metrics."""
    resolution = resolve_resolution(model_or_resolution)
    return {"domain_feature_extractor": DOMAIN_EXTRACTOR, "domain_classifier_sha256": classifier_entry()["sha256"],
            "domain_reference": reference_name(resolution), "domain_feature_layer": DEFAULT_FEATURE_LAYER,
            "domain_feature_components": FEATURE_COMPONENTS, "domain_feature_space": FEATURE_SPACE,
            "domain_replicate_plan_seed": bootstrap.PLAN_SEED}


@torch.no_grad()
def correct_labels(images: np.ndarray, labels: np.ndarray | list[int]) -> np.ndarray:
    """Per image: does the classifier assign it its label (bool, N)."""
    logits = torch.from_numpy(raw_features(images, "logits"))
    return (logits.argmax(dim=1) == torch.as_tensor(np.asarray(labels))).numpy()


def conditional_accuracy(images: np.ndarray, labels: np.ndarray | list[int]) -> float:
    """Share of uint8 images (N, H, W, C) that the classifier assigns to their label."""
    return float(correct_labels(images, labels).mean())


def domain_metrics(images: np.ndarray, model_or_resolution: str | int | None = None, labels=None,
                   feature_layer: str = DEFAULT_FEATURE_LAYER, prc_neighborhood: int = 3,
                   replicates: int = bootstrap.REPLICATES) -> dict:
    """Domain FID, unbiased KID, precision / recall against the reference digits, with bootstrap replicates.

    Args:
        images: generated uint8 images (N, H, W, C), C = 1 or 3; image i pairs with image i of every other
            cell with the same seeds and labels.
        model_or_resolution: "embedded/digits-8", 16, ... (default: the images' height); picks the reference.
        labels: the conditioning labels, one per image, for `DOMAIN_ACCURACY` (omitted when None).
        feature_layer: the classifier layer, one of `FEATURE_LAYERS`.
        prc_neighborhood: k of the k-NN manifolds for precision / recall.
        replicates: bootstrap replicates stored per set metric (0: none).
    Returns a dict with the `DOMAIN_*` keys and `BOOTSTRAP_KEY` (replicates as `harness.bootstrap` text).
    """
    resolution = resolve_resolution(model_or_resolution, images)
    if images.shape[1:3] != (resolution, resolution):
        raise ValueError(f"images are {images.shape[1]}x{images.shape[2]}; the reference for this model is {resolution}x{resolution}")
    if len(images) < prc_neighborhood + 1:
        raise ValueError(f"need at least {prc_neighborhood + 1} images for domain metrics; got {len(images)}")
    reference = reference_set(resolution, layer=feature_layer)
    features = image_features(images, feature_layer)
    precision, recall = precision_recall(features, reference, prc_neighborhood)
    out = {DOMAIN_FID: float(frechet_distance(features, reference)[0]),
           DOMAIN_KID: float(kernel_distance(features, reference)[0]),
           DOMAIN_PRECISION: precision, DOMAIN_RECALL: recall,
           DOMAIN_NUM_SAMPLES: len(images), DOMAIN_NUM_REFERENCE: len(reference.features)}
    correct = None
    if labels is not None:
        correct = correct_labels(images, labels).astype(np.float64)
        out[DOMAIN_ACCURACY] = float(correct.mean())
    if replicates:
        counts = bootstrap.resample_counts(len(images), replicates)
        reps = {DOMAIN_FID: frechet_distance(features, reference, counts),
                DOMAIN_KID: kernel_distance(features, reference, counts)}
        if correct is not None:
            reps[DOMAIN_ACCURACY] = counts @ correct / len(images)
        out[BOOTSTRAP_KEY] = {"replicates": replicates, "plan_seed": bootstrap.PLAN_SEED, "encoding": bootstrap.ENCODING,
                              **{k: bootstrap.encode(out[k], v) for k, v in reps.items()}}
    return out


def floor_images(resolution: int, n: int, seed_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The real-data floor's set `seed_index` of n images: disjoint from the reference and from other seed sets.

    Raises when the floor role holds fewer than (seed_index + 1) * n digits: a smaller or overlapping
    floor would not be comparable with n generated images (FID's finite-sample bias depends on n).
    """
    images, labels, _ = role_uint8("floor", resolution)
    if (seed_index + 1) * n > len(images):
        raise ValueError(f"a real-data floor of {n} images for seed set {seed_index} needs {(seed_index + 1) * n} "
                         f"floor digits; there are {len(images)} (use at most {len(images) // (seed_index + 1)} "
                         "images per seed set)")
    return images[seed_index * n:(seed_index + 1) * n], labels[seed_index * n:(seed_index + 1) * n]


def floor_available(model_or_resolution: str | int, n: int, seed_index: int = 0) -> bool:
    """Whether the floor role holds a disjoint set of n digits for seed set `seed_index`."""
    return (seed_index + 1) * n <= len(role_uint8("floor", resolve_resolution(model_or_resolution))[1])


def floor_metrics(model_or_resolution: str | int, n: int, seed_index: int = 0, **options) -> dict:
    """`domain_metrics` of the floor's set `seed_index` of n real digits (what a perfect model would score)."""
    resolution = resolve_resolution(model_or_resolution)
    images, labels = floor_images(resolution, n, seed_index)
    out = domain_metrics(images, resolution, labels=labels, **options)
    out["floor_data_hash"] = role_uint8("floor", resolution)[2]
    return out


def feature_distance(images: np.ndarray, reference_images: np.ndarray) -> np.ndarray:
    """Per-image LPIPS-like distance (N,): squared distance of unit-normalised fc features of paired images."""
    a, b = image_features(images), image_features(reference_images)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return ((a - b) ** 2).sum(axis=1)
