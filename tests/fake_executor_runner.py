#!/usr/bin/env python3
"""Stands in for ExecuTorch's executor_runner on a fake phone: the same flags, the host runtime, the same log.

Reads raw little-endian input tensors (shapes and dtypes from the program's method meta), runs
`--num_executions` times, writes output 0's raw bytes to --output_file and prints the real
runner's log lines: "Model loaded in X ms", "Iteration i of N: X ms", "Model executed successfully N time(s) in X ms."
"""
import argparse
import time

import numpy as np
import torch

DTYPES = {6: np.float32, 4: np.int64, 3: np.int32}  # ExecuTorch ScalarType codes

parser = argparse.ArgumentParser()
parser.add_argument("--model_path", required=True)
parser.add_argument("--inputs", default="")
parser.add_argument("--output_file")
parser.add_argument("--num_executions", type=int, default=1)
parser.add_argument("--cpu_threads", type=int)
parser.add_argument("--method_name", default="forward")
args = parser.parse_args()

from executorch.runtime import Runtime  # noqa: E402

started = time.perf_counter()
program = Runtime.get().load_program(args.model_path)
method = program.load_method(args.method_name)
meta = program.metadata(args.method_name)
print(f"I 00:00:00.001 executorch:executor_runner.cpp:150] Model loaded in {(time.perf_counter() - started) * 1e3:.3f} ms")
inputs = []
for i, path in enumerate(p for p in args.inputs.split(",") if p):
    info = meta.input_tensor_meta(i)
    inputs.append(torch.from_numpy(np.fromfile(path, dtype=DTYPES[info.dtype()]).reshape(info.sizes()).copy()))
total = 0.0
for i in range(args.num_executions):
    started = time.perf_counter()
    outputs = method.execute(inputs)
    elapsed = (time.perf_counter() - started) * 1e3
    total += elapsed
    print(f"I 00:00:00.002 executorch:executor_runner.cpp:290] Iteration {i} of {args.num_executions}: {elapsed:.3f} ms")
print(f"I 00:00:00.003 executorch:executor_runner.cpp:300] Model executed successfully {args.num_executions} time(s) in {total:.3f} ms.")
if args.output_file:
    outputs[0].numpy().astype(np.float32).tofile(args.output_file)
