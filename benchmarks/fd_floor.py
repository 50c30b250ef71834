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
the more so the smaller n. Compare a model's FD only with the floor at the same n.

Run ``python benchmarks/fd_floor.py`` (about two minutes on 2 cores; ``make bench-fd-floor``).
Writes ``fd_floor.{json,md}``; ``--data fashion-mnist`` gives the FD-Fashion floor
(``fd_floor_fashion-mnist.*``); ``--quick`` scores sets of 50 and 100 of the first 300 training
images (``*_quick``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

import common as bench
from difflab.data import load_dataset
from difflab.metrics.evaluate import metrics_from_features
from difflab.metrics.features import FeatureSpace, build_feature_extractor
from difflab.metrics.frechet import FeatureStats, frechet_distance
from difflab.metrics.reference import DEFAULT_FEATURES, reference_stats

SIZES = (500, 1000, 2000, 10000)
REPEATS = {500: 5, 1000: 5, 2000: 5, 10000: 3}
QUICK_SIZES, QUICK_TRAIN_LIMIT = (50, 100), 300
TRAIN_SEED, TEST_SEED = 0, 1  # the permutations that cut the disjoint sets
COLUMNS = ("fd_vs_test_full", "fd_vs_test_same_n", "precision", "recall", "label_accuracy")


@torch.inference_mode()
def features_and_predictions(
    name: str, data: str, split: str, limit: int | None
) -> tuple[torch.Tensor, ...]:
    """Features (N, 128), predicted classes (N,) and true labels (N,) of (the start of) a split."""
    extractor = build_feature_extractor(name)
    dataset = load_dataset(data, split=split, limit=limit)
    features, predictions = [], []
    for start in range(0, len(dataset), 1000):
        feats, logits = extractor.features_and_logits(dataset.images[start : start + 1000])
        features.append(feats)
        predictions.append(logits.argmax(1))
    return torch.cat(features), torch.cat(predictions), dataset.labels


def summarize(values: list[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def measure(data: str, sizes: Sequence[int], train_limit: int | None) -> dict[str, Any]:
    """Every row of the floor table for ``data``."""
    name = DEFAULT_FEATURES[data]
    start = time.perf_counter()
    reference = reference_stats(data, features=name, split="test")  # what `difflab eval` uses
    train_features, train_predictions, train_labels = features_and_predictions(
        name, data, "train", train_limit
    )
    test_features = torch.from_numpy(reference.features)  # all 10k test rows are kept
    extract_seconds = time.perf_counter() - start
    order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(TRAIN_SEED))
    test_order = torch.randperm(
        len(test_features), generator=torch.Generator().manual_seed(TEST_SEED)
    )
    rows, space = [], reference.feature_space
    for n in sizes:
        cells: dict[str, list[float]] = {key: [] for key in COLUMNS}
        for repeat in range(REPEATS.get(n, 3) if train_limit is None else 2):
            chosen = order[repeat * n : (repeat + 1) * n]
            result = metrics_from_features(
                train_features[chosen], reference, train_predictions[chosen], train_labels[chosen]
            )
            test_part = test_order[(repeat * n) % len(test_order) :][:n]
            test_part = test_part if len(test_part) == n else test_order[:n]
            fake = FeatureStats.from_features(train_features[chosen], space)
            real = FeatureStats.from_features(test_features[test_part], space)
            same_n = frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
            values = (result["fd"], same_n, *(result[key] for key in COLUMNS[2:]))
            for key, value in zip(COLUMNS, values, strict=True):
                cells[key].append(value)
        rows.append({"n": n, **{key: summarize(values) for key, values in cells.items()}})
        means = {key: statistics.fmean(values) for key, values in cells.items()}
        print(
            f"n={n}: FD vs test(10k) {means['fd_vs_test_full']:.3f}, FD vs test(n) "
            f"{means['fd_vs_test_same_n']:.3f}, P {means['precision']:.3f}, "
            f"R {means['recall']:.3f}",
            flush=True,
        )
    return {
        "data": data,
        "features": name,
        "feature_space": space,
        "metric": FeatureSpace.parse(space).metric_name,
        "reference": {"source": reference.source, "n": reference.count},
        "repeats": {str(row["n"]): len(row["precision"]["values"]) for row in rows},
        "train_limit": train_limit,
        "rows": rows,
        "feature_extraction_seconds": extract_seconds,
        "total_seconds": time.perf_counter() - start,
        "machine": bench.machine_info(),
    }


def render_markdown(result: dict[str, Any]) -> str:
    """The floor table, from the JSON alone."""
    metric = result["metric"]
    headers = ["n", f"{metric} vs test (10k)", f"{metric} vs test (n)", "precision", "recall"]
    headers += ["label accuracy", "sets"]

    def cell(summary: dict[str, float], digits: int) -> str:
        return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"

    table = [
        [
            row["n"],
            *(cell(row[key], 4 if key == "label_accuracy" else 3) for key in COLUMNS),
            result["repeats"][str(row["n"])],
        ]
        for row in result["rows"]
    ]
    flag = "" if result["data"] == "mnist" else f" --data {result['data']}"
    limit = result.get("train_limit")
    subset = f" (the first {limit} only)" if limit else ""
    return bench.sections(
        f"# The {metric} floor: real {result['data']} training images vs the test set",
        f"Feature space `{result['feature_space']}`; reference {result['reference']['source']}"
        f" ({result['reference']['n']} images). Each cell: mean ± std over disjoint sets of n "
        f"training images{subset}. Precision/recall (k = 3) against a seed-0 subset of n test "
        "images, as `difflab eval` computes them. A generator that matched the data distribution "
        "exactly would score these numbers; compare a model only with the row of its n.",
        bench.markdown_table(headers, table),
        f"{bench.machine_line(result['machine'])} Features of {result['data']} train + test in "
        f"{result['feature_extraction_seconds']:.0f} s, total {result['total_seconds']:.0f} s. "
        f"Rerun: `python benchmarks/fd_floor.py{flag}`.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench.bench_parser(
        __doc__, f"n ∈ {QUICK_SIZES} from the first {QUICK_TRAIN_LIMIT} images"
    )
    choices = sorted(set(DEFAULT_FEATURES) - {"digits"})
    parser.add_argument("--data", choices=choices, default="mnist")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = bench.parse(parser, argv)
    sizes, limit = (QUICK_SIZES, QUICK_TRAIN_LIMIT) if args.quick else (args.sizes, None)
    name = "fd_floor" if args.data == "mnist" else f"fd_floor_{args.data}"
    return bench.publish(args, name, lambda: measure(args.data, sizes, limit), render_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
