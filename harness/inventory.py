"""Which weights this machine has and where the harness looked for them (for `harness info`)."""
from __future__ import annotations

from typing import Any

from harness.models.checkpoints import resolve_checkpoint
from harness.models.vae import VAE_REPOS, find_vae

OFFICIAL_CHECKPOINTS = {  # model name -> (file name, image size)
    "DiT-XL/2@256": ("DiT-XL/2", "DiT-XL-2-256x256.pt", 256),
    "DiT-XL/2@512": ("DiT-XL/2", "DiT-XL-2-512x512.pt", 512),
}


def _probe(kind: str, name: str, find) -> dict[str, Any]:
    try:
        return {"kind": kind, "name": name, "found": True, "path": str(find())}
    except FileNotFoundError as err:
        return {"kind": kind, "name": name, "found": False, "path": None, "detail": str(err)}


def weights_inventory() -> list[dict[str, Any]]:
    """One entry per known weight file: found or not, its path, or where the harness looked."""
    from harness.metrics.quality import find_inception_weights, missing_weights_message
    from harness.models.zoo import read_manifest

    entries = [
        _probe("checkpoint", key, lambda m=model, f=file, s=size: resolve_checkpoint(m, f, s))
        for key, (model, file, size) in OFFICIAL_CHECKPOINTS.items()
    ]
    entries += [_probe("vae", name, lambda n=name: find_vae(n)) for name in VAE_REPOS]
    inception = find_inception_weights()
    entries.append({"kind": "inception", "name": "inception-v3-compat", "found": inception is not None,
                    "path": str(inception) if inception else None,
                    **({} if inception else {"detail": missing_weights_message()})})
    entries += [
        {"kind": "embedded", "name": name, "found": True, "path": entry.get("file"), "sha256": entry.get("sha256")}
        for name, entry in read_manifest().items()
    ]
    return entries
