"""The FD-MNIST floor: real MNIST training digits scored exactly as ``difflab eval`` scores samples.

A perfect generator draws from the data distribution, so its expected score equals that of n real
digits that were not in the reference. For each n in {500, 1000, 2000, 10000} this script takes
several disjoint sets of n MNIST *training* images (a seed-0 permutation of the 60k) and reports:

* ``FD vs test (10k)``: FD-MNIST against the full MNIST test set, the reference ``difflab eval``
  uses: the floor under ``difflab eval --n n``;
* ``FD vs test (n)``: FD-MNIST between n training and n test images (both sides of size n);
* ``precision`` / ``recall`` (k = 3) against a seed-0 subset of n test images, as
  ``difflab eval`` computes them (Kynkäänniemi et al. 2019: sets of equal size);
* ``label accuracy``: the feature CNN's accuracy on those training digits.

Cells are the mean ± standard deviation over the disjoint sets (5 for n ≤ 2000, 3 for n = 10000).
Both FD columns shrink with n: the Fréchet distance estimated from n samples is biased upwards,
the more so the smaller n (a 128 × 128 covariance from 500 images is noisy). Compare a model's FD
only with the floor at the same n.

Run ``python benchmarks/fd_floor.py`` (about two minutes on 2 cores; ``make bench-fd-floor``).
Writes ``benchmarks/results/fd_floor.{json,md}``. ``--data fashion-mnist`` gives the FD-Fashion
floor (written to ``fd_floor_fashion-mnist.*``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from common import RESULTS_DIR, machine_info, markdown_table, write_json, write_text
from difflab.data import load_dataset
from difflab.metrics.evaluate import metrics_from_features
from difflab.metrics.features import FeatureSpace, build_feature_extractor
from difflab.metrics.frechet import FeatureStats, frechet_distance
from difflab.metrics.reference import DEFAULT_FEATURES, reference_stats

SIZES = (500, 1000, 2000, 10000)
REPEATS = {500: 5, 1000: 5, 2000: 5, 10000: 3}
TRAIN_SEED, TEST_SEED = 0, 1  # the permutations that cut the disjoint sets


@torch.inference_mode()
def features_and_predictions(name: str, data: str, split: str) -> tuple[torch.Tensor, ...]:
    """Features (N, 128), predicted classes (N,) and true labels (N,) of a whole split."""
    extractor = build_feature_extractor(name)
    dataset = load_dataset(data, split=split)
    features, predictions = [], []
    for start in range(0, len(dataset), 1000):
        feats, logits = extractor.features_and_logits(dataset.images[start : start + 1000])
        features.append(feats)
        predictions.append(logits.argmax(1))
    return torch.cat(features), torch.cat(predictions), dataset.labels


def summarize(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def run(data: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    name = DEFAULT_FEATURES[data]
    start = time.perf_counter()
    reference = reference_stats(data, features=name, split="test")  # what `difflab eval` uses
    train_features, train_predictions, train_labels = features_and_predictions(name, data, "train")
    test_features = torch.from_numpy(reference.features)  # all 10k test rows are kept
    extract_seconds = time.perf_counter() - start
    order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(TRAIN_SEED))
    test_order = torch.randperm(
        len(test_features), generator=torch.Generator().manual_seed(TEST_SEED)
    )
    rows = []
    for n in sizes:
        cells: dict[str, list[float]] = {
            "fd_vs_test_full": [],
            "fd_vs_test_same_n": [],
            "precision": [],
            "recall": [],
            "label_accuracy": [],
        }
        for repeat in range(REPEATS.get(n, 3)):
            chosen = order[repeat * n : (repeat + 1) * n]
            result = metrics_from_features(
                train_features[chosen], reference, train_predictions[chosen], train_labels[chosen]
            )
            test_part = test_order[(repeat * n) % len(test_order) :][:n]
            if len(test_part) < n:
                test_part = test_order[:n]
            fake = FeatureStats.from_features(train_features[chosen], reference.feature_space)
            real = FeatureStats.from_features(test_features[test_part], reference.feature_space)
            cells["fd_vs_test_full"].append(result["fd"])
            cells["fd_vs_test_same_n"].append(
                frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
            )
            cells["precision"].append(result["precision"])
            cells["recall"].append(result["recall"])
            cells["label_accuracy"].append(result["label_accuracy"])
        rows.append({"n": n, **{key: summarize(values) for key, values in cells.items()}})
        print(
            f"n={n}: FD vs test(10k) {np.mean(cells['fd_vs_test_full']):.3f}, "
            f"FD vs test(n) {np.mean(cells['fd_vs_test_same_n']):.3f}, "
            f"P {np.mean(cells['precision']):.3f}, R {np.mean(cells['recall']):.3f}",
            flush=True,
        )
    return {
        "data": data,
        "features": name,
        "feature_space": reference.feature_space,
        "metric": FeatureSpace.parse(reference.feature_space).metric_name,
        "reference": {"source": reference.source, "n": reference.count},
        "repeats": {str(n): REPEATS.get(n, 3) for n in sizes},
        "rows": rows,
        "feature_extraction_seconds": extract_seconds,
        "total_seconds": time.perf_counter() - start,
        "machine": machine_info(),
    }


def cell(summary: dict[str, float], digits: int) -> str:
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    metric = result["metric"]
    headers = [
        "n",
        f"{metric} vs test (10k)",
        f"{metric} vs test (n)",
        "precision",
        "recall",
        "label accuracy",
        "sets",
    ]
    table = [
        [
            row["n"],
            cell(row["fd_vs_test_full"], 3),
            cell(row["fd_vs_test_same_n"], 3),
            cell(row["precision"], 3),
            cell(row["recall"], 3),
            cell(row["label_accuracy"], 4),
            result["repeats"][str(row["n"])],
        ]
        for row in result["rows"]
    ]
    machine = result["machine"]
    flag = "" if result["data"] == "mnist" else f" --data {result['data']}"
    return "\n\n".join(
        [
            f"# The {metric} floor: real {result['data']} training images vs the test set",
            f"Feature space `{result['feature_space']}`; reference {result['reference']['source']}"
            f" ({result['reference']['n']} images). Each cell: mean ± std over disjoint sets of n "
            "training images. Precision/recall (k = 3) against a seed-0 subset of n test images, "
            "as `difflab eval` computes them. A generator that matched the data distribution "
            "exactly would score these numbers; compare a model only with the row of its n.",
            markdown_table(headers, table),
            f"{machine['cpu_model']}, torch threads: {machine['torch_threads']}, torch "
            f"{machine['torch']}; {machine['date']}; features of "
            f"{result['data']} train + test in {result['feature_extraction_seconds']:.0f} s, "
            f"total {result['total_seconds']:.0f} s. Rerun: `python benchmarks/fd_floor.py{flag}`.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", choices=sorted(set(DEFAULT_FEATURES) - {"digits"}), default="mnist"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.data, tuple(args.sizes))
    stem = "fd_floor" if args.data == "mnist" else f"fd_floor_{args.data}"
    write_json(RESULTS_DIR / f"{stem}.json", result)
    write_text(RESULTS_DIR / f"{stem}.md", markdown(result))
    print(f"wrote {RESULTS_DIR / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
