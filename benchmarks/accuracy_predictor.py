"""How well the optional accuracy predictor ranks sub-networks it was not trained on.

    python benchmarks/accuracy_predictor.py      # -> benchmarks/out/accuracy_predictor.{json,png}

The MobileNetV2 supernet (default proxy data, trained and cached as `run_ppo.py --arch` uses it)
measures SAMPLES random (architecture, per-layer precision) queries; the predictor trains on 75% and
is scored on the other 25%: Spearman and Kendall rank correlation and mean absolute error against the
measured accuracy, and how long a measured and a predicted query take.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from envs.accuracy_predictor import fit_predictor, sample_query  # noqa: E402
from envs.subnet_accuracy import supernet_oracle_for  # noqa: E402
from envs.zoo import mobilenet_v2  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
SAMPLES = 400


def main() -> None:
    oracle = supernet_oracle_for(mobilenet_v2())
    start = time.perf_counter()
    predictor = fit_predictor(oracle, SAMPLES, held_out=0.25, seed=0)
    fit_seconds = time.perf_counter() - start
    rng = np.random.default_rng(123)  # fresh queries: neither trained on nor measured yet
    measured, predicted, measure_s, predict_s = [], [], [], []
    for _ in range(50):
        blocks, _, precisions = sample_query(oracle.space, oracle, rng)
        t = time.perf_counter()
        predicted.append(predictor.accuracy(precisions, blocks))
        predict_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        measured.append(oracle.accuracy(precisions, blocks))
        measure_s.append(time.perf_counter() - t)
    from scipy.stats import spearmanr

    report = {
        "supernet": oracle.weights_id,
        "accuracy_provenance": oracle.provenance,
        "held_out_of_training": predictor.report.to_dict(),
        "fresh_queries": {
            "count": len(measured),
            "spearman": float(spearmanr(predicted, measured).statistic),
            "mean_abs_error": float(np.abs(np.array(predicted) - np.array(measured)).mean()),
            "measured_query_ms_median": 1e3 * float(np.median(measure_s)),
            "predicted_query_ms_median": 1e3 * float(np.median(predict_s)),
        },
        "measured_accuracy_range": [float(min(measured)), float(max(measured))],
        "fit_seconds_including_measurement": round(fit_seconds, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "accuracy_predictor.json").write_text(json.dumps(report, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(100 * np.array(measured), 100 * np.array(predicted), s=12)
    lo, hi = 100 * min(measured + predicted), 100 * max(measured + predicted)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("measured accuracy (%)")
    ax.set_ylabel("predicted accuracy (%)")
    ax.set_title(f"fresh sub-networks: Spearman {report['fresh_queries']['spearman']:.2f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "accuracy_predictor.png", dpi=120)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
