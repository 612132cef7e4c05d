"""Quality against a reference set: FID, sFID, IS, KID, precision / recall, the ADM evaluator's way.

Features come from torch-fidelity's port of the TF Inception 2015-12-05 graph
(`inception-v3-compat`, the network behind ADM's evaluator and the published tables),
never torch-fidelity's VGG default for precision / recall. Weights are read offline from
`weights-inception-2015-12-05-6726825d.pth` (explicit path, $HARNESS_INCEPTION_WEIGHTS or
the torch hub cache). One pass over the images yields the pool features (FID, KID, P/R), the
unbiased logits (IS) and the mixed_6/conv spatial features (sFID); metrics are torch-fidelity's
own functions. Reference statistics come from an ADM reference batch (`.npz` with `mu`,
`sigma`, `mu_s`, `sigma_s` and its images `arr_0`) or from a folder / `.npz` of real images,
cached by content hash. Without the weights, one line says what is missing and where it goes,
and the run continues with the metrics that need no Inception.
"""
from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.cache import atomic_write_bytes, cache_path, content_hash
from harness.metrics.sfid import capture_spatial_features, spatial_statistics
from harness.provenance import sha256_file, sha256_tree

FEATURE_EXTRACTOR = "inception-v3-compat"
POOL, LOGITS = "2048", "logits_unbiased"  # torch-fidelity feature names
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_ENV = "HARNESS_INCEPTION_WEIGHTS"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
REFERENCE_VERSION = 1

# Record keys.
FID, SFID = "fid", "sfid"
IS_MEAN, IS_STD = "is_mean", "is_std"
KID_MEAN, KID_STD = "kid_mean", "kid_std"
PRECISION, RECALL = "precision", "recall"
NUM_SAMPLES, NUM_REFERENCE = "num_samples", "num_reference"
SKIPPED = "skipped"  # metric -> why it was not computed
WEIGHTS_SHA256, REFERENCE_KEY = "inception_weights_sha256", "reference_key"
METRICS = ("fid", "sfid", "is", "kid", "prc")
BACKENDS = ("torch-fidelity", "clean-fid")

_warned: set[str] = set()


# ----------------------------------------------------------------------------------------
#                                     Inception weights
# ----------------------------------------------------------------------------------------

def hub_weights_path() -> Path:
    """Where torch-fidelity itself would cache the weights: <torch hub>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def weight_candidates(path: str | os.PathLike | None = None) -> list[Path]:
    candidates = [Path(path).expanduser()] if path else []
    if os.environ.get(INCEPTION_ENV):
        candidates.append(Path(os.environ[INCEPTION_ENV]).expanduser())
    candidates.append(hub_weights_path())
    return [c / INCEPTION_WEIGHTS_FILE if c.is_dir() else c for c in candidates]


def find_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The first existing weights file among: `path`, $HARNESS_INCEPTION_WEIGHTS, the torch hub cache."""
    return next((c for c in weight_candidates(path) if c.is_file()), None)


def missing_weights_message(path: str | os.PathLike | None = None) -> str:
    looked = ", ".join(str(c) for c in weight_candidates(path))
    return (f"Inception weights {INCEPTION_WEIGHTS_FILE} not found (looked in: {looked}); put the file at "
            f"{hub_weights_path()} or pass its path with --inception-weights / ${INCEPTION_ENV} "
            f"(it comes from {INCEPTION_WEIGHTS_URL}); FID, sFID, IS, KID and precision/recall are skipped")


def create_inception(weights: str | os.PathLike, device: str | torch.device = "cpu"):
    """torch-fidelity's Inception port with pool, unbiased-logit (and, by hook, spatial) outputs."""
    from torch_fidelity.utils import create_feature_extractor

    cuda = torch.device(device).type == "cuda"
    return create_feature_extractor(FEATURE_EXTRACTOR, [POOL, LOGITS], cuda=cuda,
                                    feature_extractor_weights_path=str(weights), verbose=False)


# ----------------------------------------------------------------------------------------
#                                          Images
# ----------------------------------------------------------------------------------------

class ImageArrayDataset(Dataset):
    """uint8 (N, H, W, C) images served as the uint8 (3, H, W) tensors torch-fidelity expects."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1)


def load_images(source: Any) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3) from an array / tensor (N, H, W, C), an `.npz` (`arr_0`) or a folder.

    Grayscale (C = 1) is repeated to three channels.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            images = _read_folder(path)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "arr_0" not in data:
                    raise ValueError(f"{path} holds no images (no 'arr_0'); accepted: an .npz of uint8 (N, H, W, 3) under 'arr_0'")
                images = data["arr_0"]
        else:
            raise FileNotFoundError(f"images {str(path)!r} not found; accepted: a folder of {'/'.join(IMAGE_EXTENSIONS)} files or an .npz with 'arr_0'")
    else:
        images = source.cpu().numpy() if torch.is_tensor(source) else np.asarray(source)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"images of shape {images.shape} and dtype {images.dtype}; accepted: uint8 (N, H, W, 1 or 3)")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _read_folder(folder: Path) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"folder {str(folder)!r} holds no images; accepted extensions: {', '.join(IMAGE_EXTENSIONS)}")
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"images in {str(folder)!r} differ in size: {sorted({a.shape for a in arrays})}; give one size")
    return np.stack(arrays)


# ----------------------------------------------------------------------------------------
#                                         Features
# ----------------------------------------------------------------------------------------

def inception_features(images: np.ndarray, extractor, batch_size: int = 50, verbose: bool = False) -> dict[str, torch.Tensor]:
    """{"2048": pool, "logits_unbiased": logits, "spatial": mixed_6/conv[:7]} for uint8 images (N, H, W, 3)."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    cuda = next(extractor.parameters()).is_cuda
    with capture_spatial_features(extractor) as spatial:
        features = get_featuresdict_from_dataset(ImageArrayDataset(images), extractor, min(batch_size, len(images)),
                                                 cuda, save_cpu_ram=True, verbose=verbose)
    features["spatial"] = torch.cat(spatial)
    return features


def fid_statistics(features: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    feats = np.asarray(features, dtype=np.float64)
    return {"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False)}


# ----------------------------------------------------------------------------------------
#                                   Reference statistics
# ----------------------------------------------------------------------------------------

@dataclass
class ReferenceStats:
    """Reference-side statistics: pool (FID) and spatial (sFID) Gaussians, pool features (KID, P/R)."""

    key: str
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    pool_features: np.ndarray | None = None
    num_images: int = 0


def is_adm_batch(path: Path) -> bool:
    if path.suffix != ".npz" or not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as data:
        return "mu" in data and "sigma" in data


def reference_key(reference: str | os.PathLike, weights_sha256: str) -> str:
    """Content hash of (reference bytes, Inception weights): the cache key of its statistics."""
    path = Path(reference)
    if not path.exists():
        raise FileNotFoundError(f"reference {str(path)!r} not found; accepted: an ADM reference batch .npz "
                                f"(e.g. VIRTUAL_imagenet256_labeled.npz), an .npz of images or a folder of images")
    source = sha256_tree(path) if path.is_dir() else sha256_file(path)
    return content_hash({"source": source, "weights": weights_sha256, "version": REFERENCE_VERSION})


def reference_statistics(reference: str | os.PathLike, extractor, weights_sha256: str, batch_size: int = 50,
                         verbose: bool = False) -> ReferenceStats:
    """Statistics of a reference, cached under the content hash of (reference bytes, Inception weights).

    Args:
        reference: an ADM reference batch (.npz with mu/sigma[/mu_s/sigma_s][/arr_0]), an .npz of
            images (arr_0) or a folder of images.
        extractor: `create_inception(...)`; weights_sha256: its weights' hash (part of the key).
    """
    path = Path(reference)
    key = reference_key(path, weights_sha256)
    entry = cache_path("reference", key, "npz")
    if entry.is_file():
        return _read_reference(entry, key)
    stats = _adm_reference(path, extractor, batch_size, verbose) if is_adm_batch(path) else \
        _image_reference(path, extractor, batch_size, verbose)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in stats.items() if v is not None})
    atomic_write_bytes(entry, buffer.getvalue())
    return _read_reference(entry, key)


def _adm_reference(path: Path, extractor, batch_size: int, verbose: bool) -> dict[str, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as data:
        stats = {k: data[k].astype(np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s") if k in data}
        images = data["arr_0"] if "arr_0" in data else None
    if images is not None:  # ADM's images serve KID and precision / recall; its own mu / sigma serve FID
        stats["pool_features"] = inception_features(load_images(images), extractor, batch_size, verbose)[POOL].numpy()
    return stats


def _image_reference(path: Path, extractor, batch_size: int, verbose: bool) -> dict[str, np.ndarray]:
    features = inception_features(load_images(path), extractor, batch_size, verbose)
    pool, spatial = fid_statistics(features[POOL]), spatial_statistics(features["spatial"])
    return {"mu": pool["mu"], "sigma": pool["sigma"], "mu_s": spatial["mu"], "sigma_s": spatial["sigma"],
            "pool_features": features[POOL].numpy()}


def _read_reference(entry: Path, key: str) -> ReferenceStats:
    with np.load(entry, allow_pickle=False) as data:
        get = lambda k: data[k] if k in data else None  # noqa: E731
        pool = get("pool_features")
        return ReferenceStats(key, data["mu"], data["sigma"], get("mu_s"), get("sigma_s"), pool,
                              0 if pool is None else len(pool))


# ----------------------------------------------------------------------------------------
#                                       Entry point
# ----------------------------------------------------------------------------------------

def compute_quality_metrics(images: Any, reference: str | os.PathLike | None = None, *,
                            inception_weights: str | os.PathLike | None = None, metrics: Sequence[str] = METRICS,
                            backends: Sequence[str] = ("torch-fidelity",), device: str | torch.device = "cpu",
                            batch_size: int = 50, isc_splits: int = 10, kid_subsets: int = 100,
                            kid_subset_size: int = 1000, prc_neighborhood: int = 3, seed: int = 2020,
                            cleanfid_torchscript_dir: str | os.PathLike | None = None, verbose: bool = False) -> dict[str, Any]:
    """FID, sFID, IS, KID and precision / recall of `images` against `reference`.

    Args:
        images: uint8 (N, H, W, C) array / tensor (e.g. `SampleOutput.images`), an .npz (`arr_0`) or a folder.
        reference: ADM reference batch, .npz of images or folder; None computes IS only.
        inception_weights: the weights file (default: $HARNESS_INCEPTION_WEIGHTS, then the torch hub cache).
        metrics: any of "fid", "sfid", "is", "kid", "prc" (torch-fidelity backend).
        backends: "torch-fidelity" (all metrics) and / or "clean-fid" (FID, KID in legacy_tensorflow mode).
        device: where Inception runs; batch_size: images per Inception batch.
        isc_splits, kid_subsets, kid_subset_size, prc_neighborhood: torch-fidelity's settings, capped
            to what the sample counts allow (the caps are recorded).
        seed: torch-fidelity's rng_seed (IS shuffling, KID subsets).
        cleanfid_torchscript_dir: folder with clean-fid's own `inception-2015-12-05.pt` (optional).
    Returns:
        {FID: ..., SFID: ..., ..., SKIPPED: {metric: reason}, NUM_SAMPLES, NUM_REFERENCE, WEIGHTS_SHA256, REFERENCE_KEY}
    """
    unknown = sorted(set(metrics) - set(METRICS)) + sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown quality metric(s) / backend(s) {', '.join(map(repr, unknown))}; "
                         f"accepted metrics: {', '.join(METRICS)}; backends: {', '.join(BACKENDS)}")
    images = load_images(images)
    out: dict[str, Any] = {NUM_SAMPLES: len(images), SKIPPED: {}, WEIGHTS_SHA256: None, REFERENCE_KEY: None}
    if "torch-fidelity" in backends:
        settings = dict(isc_splits=isc_splits, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                        prc_neighborhood=prc_neighborhood, rng_seed=seed, verbose=verbose)
        out.update(_torch_fidelity_metrics(images, reference, inception_weights, metrics, device, batch_size,
                                           settings, out[SKIPPED]))
    if "clean-fid" in backends:
        from harness.metrics.cleanfid_backend import CLEANFID_FID, CLEANFID_KID, compute_cleanfid_metrics

        if reference is None:
            out[SKIPPED].update({CLEANFID_FID: "no reference given", CLEANFID_KID: "no reference given"})
        else:
            extra = compute_cleanfid_metrics(images, reference, inception_weights=inception_weights,
                                             torchscript_dir=cleanfid_torchscript_dir, device=device, seed=seed)
            out[SKIPPED].update(extra.pop("skipped"))
            out.update(extra)
    return out


def _torch_fidelity_metrics(images: np.ndarray, reference: str | os.PathLike | None, inception_weights: Any,
                            metrics: Sequence[str], device: str | torch.device, batch_size: int,
                            settings: dict[str, Any], skipped: dict[str, str]) -> dict[str, Any]:
    weights = find_inception_weights(inception_weights)
    if weights is None:
        message = missing_weights_message(inception_weights)
        if message not in _warned:  # one line per process, however many cells
            _warned.add(message)
            print(f"harness: {message}", file=sys.stderr)
        skipped.update({m: message for m in metrics})
        return {}
    out: dict[str, Any] = {WEIGHTS_SHA256: sha256_file(weights)}
    extractor = create_inception(weights, device)
    features = inception_features(images, extractor, batch_size, settings["verbose"])
    if "is" in metrics:
        out.update(_inception_score(features, settings))
    wanted = [m for m in metrics if m != "is"]
    if wanted and reference is None:
        skipped.update({m: "no reference given" for m in wanted})
    elif wanted:
        ref = reference_statistics(reference, extractor, out[WEIGHTS_SHA256], batch_size, settings["verbose"])
        out.update({REFERENCE_KEY: ref.key, NUM_REFERENCE: ref.num_images})
        out.update(_reference_metrics(features, ref, wanted, settings, skipped))
    return out


def _inception_score(features: dict[str, torch.Tensor], settings: dict[str, Any]) -> dict[str, Any]:
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_featuresdict_to_metric

    splits = min(settings["isc_splits"], len(features[LOGITS]))
    result = isc_featuresdict_to_metric(features, LOGITS, **{**settings, "isc_splits": splits})
    return {IS_MEAN: result[KEY_METRIC_ISC_MEAN], IS_STD: result[KEY_METRIC_ISC_STD], "is_splits": splits}


def _reference_metrics(features: dict[str, torch.Tensor], ref: ReferenceStats, wanted: list[str],
                       settings: dict[str, Any], skipped: dict[str, str]) -> dict[str, Any]:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_featuresdict_to_metric

    out: dict[str, Any] = {}
    if "fid" in wanted:
        reference = {"mu": ref.mu.astype(np.float64), "sigma": ref.sigma.astype(np.float64)}
        out[FID] = fid_statistics_to_metric(fid_statistics(features[POOL]), reference, False)[KEY_METRIC_FID]
    if "sfid" in wanted:
        if ref.mu_s is None:
            skipped["sfid"] = "the reference batch has no spatial statistics (mu_s, sigma_s)"
        else:
            reference = {"mu": ref.mu_s.astype(np.float64), "sigma": ref.sigma_s.astype(np.float64)}
            out[SFID] = fid_statistics_to_metric(spatial_statistics(features["spatial"]), reference, False)[KEY_METRIC_FID]
    needs_images = [m for m in ("kid", "prc") if m in wanted]
    if needs_images and ref.pool_features is None:
        skipped.update({m: "the reference batch has no images (arr_0)" for m in needs_images})
        return out
    reference_features = {POOL: torch.from_numpy(ref.pool_features).float()} if needs_images else {}
    if "kid" in wanted:
        size = min(settings["kid_subset_size"], len(features[POOL]), len(ref.pool_features))
        result = kid_featuresdict_to_metric(features, reference_features, POOL, **{**settings, "kid_subset_size": size})
        out.update({KID_MEAN: result[KEY_METRIC_KID_MEAN], KID_STD: result[KEY_METRIC_KID_STD], "kid_subset_size": size})
    if "prc" in wanted:
        result = prc_featuresdict_to_metric(features, reference_features, POOL, **settings)
        out.update({PRECISION: result[KEY_METRIC_PRECISION], RECALL: result[KEY_METRIC_RECALL]})
    return out
