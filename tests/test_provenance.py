"""Provenance: every record says what software, hardware, settings and files produced it."""
from __future__ import annotations

import hashlib

import torch

from harness.provenance import collect_provenance, config_hash, sha256_file, sha256_tree


def test_record_carries_versions_device_threads_tf32_commit_and_config_hash():
    record = collect_provenance({"model": "DiT-XL/2", "steps": 50})
    assert record["packages"]["torch"] == torch.__version__.split("+")[0]
    assert record["packages"]["torch-fidelity"] and record["packages"]["clean-fid"]
    assert record["torch_threads"] == torch.get_num_threads()
    assert record["tf32_matmul"] == torch.backends.cuda.matmul.allow_tf32
    assert "tf32_cudnn" in record and "torch_cuda" in record and record["device_name"]
    assert record["git_commit"] is None or len(record["git_commit"].split("-")[0]) == 40
    assert record["config_hash"] == config_hash({"steps": 50, "model": "DiT-XL/2"})  # key order does not matter


def test_files_are_hashed_by_role_and_missing_ones_recorded_as_none(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"weights")
    record = collect_provenance(files={"checkpoint": ckpt, "inception_weights": tmp_path / "absent.pth", "reference": None})
    assert record["files_sha256"] == {"checkpoint": hashlib.sha256(b"weights").hexdigest(),
                                      "inception_weights": None, "reference": None}


def test_file_hash_follows_the_content(tmp_path):
    path = tmp_path / "stats.npz"
    path.write_bytes(b"a")
    first = sha256_file(path)
    path.write_bytes(b"bb")
    assert sha256_file(path) != first


def test_folder_hash_covers_names_and_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"x")
    first = sha256_tree(tmp_path / "a")
    (tmp_path / "a" / "0.png").rename(tmp_path / "a" / "1.png")
    assert sha256_tree(tmp_path / "a") != first


def test_config_hash_changes_with_any_value():
    assert config_hash({"steps": 50}) != config_hash({"steps": 49})
