"""PyTorch twins of gm's benchmarked models, driven line by line by `cargo xtask speed`.

Each family module (flow.py, vae.py, ...) exposes `CASES`, a dict from a case name (the same
name gm's speed harness uses) to a factory `make(device, compiled) -> case`, where `case.step()`
runs one unit of work (a whole training step, or one sampling call) exactly as gm does it, and
`case.params` is the number of trainable scalars. With `compiled`, the factory wraps the
model's computation in `torch.compile` (the optimizer stays eager, as most users run it).

Protocol (one JSON object per reply line):
    setup CASE       -> {"ok": true, "params": N, "flops": F}   (F: one step's matmul/conv FLOPs)
    time CASE N      -> {"ok": true, "seconds": S}              (N steps back to back)
    matmul           -> {"ok": true, "gflops": G}               (the machine's sgemm throughput)
    quit
"""

import importlib
import json
import os
import sys
import time
import traceback

import torch

FAMILIES = ["flow", "vae", "autoregressive", "gan", "diffusion"]


def all_cases():
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    cases = {}
    for family in FAMILIES:
        try:
            module = importlib.import_module(family)
        except ModuleNotFoundError:
            continue
        for name, make in module.CASES.items():
            cases[name] = make
    return cases


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(case):
    """Matrix-multiply and convolution FLOPs of one step, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        case.step()
    return counter.get_total_flops()


def matmul_gflops(device, size=1024, repeats=20):
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return 2.0 * size**3 / times[len(times) // 2] / 1e9


def main():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=["eager", "compile"], default="eager")
    parser.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    makers = all_cases()
    built = {}

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "quit":
                break
            elif words[0] == "list":
                reply({"ok": True, "cases": sorted(makers)})
            elif words[0] == "matmul":
                reply({"ok": True, "gflops": matmul_gflops(device)})
            elif words[0] == "setup":
                name = words[1]
                if name not in makers:
                    reply({"ok": False, "error": f"no twin for case {name}"})
                    continue
                torch.manual_seed(0)
                case = makers[name](device, args.mode == "compile")
                flops = count_flops(case) if args.mode == "eager" else 0
                for _ in range(args.warmup):
                    case.step()
                synchronize(device)
                built[name] = case
                reply({"ok": True, "params": int(case.params), "flops": int(flops)})
            elif words[0] == "time":
                case = built[words[1]]
                steps = int(words[2])
                synchronize(device)
                start = time.perf_counter()
                for _ in range(steps):
                    case.step()
                synchronize(device)
                reply({"ok": True, "seconds": time.perf_counter() - start})
            else:
                reply({"ok": False, "error": f"unknown command {words[0]}"})
        except Exception as error:  # reported to the caller, which shows it in the table
            reply({"ok": False, "error": f"{type(error).__name__}: {error}",
                   "trace": traceback.format_exc()[-2000:]})


if __name__ == "__main__":
    main()
