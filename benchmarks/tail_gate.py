"""Route by predicted age: does sending the faces the vanilla head calls old to the balanced head
shrink the tail's error? Validation only.

Adaptive Routing picks a head by how much a flip disturbs it (Eq. 11); on UTKFace it sends
the elderly to the balanced head least of all (docs/claims.md), although that head is the one
trained for the tail. This gate routes on the vanilla head's own estimate instead: a face
whose vanilla age is at least ``A`` years takes the balanced head's distribution. ``A`` is
chosen on one part of the validation faces (lowest MAE + CMAE over ``--thresholds``; "never"
is a candidate) and scored on the other (``--folds``-fold cross-fitting, ``--repeats``
random partitions, averaged).

Decision rule, written before it was run on any model (docs/better_model.md): the gate
becomes the shipped model's routing only if, cross-fitted on that model's validation part,
its CMAE is below Adaptive Routing's by at least 0.10, its MAE is at most 0.02 above it, and
its 66+ bias is smaller.

    python benchmarks/tail_gate.py --config configs/utkface_gpu_glae.yaml --json benchmarks/results/better_model/tail_gate_shipped.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from glae.metrics import summarize
from glae.routing import route
from tail_bias import add_study_arguments, headline, mean_summary, parse_study_arguments, picked_on_other_folds, validation_views

MIN_CMAE_GAIN = 0.10
MAX_MAE_LOSS = 0.02
NEVER = float("inf")


def gated_ages(vanilla: np.ndarray, balanced: np.ndarray, threshold: float) -> np.ndarray:
    """The vanilla age, or the balanced head's where the vanilla age is at least ``threshold``."""
    return np.where(vanilla >= threshold, balanced, vanilla)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(range(30, 81, 5)))
    args = parse_study_arguments(parser)

    views, truth, _, info = validation_views(args)
    if not info.get("balanced_trained"):
        raise SystemExit("the model has no trained balanced head: nothing to route to")
    vanilla, balanced, routed = (route(views, mode).ages.numpy().astype(float) for mode in ("vanilla", "balanced", "routing"))
    thresholds = [*args.thresholds, NEVER]
    rows = {name: headline(summarize(truth, pred, None)) for name, pred in (("vanilla", vanilla), ("balanced", balanced), ("routing", routed))}
    runs = [picked_on_other_folds(truth, thresholds, lambda t, faces: gated_ages(vanilla[faces], balanced[faces], t), args.folds, seed)
            for seed in range(args.repeats)]
    gate = mean_summary([headline(summarize(truth, pred, None)) for pred, _ in runs])
    picks = [t for _, chosen in runs for t in chosen]
    routing = rows["routing"]
    adopt = (routing["cmae"] - gate["cmae"] >= MIN_CMAE_GAIN and gate["mae"] - routing["mae"] <= MAX_MAE_LOSS
             and abs(gate["groups"]["66+"]["bias"]) < abs(routing["groups"]["66+"]["bias"]))
    curve = {("never" if t == NEVER else f"{t:g}"): {k: v for k, v in headline(summarize(truth, gated_ages(vanilla, balanced, t), None)).items() if k != "groups"}
             for t in thresholds}
    for name, row in [*rows.items(), ("age gate (cross-fitted)", gate)]:
        print(f"{name:24s} MAE {row['mae']:.3f} CMAE {row['cmae']:.3f} bias "
              + ", ".join(f"{g} {row['groups'][g]['bias']:+.2f}" for g in ("0-17", "18-65", "66+")))
    print(f"thresholds picked: {sorted(set('never' if t == NEVER else t for t in picks), key=str)}; adopt: {'yes' if adopt else 'no'}")
    if args.json:
        result: dict[str, Any] = {"model": str(args.model or "shipped"), "part": "val", "faces": len(truth), "folds": args.folds,
                                  "repeats": args.repeats, "heads": rows, "age_gate": gate,
                                  "thresholds_picked": ["never" if t == NEVER else t for t in picks], "whole_val_curve": curve,
                                  "adopt": bool(adopt)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
