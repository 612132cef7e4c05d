"""clean-fid (Parmar et al., 2022) as a second FID / KID backend, in its `legacy_tensorflow` mode.

`legacy_tensorflow` feeds unresized uint8 images to the TF-2015 Inception, which resizes
inside the network as TF 1.x did: the mode whose numbers compare with the papers' tables.
clean-fid's own code reads the images, extracts features and computes FID (scipy `sqrtm`)
and KID. The network is clean-fid's TorchScript `inception-2015-12-05.pt` when its folder is
given, else torch-fidelity's port of the same graph (same weights file as
`harness.metrics.quality`). Custom reference statistics are computed with clean-fid's
feature path and cached under our content-hash cache (clean-fid's own `make_custom_stats`
writes into site-packages, which a benchmark must not do).
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.cache import atomic_write_bytes, cache_path, content_hash
from harness.metrics.quality import (create_inception, find_inception_weights, is_adm_batch, load_images,
                                     missing_weights_message)
from harness.provenance import sha256_file, sha256_tree

MODE = "legacy_tensorflow"
TORCHSCRIPT_FILE = "inception-2015-12-05.pt"  # clean-fid's own network (nvlabs' TorchScript export)
REFERENCE_VERSION = 1

# Record keys.
CLEANFID_FID, CLEANFID_KID = "cleanfid_fid", "cleanfid_kid"
CLEANFID_MODE, CLEANFID_NETWORK = "cleanfid_mode", "cleanfid_network"


class PortedInception(torch.nn.Module):
    """clean-fid's feature-model interface (float [0, 255] NCHW -> (N, 2048)) over torch-fidelity's port."""

    def __init__(self, extractor: torch.nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        # legacy_tensorflow does no resizing outside the network, so values are exact integers
        return self.extractor(batch.round().clamp(0, 255).to(torch.uint8))[0]


def create_feature_model(inception_weights: str | os.PathLike | None, torchscript_dir: str | os.PathLike | None,
                         device: str | torch.device) -> tuple[torch.nn.Module, str, str]:
    """(feature model, network name, sha256 of its weights); raises FileNotFoundError naming what is missing."""
    if torchscript_dir is not None:
        from cleanfid.inception_torchscript import InceptionV3W

        path = Path(torchscript_dir) / TORCHSCRIPT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"clean-fid network {path} not found; pass the folder holding {TORCHSCRIPT_FILE}")
        return InceptionV3W(str(torchscript_dir), download=False, resize_inside=True).to(device).eval(), "torchscript", sha256_file(path)
    weights = find_inception_weights(inception_weights)
    if weights is None:
        raise FileNotFoundError(missing_weights_message(inception_weights))
    return PortedInception(create_inception(weights, device)), "torch-fidelity-port", sha256_file(weights)


def folder_features(folder: str | os.PathLike, model: torch.nn.Module, device: str | torch.device, batch_size: int) -> np.ndarray:
    """clean-fid's own folder path: file reading, legacy_tensorflow resizer, batching."""
    from cleanfid.fid import get_folder_features

    return get_folder_features(str(folder), model, num_workers=0, batch_size=batch_size, device=torch.device(device),
                               mode=MODE, verbose=False)


def array_features(images: np.ndarray, model: torch.nn.Module, device: str | torch.device, batch_size: int) -> np.ndarray:
    """Features of in-memory images, written losslessly as PNG so clean-fid reads them as files."""
    with tempfile.TemporaryDirectory(prefix="harness-cleanfid-") as folder:
        for i, image in enumerate(images):
            Image.fromarray(image).save(Path(folder) / f"{i:06d}.png")
        return folder_features(folder, model, device, batch_size)


def features_of(source: Any, model: torch.nn.Module, device: str | torch.device, batch_size: int) -> np.ndarray:
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        return folder_features(source, model, device, batch_size)
    return array_features(load_images(source), model, device, batch_size)


def cleanfid_reference(reference: str | os.PathLike, model: torch.nn.Module, weights_sha256: str,
                       device: str | torch.device, batch_size: int) -> dict[str, np.ndarray]:
    """Custom statistics {"mu", "sigma"[, "feats"]} of a reference, cached by content hash."""
    path = Path(reference)
    if not path.exists():
        raise FileNotFoundError(f"reference {str(path)!r} not found; accepted: an ADM reference batch .npz, an .npz of images or a folder")
    source = sha256_tree(path) if path.is_dir() else sha256_file(path)
    entry = cache_path("cleanfid-reference", content_hash({"source": source, "weights": weights_sha256, "mode": MODE,
                                                           "version": REFERENCE_VERSION}), "npz")
    if not entry.is_file():
        if is_adm_batch(path):
            with np.load(path, allow_pickle=False) as data:
                stats = {"mu": data["mu"].astype(np.float64), "sigma": data["sigma"].astype(np.float64)}
                if "arr_0" in data:
                    stats["feats"] = array_features(load_images(data["arr_0"]), model, device, batch_size)
        else:
            feats = features_of(path, model, device, batch_size)
            stats = {"mu": np.mean(feats, axis=0), "sigma": np.cov(feats, rowvar=False), "feats": feats}
        buffer = io.BytesIO()
        np.savez(buffer, **stats)
        atomic_write_bytes(entry, buffer.getvalue())
    with np.load(entry, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def compute_cleanfid_metrics(images: Any, reference: str | os.PathLike, *, inception_weights: str | os.PathLike | None = None,
                             torchscript_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                             batch_size: int = 32, kid: bool = True, seed: int = 0) -> dict[str, Any]:
    """FID (and KID) with clean-fid's code in legacy_tensorflow mode.

    Args:
        images: uint8 (N, H, W, C) array / tensor, an .npz (`arr_0`) or a folder of images.
        reference: ADM reference batch (its mu / sigma are used as custom statistics), .npz of images or folder.
        inception_weights: torch-fidelity's weights file for the ported network (default search as in quality).
        torchscript_dir: folder with clean-fid's `inception-2015-12-05.pt`, preferred when given.
        device, batch_size: where and in what batches the network runs.
        kid: also compute KID (needs reference images); seed: KID's subset sampling.
    """
    out: dict[str, Any] = {CLEANFID_MODE: MODE, "skipped": {}}
    try:
        model, network, weights_sha = create_feature_model(inception_weights, torchscript_dir, device)
    except FileNotFoundError as err:
        print(f"harness: {err}", file=sys.stderr)
        out["skipped"] = {CLEANFID_FID: str(err), **({CLEANFID_KID: str(err)} if kid else {})}
        return out
    from cleanfid.fid import frechet_distance, kernel_distance

    feats = features_of(images, model, device, batch_size)
    ref = cleanfid_reference(reference, model, weights_sha, device, batch_size)
    out.update({CLEANFID_NETWORK: network, "cleanfid_weights_sha256": weights_sha})
    out[CLEANFID_FID] = float(frechet_distance(np.mean(feats, axis=0), np.cov(feats, rowvar=False), ref["mu"], ref["sigma"]))
    if kid and "feats" not in ref:
        out["skipped"][CLEANFID_KID] = "the reference batch has no images (arr_0)"
    elif kid:
        state = np.random.get_state()  # clean-fid samples KID subsets from numpy's global generator
        np.random.seed(seed)
        try:
            out[CLEANFID_KID] = kernel_distance(ref["feats"], feats)
        finally:
            np.random.set_state(state)
    return out
