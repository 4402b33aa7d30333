"""Distilled students against their teacher, side by side on one held-out split in one process.

Reads a store holding a ``distill`` teacher and students trained on the same data (e.g. ``experiments/
distill_quickstart.yaml`` with ``task.alpha=0.5`` and with ``task.alpha=0``, same budget), prepares the first
student's test split exactly as its run did, and for every model reports held-out accuracy, agreement with the
teacher's predictions, parameters, size on disk and CPU inference time for the whole split (batches of 32).
Prints JSON with ratios against the teacher from the same run.

    python benchmarks/distill.py --store STORE --students kd ce
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def predictions(model, split: dict, pad_id: int, batch: int = 32) -> tuple[list[int], float]:
    """Argmax labels over ``split`` and the seconds it took (no grad, eval mode)."""
    from rayft.data.collate import pad_batch

    rows = [{k: v[i] for k, v in split.items()} | {"index": i} for i in range(len(split["input_ids"]))]
    out, start = [], time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            b = pad_batch(rows[i:i + batch], pad_id)
            out += model(**{k: v for k, v in b.items() if k not in ("labels", "index")}).logits.argmax(-1).tolist()
    return out, time.perf_counter() - start


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def deployed_mb(store, manifest) -> float:
    """What serving the result needs on disk: its folder, plus its base's weights for an adapter."""
    from rayft.models import resolve_model

    extra = 0.0
    if manifest.kind != "full":
        extra = sum(f.stat().st_size for f in Path(resolve_model(manifest.base_model)).glob("*.safetensors")) / 2**20
    return size_mb(store.path(manifest.adapter_id)) + extra


def main() -> None:
    from rayft.data import prepare_data
    from rayft.store import AdapterStore, load_for_inference, manifest_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--students", nargs="+", required=True, help="ids of distill results in the store")
    args = parser.parse_args()
    torch.set_num_threads(2)
    store = AdapterStore(args.store)
    first = store.manifest(args.students[0])
    cfg = manifest_config(first)
    teacher_id = cfg.task.params()["teacher"]["id"]
    data = prepare_data(cfg)  # the split the runs evaluated on (same data section, same seed)
    split = data.splits["test"]
    gold = split["labels"]
    rows: dict[str, dict] = {}
    teacher_pred = None
    for model_id in [teacher_id, *args.students]:
        model, _, manifest = load_for_inference(AdapterStore(args.store), model_id)
        pred, seconds = predictions(model, split, data.pad_id)
        teacher_pred = teacher_pred or pred
        task = manifest.config.get("task", {})
        rows[model_id] = {
            "task": manifest.task, "alpha": task.get("alpha"), "temperature": task.get("temperature"),
            "layers": model.config.num_hidden_layers,
            "test_accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold),
            "agreement_with_teacher": sum(p == t for p, t in zip(pred, teacher_pred)) / len(gold),
            "params": sum(p.numel() for p in model.parameters()),
            "size_mb": round(deployed_mb(store, manifest), 2),
            "inference_s": round(seconds, 2), "run_test_accuracy": manifest.metrics.get("test_accuracy"),
        }
    base = rows[teacher_id]
    ratios = {m: {"accuracy_vs_teacher": r["test_accuracy"] / base["test_accuracy"],
                  "params_vs_teacher": r["params"] / base["params"],
                  "speedup_vs_teacher": base["inference_s"] / max(r["inference_s"], 1e-9)}
              for m, r in rows.items() if m != teacher_id}
    print(json.dumps({"test_rows": len(gold), "models": rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
