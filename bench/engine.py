"""Engine overhead: `Model.infer` against raw `onnxruntime.InferenceSession.run`, same model, same session options.

Usage: python bench/engine.py [--rounds 5] [--round-seconds 2] [--warmup 1] [--out bench/results]

Builds two models in a temporary folder (torch → ONNX, opset 17, dynamic batch) and times both paths in the same
process, in alternating rounds (forwardpass.measure's timing loop), for:

- a small ResNet-style CNN (~1.1 GFLOPs at 224x224) at batch 32: the engine must be the cost (target ratio >= 0.97);
- a tiny MLP (32 → 64 → 10) at batch 1: per-call overhead dominates (target ratio >= 0.6);

each at ONNX Runtime intra-op threads 1 and 2. The ratio is the median of round-by-round throughput ratios.
For the tiny MLP it also splits the per-call time: raw ORT, our backend's `Session.run`, and `Model.infer`.
Writes <out>/engine.json and <out>/engine.md (table, machine info, date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

import forwardpass
from forwardpass.measure import RawSession, bench, interleave, machine_info, random_inputs

OPSET = 17
# (model, batch size, target ratio ours/raw)
CASES = [("cnn", 32, 0.97), ("mlp", 1, 0.6)]
THREADS = (1, 2)


class Block(nn.Module):
    """ResNet basic block with a projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def small_resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Block(32, 64, 2),
        Block(64, 128, 2),
        Block(128, 256, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, 1000),
    )


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def gflops(model: nn.Module, example: torch.Tensor) -> float:
    """2 x multiply-accumulates of every conv and linear layer, counted with forward hooks."""
    macs = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    return 2 * macs / example.shape[0] / 1e9


def export(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, float]:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo=False is deprecated, and it is what honours opset 17
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    params = sum(p.numel() for p in model.parameters())
    return {"gflops_per_item": gflops(model, example), "parameters": params}


def build(folder: Path) -> dict[str, dict[str, Any]]:
    torch.manual_seed(0)
    models = {"cnn": (small_resnet(), torch.randn(1, 3, 224, 224)), "mlp": (tiny_mlp(), torch.randn(1, 32))}
    described = {}
    for name, (model, example) in models.items():
        path = folder / f"{name}.onnx"
        described[name] = {"path": path, **export(model, example, path)}
    return described


def measure_case(path: Path, batch_size: int, threads: int, rounds: int, round_s: float, warmup_s: float) -> Any:
    model = forwardpass.load(path, intra_op_threads=threads)
    point = bench(model, [batch_size], seconds=rounds * round_s, warmup_seconds=warmup_s, rounds=rounds)[0]
    model.close()
    return point


def overhead_split(path: Path, rounds: int, round_s: float) -> dict[str, float]:
    """Median µs per call at batch 1, one thread: raw ORT, our backend alone, the whole `Model.infer`."""
    model = forwardpass.load(path, intra_op_threads=1)
    raw = RawSession(model)
    feed = random_inputs(model.inputs, 1)
    timings = interleave(
        {
            "onnxruntime": partial(raw.run, feed),
            "backend Session.run": partial(model.session.run, feed),
            "Model.infer": partial(model.infer, feed),
        },
        1,
        rounds=rounds,
        round_seconds=round_s,
        warmup_seconds=round_s / 2,
    )
    return {name: timing.latency.p50_ms * 1e3 for name, timing in timings.items()}


def to_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# Engine overhead: `Model.infer` vs raw `InferenceSession.run`",
        "",
        f"Measured {report['date']} by `python bench/engine.py`: same model file and session options, same process,",
        f"{report['settings']['rounds']} alternating rounds of {report['settings']['round_seconds']} s each;",
        "ratio = median of round-by-round throughput ratios (ours / raw).",
        "",
        "| model | batch | intra-op threads | ours items/s | raw items/s | ours p50 ms | raw p50 ms | ratio | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ours, raw = r["forwardpass"], r["onnxruntime"]
        verdict = "met" if r["ratio"] >= r["target"] else "**missed**"
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['intra_op_threads']} | {ours['throughput']:,.0f} "
            f"| {raw['throughput']:,.0f} | {ours['latency_ms']['p50']:.4g} | {raw['latency_ms']['p50']:.4g} "
            f"| {r['ratio']:.3f} | >= {r['target']} {verdict} |"
        )
    lines += ["", "Models (built in a temporary folder, torch → ONNX opset 17, dynamic batch):", ""]
    for name, model in report["models"].items():
        lines.append(f"- {name}: {model['gflops_per_item']:.3g} GFLOPs per item, {model['parameters']:,} parameters")
    split = report["mlp_overhead_us"]
    lines += ["", "Tiny MLP, batch 1, 1 thread, median µs per call:", ""]
    lines += [f"- {name}: {us:.2f}" for name, us in split.items()]
    lines += ["", "Machine:", ""]
    lines += [f"- {key}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for key, v in machine.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed calls per engine and case")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        models = build(Path(tmp))
        results = []
        for name, batch_size, target in CASES:
            for threads in THREADS:
                point = measure_case(
                    models[name]["path"], batch_size, threads, args.rounds, args.round_seconds, args.warmup
                )
                results.append({"model": name, "intra_op_threads": threads, "target": target, **point.to_dict()})
                print(
                    f"{name:>3} batch {batch_size:>2} threads {threads}: ours/raw {point.ratio:.3f} (target {target})"
                )
        split = overhead_split(models["mlp"]["path"], args.rounds, args.round_seconds / 2)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "round_seconds": args.round_seconds, "warmup_seconds": args.warmup},
        "machine": machine_info(),
        "models": {name: {k: v for k, v in m.items() if k != "path"} for name, m in models.items()},
        "results": results,
        "mlp_overhead_us": split,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "engine.md").write_text(to_markdown(report), encoding="utf-8")
    print(", ".join(f"{k} {v:.2f} µs" for k, v in split.items()))
    print(f"wrote {args.out / 'engine.json'} and {args.out / 'engine.md'}")


if __name__ == "__main__":
    main()
