"""A greedy weight soup of models fine-tuned from the same weights on one split (issue #13).

Averaging the weights of models fine-tuned from one pretrained start ("model soups",
Wortsman et al., 2022) can keep part of an ensemble's gain at one model's size and speed.
The rule (docs/better_model.md, "Session 20") was fixed before any soup was evaluated:
sort the ingredients by validation MAE + CMAE (Adaptive Routing); start from the best; keep
each next one if the soup with it, its batch-norm statistics re-estimated on train faces,
validates no worse. The soup is calibrated on validation, its test part read once, and it
is written as a run folder (``model.safetensors``, ``split.json``, ``test_metrics.json``)
that ``benchmarks/ship_rule.py`` judges like a trained candidate. ``--uniform-only`` writes
the uniform soup of all runs instead, unjudged, for a run that trains its heads again
(``configs/utkface_soup_rehead.yaml``).

    python benchmarks/soup.py runs/claims/glae_seed2 runs/claims/glae_fresh_seed2 \\
        runs/claims/glae_flip_seed0 runs/claims/glae_flip_seed1 runs/claims/glae_flip_seed2 \\
        runs/claims/glae_flip_fresh_seed0 runs/claims/glae_flip_fresh_seed1 runs/claims/glae_flip_fresh_seed2 \\
        --shipped --out runs/better_model/soup --json benchmarks/results/better_model/soup.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from glae.checkpoint import load_model, save_model
from glae.data import Split, load_dataset
from glae.data.datasets import AgeSample
from glae.data.images import AgeImageDataset
from glae.data.transforms import eval_transform
from glae.estimator import resolve_model_path
from glae.evaluate import InferencePass, calibrate_samples, evaluate_samples
from glae.models.glae import AgeModel
from ship_rule import GROUPS, summary


def average_state(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Uniform mean of floating tensors; integer buffers (batch counts) are taken from the first."""
    return {
        name: torch.stack([state[name] for state in states]).mean(0) if tensor.is_floating_point() else tensor.clone()
        for name, tensor in states[0].items()
    }


@torch.no_grad()
def reestimate_batch_norm(model: AgeModel, faces: list[AgeSample], batch_size: int = 64) -> None:
    """Replace every batch-norm layer's running statistics by their plain mean over ``faces``
    and their flips (the views inference sees): averaged weights change what each layer
    receives, so the ingredients' averaged statistics no longer describe it."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches
    model.eval()
    for norm in norms:
        norm.train()
    loader = DataLoader(AgeImageDataset(faces, eval_transform(model.config.input_size, model.normalization)),
                        batch_size=batch_size, num_workers=1)
    for images, _, _ in loader:
        model.predict_views(images.contiguous(memory_format=torch.channels_last))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


class Soup:
    """Ingredients' weights, one model to load averages into, and the faces to judge them on."""

    def __init__(self, members: dict[str, Path], split: Split, bn_faces: list[AgeSample], run: InferencePass,
                 reestimate: bool = True) -> None:
        self.states: dict[str, dict[str, Tensor]] = {}
        self.infos: dict[str, dict[str, Any]] = {}
        self.model: AgeModel | None = None
        for name, path in members.items():
            model, info = load_model(path)
            if self.model is None:
                self.model = model
            elif model.config.to_dict() | {"pretrained": False} != self.model.config.to_dict() | {"pretrained": False} \
                    or model.normalization != self.model.normalization:
                raise SystemExit(f"{name} has another architecture or input normalization than the first ingredient")
            self.states[name] = {k: v.clone() for k, v in model.state_dict().items()}
            self.infos[name] = info
        self.split, self.bn_faces, self.run, self.reestimate = split, bn_faces, run, reestimate

    def reestimates(self, names: list[str]) -> bool:
        """Whether the soup of ``names`` gets re-estimated batch-norm statistics."""
        return self.reestimate and len(names) > 1

    def build(self, names: list[str]) -> AgeModel:
        """The average of ``names``; one ingredient keeps its own batch-norm statistics, and so
        does a soup built with ``reestimate`` off (the members' averaged statistics)."""
        assert self.model is not None
        self.model.load_state_dict(average_state([self.states[n] for n in names]))
        self.model.calibration = None
        if self.reestimates(names):
            reestimate_batch_norm(self.model, self.bn_faces)
        return self.model.eval()

    def validate(self, names: list[str]) -> dict[str, Any]:
        return summary(evaluate_samples(self.build(names), self.split.val, "routing", self.run))

    def info(self, names: list[str]) -> dict[str, Any]:
        """The soup's model-file facts: the first member's, less its source run, plus what was averaged."""
        info = {key: value for key, value in self.infos[names[0]].items() if key != "source_run"}
        return {**info, "soup_of": names, "bn_reestimated_on": len(self.bn_faces) if self.reestimates(names) else 0}


def score(numbers: dict[str, Any]) -> float:
    return numbers["mae"] + numbers["cmae"]


def line(label: str, numbers: dict[str, Any]) -> str:
    bias = ", ".join(f"{g} {numbers['groups'][g]['bias']:+.2f}" for g in GROUPS)
    return f"{label:45s} MAE {numbers['mae']:.3f} CMAE {numbers['cmae']:.3f}  bias {bias}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (model.safetensors, split.json), all on one split")
    parser.add_argument("--shipped", action="store_true", help="add the shipped model (trained on the first run's split)")
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--bn-faces", type=int, default=2000, help="train faces the batch-norm statistics are re-estimated on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw of those faces")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write the greedy soup into")
    parser.add_argument("--uniform-only", action="store_true",
                        help="write the uniform soup of all runs to OUT/model.safetensors, unjudged: a start for re-training its heads")
    parser.add_argument("--average-statistics", action="store_true",
                        help="average the members' batch-norm statistics instead of re-estimating them")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    split_text = (args.runs[0] / "split.json").read_text()
    if any((run / "split.json").read_text() != split_text for run in args.runs):
        raise SystemExit("the runs were trained on different splits")
    members = {str(run): run / "model.safetensors" for run in args.runs}
    if args.shipped:
        members["shipped"] = resolve_model_path(None)
    index = load_dataset(args.data, "utkface")
    split = Split.from_json(json.loads(split_text), index.samples, index.root)
    bn_faces = random.Random(args.seed).sample(split.train, min(args.bn_faces, len(split.train)))
    soup = Soup(members, split, bn_faces, InferencePass(torch.device("cpu"), 64, num_workers=1), not args.average_statistics)
    if args.uniform_only:
        args.out.mkdir(parents=True, exist_ok=True)
        model = soup.build(list(members))
        save_model(args.out / "model.safetensors", model, soup.info(list(members)))
        print(f"uniform soup of {len(members)} written to {args.out / 'model.safetensors'}")
        return

    ingredients = {}
    for name in members:
        ingredients[name] = soup.validate([name])
        print(line(name, ingredients[name]), flush=True)
    order = sorted(ingredients, key=lambda n: score(ingredients[n]))
    chosen, best = [order[0]], ingredients[order[0]]
    steps = []
    for name in order[1:]:
        numbers = soup.validate(chosen + [name])
        kept = score(numbers) <= score(best)
        steps.append({"add": name, "val": numbers, "kept": kept})
        print(line(f"+ {name} ({'kept' if kept else 'left out'})", numbers), flush=True)
        if kept:
            chosen, best = chosen + [name], numbers
    uniform = soup.validate(order)
    print(line("uniform soup of all (reference)", uniform))
    print(line(f"greedy soup of {len(chosen)}", best))

    model = soup.build(chosen)
    model.calibration = calibrate_samples(model, split.val, "routing", soup.run)
    test = evaluate_samples(model, split.test, "routing", soup.run)
    args.out.mkdir(parents=True, exist_ok=True)
    save_model(args.out / "model.safetensors", model, {**soup.info(chosen), "calibrated_on": "validation part of the runs' split"})
    shutil.copyfile(args.runs[0] / "split.json", args.out / "split.json")
    (args.out / "test_metrics.json").write_text(json.dumps(test, indent=2) + "\n")
    print(f"greedy soup written to {args.out}; temperature {model.calibration.temperature:.3f}; test part in test_metrics.json")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "part": "val", "faces": len(split.val), "bn_faces": len(bn_faces), "ingredients": ingredients,
            "order": order, "greedy_steps": steps, "greedy": {"members": chosen, "val": best},
            "uniform_reference": uniform, "temperature": model.calibration.temperature,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
