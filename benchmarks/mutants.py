"""Mutation testing of GLAE's method code: do the tests fail when the method is wrong?

Each mutant is one small, known wrong implementation (a formula with the wrong constant,
the other KL direction, a branch the paper does not use at test time, an interval or a
cache key that a user relies on, ...). For each, the package is copied once to a scratch
folder, the mutant is applied there (never to this checkout), and only the fast tests of
that module run (none marked ``slow``). A mutant is *killed* when a test fails, *survives*
when all pass, and is *stale* when its original text is no longer in the source (the code
moved on: update the mutant).

    python benchmarks/mutants.py                  # every mutant, report on stdout
    python benchmarks/mutants.py --only routing   # mutants whose id contains "routing"
    python benchmarks/mutants.py --only cache/ --only export/   # either text (repeat --only)
    python benchmarks/mutants.py --json out.json  # also write the results as JSON
    python benchmarks/mutants.py --list           # list the mutants and exit
    python benchmarks/mutants.py --tests-dir DIR  # judge another tests folder (an older version's)

Exit status: 0 when no mutant marked as changing a user-visible number survives, else 1.
Equivalent mutants (same numbers, different code) are marked ``equivalent`` and listed in
docs/mutation.md; they are run and reported like the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LOSSES = ("tests/test_losses.py", "tests/test_routing.py")
HEADS = ("tests/test_heads.py",)
ROUTING = ("tests/test_routing.py",)
METRICS = ("tests/test_metrics.py",)
SAMPLERS = ("tests/test_samplers.py", "tests/test_stage2_freeze.py")
PROTOCOLS = ("tests/test_protocols.py",)
STAGE2 = ("tests/test_stage2_freeze.py",)
CALIBRATION = ("tests/test_calibration.py",)
EVALUATE = ("tests/test_routing.py", "tests/test_metrics.py", "tests/test_calibration.py")
EXPORT = ("tests/test_export.py", "tests/test_inference_backends.py",
          "tests/test_calibration.py::test_the_onnx_export_carries_the_calibration")
BACKENDS = ("tests/test_inference_backends.py",
            "tests/test_calibration.py::test_the_estimator_reads_its_interval_as_the_model_says",
            "tests/test_calibration.py::test_the_onnx_export_carries_the_calibration", "tests/test_export.py")
CACHE = ("tests/test_cache.py",)


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    equivalent: bool = False  # True: no number a user sees changes (see docs/mutation.md)


M = Mutant
MUTANTS: tuple[Mutant, ...] = (
    # --- issue 14's named mutants ------------------------------------------------------
    M("named/stage2-instance-sampling-default", "glae/config.py",
      'StageConfig(head="balanced", epochs=2, sampling="class",', 'StageConfig(head="balanced", epochs=2, sampling="instance",', STAGE2),
    M("named/stage2-instance-sampling-loader", "glae/train.py",
      "ages_of(dataset.samples), self.stage_config.sampling,", 'ages_of(dataset.samples), "instance",', STAGE2),
    M("named/routing-upsilon-reversed-at-call-site", "glae/routing.py",
      "flip_kl(vanilla[0], vanilla[1])\n        upsilon_balanced = flip_kl(balanced[0], balanced[1])",
      "flip_kl(vanilla[1], vanilla[0])\n        upsilon_balanced = flip_kl(balanced[1], balanced[0])", ROUTING),
    M("named/eval-logits-from-local-mean", "glae/models/heads.py",
      'outputs = {"logits": self.holistic(age_maps)}',
      'outputs = {"logits": self.holistic(age_maps) if self.training else local_branch(age_maps).mean(1)}', HEADS),
    M("named/fr-channel-grouping-reversed", "glae/models/heads.py",
      "return self.conv(F.pixel_shuffle(features, self.upscale))",
      "return self.conv(F.pixel_shuffle(features.unflatten(1, (self.upscale * self.upscale, -1))"
      ".transpose(1, 2).flatten(1, 2), self.upscale))", HEADS),
    M("named/balanced-head-not-copied", "glae/train.py",
      "head.load_state_dict(model.heads[stage.copy_from].state_dict())", "pass", STAGE2),
    M("named/balanced-head-fresh-unseeded", "glae/train.py",
      "torch.manual_seed(config.seed * 10 + number)", "pass", STAGE2),
    M("stage2/backbone-not-frozen", "glae/engine.py",
      "frozen = [module for name, module in parts.items() if name in names]",
      'frozen = [module for name, module in parts.items() if name in names and name != "backbone"]', STAGE2),
    M("stage1/first-backbone-layers-not-frozen", "glae/engine.py",
      "frozen += [module for layer in layers[:backbone_layers] for module in layer]", "frozen += []", STAGE2),
    M("stage1/first-backbone-layers-keep-training-mode", "glae/engine.py",
      "frozen += [module for layer in layers[:backbone_layers] for module in layer]",
      "frozen += [module for layer in layers[:backbone_layers] for module in layer if not isinstance(module, nn.BatchNorm2d)]",
      STAGE2),
    M("stage2/batchnorm-statistics-drift", "glae/engine.py",
      "        if getattr(module, \"frozen\", False):\n            module.eval()",
      "        if getattr(module, \"frozen\", False):\n            pass", STAGE2),
    M("stage2/trains-the-vanilla-head", "glae/train.py",
      "self.head = self.stage_config.head", 'self.head = "vanilla"', STAGE2),
    M("stage2/vanilla-head-keeps-learning", "glae/train.py",
      "return set(stage.freeze) | (set(HEAD_NAMES) - {stage.head})", "return set(stage.freeze)", STAGE2),
    # --- glae/losses.py ------------------------------------------------------------------
    M("losses/eq1-sigma-squared-not-doubled", "glae/losses.py",
      "-squared_distance / (2 * sigma**2)", "-squared_distance / (sigma**2)", LOSSES),
    M("losses/eq1-not-normalised", "glae/losses.py",
      "torch.softmax(-squared_distance / (2 * sigma**2), dim=1)", "torch.exp(-squared_distance / (2 * sigma**2))", LOSSES),
    M("losses/eq2-cross-entropy-not-kl", "glae/losses.py",
      "terms = torch.xlogy(target, target) - target * log_probs", "terms = -target * log_probs", LOSSES),
    M("losses/eq2-reverse-kl", "glae/losses.py",
      "terms = torch.xlogy(target, target) - target * log_probs",
      "terms = log_probs.exp() * (log_probs - target.clamp_min(1e-12).log())", LOSSES),
    M("losses/eq2-mean-over-classes", "glae/losses.py",
      "return torch.where(target > 0, terms, torch.zeros_like(terms)).sum(dim=-1)",
      "return torch.where(target > 0, terms, torch.zeros_like(terms)).mean(dim=-1)", LOSSES),
    M("losses/eq3-ages-start-at-one", "glae/losses.py",
      "classes = torch.arange(probs.shape[-1], device=probs.device, dtype=probs.dtype)",
      "classes = torch.arange(1, probs.shape[-1] + 1, device=probs.device, dtype=probs.dtype)", LOSSES),
    M("losses/eq4-squared-error", "glae/losses.py",
      "return (ages - predicted).abs()", "return (ages - predicted) ** 2", LOSSES),
    M("losses/eq5-no-expectation-term", "glae/losses.py",
      "return kl_loss(_target_for(logits, ages, sigma), logits) + expectation_l1_loss(",
      "return kl_loss(_target_for(logits, ages, sigma), logits) + 0 * expectation_l1_loss(", LOSSES),
    M("losses/eq7-sum-over-pixels", "glae/losses.py",
      "    return per_pixel.mean()", "    return per_pixel.sum(dim=1).mean()", LOSSES),
    M("losses/eq7-no-expectation-term", "glae/losses.py",
      "per_pixel = _kl_terms(target, local_logits) + _expectation_error_terms(",
      "per_pixel = _kl_terms(target, local_logits) + 0 * _expectation_error_terms(", LOSSES),
    M("losses/eq10-halved", "glae/losses.py",
      "return local_loss(local_logits, ages, sigma) + holistic_loss(holistic_logits, ages, sigma)",
      "return 0.5 * (local_loss(local_logits, ages, sigma) + holistic_loss(holistic_logits, ages, sigma))", LOSSES),
    M("losses/eq10-local-branch-detached", "glae/losses.py",
      "return local_loss(local_logits, ages, sigma) + holistic_loss(holistic_logits, ages, sigma)",
      "return local_loss(local_logits.detach(), ages, sigma) + holistic_loss(holistic_logits, ages, sigma)", LOSSES),
    M("losses/eq10-holistic-only", "glae/losses.py",
      "return local_loss(local_logits, ages, sigma) + holistic_loss(holistic_logits, ages, sigma)",
      "return holistic_loss(holistic_logits, ages, sigma)", LOSSES),
    M("losses/kl-option-is-base", "glae/losses.py",
      "    return kl_loss(_target_for(logits, ages, sigma), logits)\n\n\n@register_loss(\"base\")",
      "    return base_loss(logits, ages, sigma)\n\n\n@register_loss(\"base\")", LOSSES),
    M("losses/eq11-direction-inside-flip-kl", "glae/losses.py",
      "return (p * (p.clamp_min(eps).log() - p_flip.clamp_min(eps).log())).sum(dim=1)",
      "return (p_flip * (p_flip.clamp_min(eps).log() - p.clamp_min(eps).log())).sum(dim=1)", LOSSES),
    M("losses/eq11-mean-over-classes", "glae/losses.py",
      "return (p * (p.clamp_min(eps).log() - p_flip.clamp_min(eps).log())).sum(dim=1)",
      "return (p * (p.clamp_min(eps).log() - p_flip.clamp_min(eps).log())).mean(dim=1)", LOSSES,
      equivalent=True),
    M("losses/eq2-batch-sum", "glae/losses.py",
      "return _kl_terms(target.to(logits.dtype), logits).mean()", "return _kl_terms(target.to(logits.dtype), logits).sum()",
      LOSSES),
    M("losses/eq4-batch-sum", "glae/losses.py",
      "return _expectation_error_terms(ages, logits).mean()", "return _expectation_error_terms(ages, logits).sum()", LOSSES),
    M("losses/corn-real-ages-unrounded", "glae/losses.py",
      "ages = age_class(ages).to(", "ages = ages.to(", LOSSES),
    # --- glae/models/heads.py ------------------------------------------------------------
    M("heads/fr-no-rearrangement", "glae/models/heads.py",
      "return self.conv(F.pixel_shuffle(features, self.upscale))",
      "return self.conv(F.interpolate(features[:, : self.rearranged_channels], scale_factor=self.upscale))", HEADS),
    M("heads/fr-kernel-is-stride", "glae/models/heads.py",
      "nn.Conv2d(self.rearranged_channels, num_classes, kernel_size, stride)",
      "nn.Conv2d(self.rearranged_channels, num_classes, stride, stride)", HEADS),
    M("heads/fr-output-size-off-by-one", "glae/models/heads.py",
      "rows = (height * self.upscale - kernel) // stride + 1", "rows = (height * self.upscale - kernel) // stride", HEADS),
    M("heads/local-branch-column-major", "glae/models/heads.py",
      "return age_maps.flatten(2).transpose(1, 2)", "return age_maps.transpose(2, 3).flatten(2).transpose(1, 2)",
      HEADS, equivalent=True),
    M("heads/proj-no-relu", "glae/models/heads.py",
      "nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]", "nn.BatchNorm1d(hidden_dim), nn.Identity()]", HEADS),
    M("heads/proj-no-batchnorm", "glae/models/heads.py",
      "nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]", "nn.Identity(), nn.ReLU(inplace=True)]", HEADS),
    M("heads/proj-pixel-major-flatten", "glae/models/heads.py",
      "return self.classifier(self.proj(age_maps))", "return self.classifier(self.proj(age_maps.permute(0, 2, 3, 1)))",
      HEADS),
    M("heads/proj-spatially-transposed", "glae/models/heads.py",
      "return self.classifier(self.proj(age_maps))", "return self.classifier(self.proj(age_maps.transpose(2, 3)))",
      HEADS),
    M("heads/holistic-without-classifier", "glae/models/heads.py",
      "return self.classifier(self.proj(age_maps))", "return self.proj(age_maps)", HEADS),
    M("heads/fr-gap-max-pooling", "glae/models/heads.py",
      'return {"logits": self.rearrange(features).mean(dim=(2, 3))}',
      'return {"logits": self.rearrange(features).amax(dim=(2, 3))}', HEADS),
    M("heads/gap-sum-pooling", "glae/models/heads.py",
      'num_classes)\n\n    def forward(self, features: Tensor) -> dict[str, Tensor]:\n        return {"logits": self.classifier(features.mean(dim=(2, 3)))}',
      'num_classes)\n\n    def forward(self, features: Tensor) -> dict[str, Tensor]:\n        return {"logits": self.classifier(features.sum(dim=(2, 3)))}', HEADS),
    M("heads/local-logits-in-eval-too", "glae/models/heads.py",
      "        if self.training:\n            outputs[\"local_logits\"]", "        if True:\n            outputs[\"local_logits\"]",
      HEADS),
    # --- glae/routing.py -----------------------------------------------------------------
    M("routing/ties-go-to-vanilla", "glae/routing.py",
      "used_balanced = upsilon_vanilla >= upsilon_balanced if", "used_balanced = upsilon_vanilla > upsilon_balanced if",
      ROUTING),
    M("routing/smaller-and-bigger-swapped", "glae/routing.py",
      'used_balanced = upsilon_vanilla >= upsilon_balanced if mode == "routing"',
      'used_balanced = upsilon_vanilla >= upsilon_balanced if mode != "routing"', ROUTING),
    M("routing/no-flip-average", "glae/routing.py",
      "torch.where(used_balanced[:, None], balanced.mean(0), vanilla.mean(0))",
      "torch.where(used_balanced[:, None], balanced[0], vanilla[0])", ROUTING),
    M("routing/vanilla-mode-no-flip-average", "glae/routing.py",
      "return _prediction(vanilla.mean(0), vanilla.new_zeros(", "return _prediction(vanilla[0], vanilla.new_zeros(", ROUTING),
    M("routing/stage1-model-routed", "glae/routing.py",
      'return "routing" if info.get("balanced_trained") else "vanilla"', 'return "routing"', ROUTING),
    M("routing/balanced-mode-reads-vanilla", "glae/routing.py",
      "used_balanced = balanced.new_ones(balanced.shape[1], dtype=torch.bool)",
      "used_balanced = balanced.new_zeros(balanced.shape[1], dtype=torch.bool)", ROUTING),
    # --- glae/metrics.py -----------------------------------------------------------------
    M("metrics/mae-median", "glae/metrics.py",
      "return float(np.abs(true - pred).mean())", "return float(np.median(np.abs(true - pred)))", METRICS),
    M("metrics/age-class-round-half-down", "glae/metrics.py",
      "classes = (age + 0.5) // 1", "classes = -((0.5 - age) // 1)", METRICS),
    M("metrics/cmae-is-mae", "glae/metrics.py",
      "return float(np.mean([error for _, error in per_age_mae(y_true, y_pred).values()]))",
      "return mae(y_true, y_pred)", METRICS),
    M("metrics/cmae-weighted-by-count", "glae/metrics.py",
      "return float(np.mean([error for _, error in per_age_mae(y_true, y_pred).values()]))",
      "return float(np.average([e for _, e in per_age_mae(y_true, y_pred).values()], "
      "weights=[n for n, _ in per_age_mae(y_true, y_pred).values()]))", METRICS),
    M("metrics/epsilon-sigma-not-doubled", "glae/metrics.py",
      "np.exp(-((pred - true) ** 2) / (2.0 * sigmas**2))", "np.exp(-((pred - true) ** 2) / (sigmas**2))", METRICS),
    M("metrics/epsilon-literal-eq14", "glae/metrics.py",
      "return float(np.mean(1.0 - np.exp(-((pred - true) ** 2) / (2.0 * sigmas**2))))",
      "return float(1.0 - np.sum(np.exp(-((pred - true) ** 2) / (2.0 * sigmas**2))))", METRICS),
    M("metrics/aar-group-floor", "glae/metrics.py",
      "np.clip(np.ceil(age_class(true) / 10.0).astype(np.int64) - 1", "np.clip(np.floor(age_class(true) / 10.0).astype(np.int64)", METRICS),
    M("metrics/aar-empty-groups-count-as-zero", "glae/metrics.py",
      "present = np.array([value for value in group_mae.values() if value is not None])",
      "present = np.array([0.0 if value is None else value for value in group_mae.values()])", METRICS),
    M("metrics/aar-sigma-about-group-mean", "glae/metrics.py",
      "sigma = float(np.sqrt(np.mean((present - overall) ** 2)))", "sigma = float(np.std(present))", METRICS),
    M("metrics/aar-unclipped", "glae/metrics.py",
      '"aar": max(0.0, 7.0 - overall) + max(0.0, 3.0 - sigma)', '"aar": (7.0 - overall) + (3.0 - sigma)', METRICS),
    M("metrics/age-group-upper-bound-inclusive", "glae/metrics.py",
      "inside = (classes >= low) & (classes < high)", "inside = (classes >= low) & (classes <= high)", METRICS),
    M("metrics/age-groups-shifted", "glae/metrics.py", '("0-17", 0, 18),\n    ("18-65", 18, 66)',
      '("0-17", 0, 17),\n    ("18-65", 17, 66)', METRICS),
    M("metrics/summary-cmae-is-mae", "glae/metrics.py",
      '"cmae": cmae(true, pred),\n        "epsilon_error"', '"cmae": mae(true, pred),\n        "epsilon_error"', METRICS),
    M("metrics/aar-sigma-is-variance", "glae/metrics.py",
      "sigma = float(np.sqrt(np.mean((present - overall) ** 2)))", "sigma = float(np.mean((present - overall) ** 2))",
      METRICS),
    # --- glae/data/samplers.py -----------------------------------------------------------
    M("samplers/class-mode-is-instance", "glae/data/samplers.py",
      'if self.mode == "instance":', 'if self.mode in ("instance", "class"):', SAMPLERS),
    M("samplers/class-round-half-even", "glae/data/samplers.py",
      "classes.setdefault(age_class(age), [])", "classes.setdefault(round(age), [])", SAMPLERS),
    M("samplers/class-always-first-member", "glae/data/samplers.py",
      "within = (offsets * sizes[class_draws]).long()", "within = (offsets * 0).long()", SAMPLERS),
    M("samplers/class-weighted-by-size", "glae/data/samplers.py",
      "class_draws = torch.randint(len(self.class_members), (total,), generator=generator)",
      "class_draws = torch.multinomial(torch.tensor([float(len(m)) for m in self.class_members]), total, "
      "replacement=True, generator=generator)", SAMPLERS),
    M("samplers/order-ignores-epoch", "glae/data/samplers.py",
      "epoch_seed = self.seed * _SEED_STRIDE + self.epoch", "epoch_seed = self.seed * _SEED_STRIDE", SAMPLERS),
    M("samplers/resume-skips-one-more", "glae/data/samplers.py", "if local >= self.start:", "if local > self.start:",
      SAMPLERS),
    M("samplers/shards-overlap", "glae/data/samplers.py",
      "positions = range(self.rank, len(order), self.num_replicas)",
      "positions = range(0, len(order), self.num_replicas)", SAMPLERS),
    M("samplers/len-ignores-resume", "glae/data/samplers.py", "return self.num_samples - self.start",
      "return self.num_samples", SAMPLERS),
    # --- glae/data/protocols.py ----------------------------------------------------------
    M("protocols/split-size-truncated", "glae/data/protocols.py", "return math.floor(total * fraction + 0.5)",
      "return int(total * fraction)", PROTOCOLS),
    M("protocols/split-not-shuffled", "glae/data/protocols.py", "    random.Random(seed).shuffle(order)\n", "", PROTOCOLS),
    M("protocols/split-depends-on-load-order", "glae/data/protocols.py",
      "order = _by_path(samples)\n    random.Random(seed)", "order = list(samples)\n    random.Random(seed)", PROTOCOLS),
    M("protocols/val-taken-from-test", "glae/data/protocols.py",
      "val=_by_path(order[n_test : n_test + n_val]),", "val=_by_path(order[:n_val]),", PROTOCOLS),
    M("protocols/val-leaks-into-train", "glae/data/protocols.py",
      "train=_by_path(order[n_test + n_val :]),", "train=_by_path(order[n_test:]),", PROTOCOLS),
    M("protocols/lt-age-round-half-even", "glae/data/protocols.py", "groups[age_class(sample.age)].append(sample)",
      "groups[round(sample.age)].append(sample)", PROTOCOLS),
    M("protocols/lt-needs-more-than-n", "glae/data/protocols.py", "if len(group) >= per_age:",
      "if len(group) > per_age:", PROTOCOLS),
    M("protocols/lt-one-seed-for-all-ages", "glae/data/protocols.py", 'random.Random(f"{seed}/{age}")',
      "random.Random(seed)", PROTOCOLS),
    M("protocols/lt-first-n-not-random", "glae/data/protocols.py",
      'subset += _by_path(random.Random(f"{seed}/{age}").sample(group, per_age))', "subset += group[:per_age]",
      PROTOCOLS),
    M("protocols/morph-partial-keeps-everyone", "glae/data/protocols.py",
      'return sample.attributes.get("race", "").strip().lower() in {"w", "white"}', "return True", PROTOCOLS),
    M("protocols/loso-test-leaks-into-train", "glae/data/protocols.py",
      "train=[s for s in samples if s.subject != subject],", "train=list(samples),", PROTOCOLS),
    M("protocols/field-valid-is-test", "glae/data/protocols.py", '"valid": "val",', '"valid": "test",', PROTOCOLS),
    # --- glae/calibration.py: the 90% interval ------------------------------------------
    M("calibration/quantile-interpolated-from-bin-centre", "glae/calibration.py",
      "return (index - 0.5 + (levels - below) / mass)", "return (index + (levels - below) / mass)", CALIBRATION),
    M("calibration/quantile-cdf-read-as-exclusive", "glae/calibration.py",
      "below = cdf.gather(1, index) - probs.gather(1, index)", "below = cdf.gather(1, index)", CALIBRATION),
    M("calibration/interval-not-clipped-to-age-range", "glae/calibration.py",
      "return (index - 0.5 + (levels - below) / mass).clamp(0, probs.shape[-1] - 1)",
      "return index - 0.5 + (levels - below) / mass", CALIBRATION),
    M("calibration/interval-bounds-swapped", "glae/calibration.py",
      "levels = torch.tensor([low, high]", "levels = torch.tensor([high, low]", CALIBRATION),
    M("calibration/temperature-multiplies", "glae/calibration.py",
      "probs.clamp_min(1e-30).log() / temperature", "probs.clamp_min(1e-30).log() * temperature", CALIBRATION),
    M("calibration/fit-temperature-rounded-to-nearest", "glae/calibration.py",
      "temperature = math.ceil(high * 1e6) / 1e6", "temperature = round(high, 6)", CALIBRATION),
    M("calibration/fit-coverage-must-exceed-level", "glae/calibration.py",
      "if coverage(middle) >= level:", "if coverage(middle) > level:", CALIBRATION),
    M("calibration/covered-excludes-bounds", "glae/calibration.py",
      "return (intervals[:, 0] <= truth) & (truth <= intervals[:, 1])",
      "return (intervals[:, 0] < truth) & (truth < intervals[:, 1])", CALIBRATION),
    M("calibration/report-groups-by-raw-age", "glae/calibration.py",
      "classes = age_class(truth)  # groups by age class", "classes = truth  # groups by age class", CALIBRATION),
    # --- glae/evaluate.py: the evaluation report and the calibration pass ----------------
    M("evaluate/interval-from-vanilla-head", "glae/evaluate.py",
      "interval_report(age_interval(routed[mode].probs.double(), calibration)",
      'interval_report(age_interval(views["vanilla"].mean(0).double(), calibration)', EVALUATE),
    M("evaluate/interval-ignores-calibration", "glae/evaluate.py",
      "age_interval(routed[mode].probs.double(), calibration), ages", "age_interval(routed[mode].probs.double(), None), ages",
      EVALUATE),
    M("evaluate/calibration-fitted-on-vanilla-head", "glae/evaluate.py",
      "return fit_temperature(route(views, mode).probs, ages)", 'return fit_temperature(views["vanilla"].mean(0), ages)',
      EVALUATE),
    M("evaluate/routing-usage-upper-edge-inclusive", "glae/evaluate.py",
      "inside = (classes >= low) & (classes < high)", "inside = (classes >= low) & (classes <= high)", EVALUATE),
    # --- glae/export.py, glae/models/routed.py: the ONNX graph and its metadata -----------
    M("export/drops-calibration", "glae/export.py",
      '"calibration": None if model.calibration is None else model.calibration.to_dict(),', '"calibration": None,', EXPORT),
    M("export/drops-routing", "glae/export.py",
      "mode = routing_mode(info)\n    routed = RoutedAgeModel(", "mode = routing_mode({})\n    routed = RoutedAgeModel(", EXPORT),
    M("export/example-batch-of-one", "glae/export.py",
      "example = torch.zeros(2, 3, size, size", "example = torch.zeros(1, 3, size, size", EXPORT,
      equivalent=True),  # torch 2.14 keeps the batch dynamic from an example of 1; older torch specialised it
    M("export/head-probs-averaged-over-batch", "glae/models/routed.py",
      "per_head = tuple(views[head].mean(0) for head in self.heads)",
      "per_head = tuple(views[head].mean(1) for head in self.heads)", EXPORT),
    # --- glae/inference_backends.py: one inference path for PyTorch and ONNX --------------
    M("backends/torch-ignores-calibration", "glae/inference_backends.py",
      "self.calibration = model.calibration", "self.calibration = None", BACKENDS),
    M("backends/onnx-ignores-calibration", "glae/inference_backends.py",
      'self.calibration: IntervalCalibration | None = metadata["calibration"]',
      "self.calibration: IntervalCalibration | None = None", BACKENDS),
    M("backends/torch-always-routes", "glae/inference_backends.py",
      "return cls(model, routing_mode(info), precision)", 'return cls(model, "routing", precision)', BACKENDS),
    M("backends/export-without-calibration-refused", "glae/inference_backends.py",
      'stored.get(METADATA_PREFIX + "calibration", "null")', 'stored[METADATA_PREFIX + "calibration"]', BACKENDS),
    # --- glae/data/cache.py: never a stale or wrong image for a path --------------------
    M("cache/key-ignores-mtime", "glae/data/cache.py",
      r'f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n"', r'f"{path}\0{stat.st_size}\n"', CACHE),
    M("cache/key-ignores-file-size", "glae/data/cache.py",
      r'f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n"', r'f"{path}\0{stat.st_mtime_ns}\n"', CACHE),
    M("cache/key-ignores-image-size", "glae/data/cache.py",
      r'f"glae-image-cache {CACHE_FORMAT} {size}\n"', r'f"glae-image-cache {CACHE_FORMAT}\n"', CACHE),
    M("cache/key-sorts-the-file-list", "glae/data/cache.py",
      "for path in map(os.path.realpath, paths):", "for path in sorted(map(os.path.realpath, paths)):", CACHE),
    M("cache/usable-subset-index-not-mapped", "glae/data/cache.py",
      "return self.cache.image(self.indices[index])", "return self.cache.image(index)", CACHE),
)


def make_scratch(root: Path, tests: Path | None = None) -> Path:
    """Copy what the tests need into ``root/main``; ``root/shared`` points at the real
    shared folder so tests that read UTKFace find it where conftest.py looks."""
    main = root / "main"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("glae", "tests", "configs"):
        source = tests if name == "tests" and tests is not None else REPO / name
        if source.exists():
            shutil.copytree(source, main / name, ignore=ignore)
    for name in ("pyproject.toml",):
        shutil.copy2(REPO / name, main / name)
    shared = REPO.parent / "shared"
    if shared.exists():
        (root / "shared").symlink_to(shared)
    return main


def run_tests(main: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """Run ``tests`` against the scratch package; True when they all pass."""
    env = {**os.environ, "PYTHONPATH": str(main), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", "-m", "not slow",
               *tests]
    try:
        done = subprocess.run(command, cwd=main, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failed = next((line for line in lines if line.startswith("FAILED") or line.startswith("ERROR")), "")
    return done.returncode == 0, failed or (lines[-1] if lines else done.stderr[-300:])


def check_scratch_is_imported(main: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(main)}
    found = subprocess.run([sys.executable, "-c", "import glae; print(glae.__file__)"], cwd=main, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(main.resolve()):
        raise SystemExit(f"the scratch copy is not what the tests import ({found}); aborting")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[],
                        help="run the mutants whose id contains this text (repeat it: any of them), e.g. --only cache/")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--tests-dir", type=Path,
                        help="judge another tests folder (e.g. an older version's, from git archive)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutant's test run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(text in m.id for text in args.only)]
    if args.list:
        for mutant in chosen:
            print(f"{mutant.id:50s} {mutant.file}{'  (equivalent)' if mutant.equivalent else ''}")
        return 0
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="glae-mutants-") as scratch:
        main_dir = make_scratch(Path(scratch), args.tests_dir)
        check_scratch_is_imported(main_dir)
        baseline = sorted({test for mutant in chosen for test in mutant.tests})
        passed, detail = run_tests(main_dir, tuple(baseline), args.timeout)
        if not passed:
            print(f"the unmutated tests fail, so mutants cannot be judged: {detail}", file=sys.stderr)
            return 2
        for mutant in chosen:
            target = main_dir / mutant.file
            original = target.read_text()
            count = original.count(mutant.old)
            if count != 1:
                status, detail = "stale", f"original text found {count} times"
            else:
                target.write_text(original.replace(mutant.old, mutant.new))
                try:
                    passed, detail = run_tests(main_dir, mutant.tests, args.timeout)
                finally:
                    target.write_text(original)
                status = "survived" if passed else "killed"
            results.append({"id": mutant.id, "file": mutant.file, "status": status,
                            "equivalent": mutant.equivalent, "detail": detail})
            print(f"{status:8s} {mutant.id}{'  (equivalent)' if mutant.equivalent else ''}"
                  + (f"  [{detail}]" if status != "killed" else ""), flush=True)
    judged = [r for r in results if r["status"] != "stale"]
    killed = sum(r["status"] == "killed" for r in judged)
    survivors = [r for r in judged if r["status"] == "survived"]
    harmful = [r for r in survivors if not r["equivalent"]]
    stale = [r for r in results if r["status"] == "stale"]
    minutes = (time.monotonic() - started) / 60
    print(f"\nkilled {killed}/{len(judged)} ({100 * killed / max(len(judged), 1):.1f}%) in {minutes:.1f} min; "
          f"{len(survivors)} survived ({len(harmful)} not marked equivalent), {len(stale)} stale")
    for record in survivors:
        print(f"  survived: {record['id']}{'  (equivalent)' if record['equivalent'] else ''}")
    for record in stale:
        print(f"  stale: {record['id']} ({record['detail']})")
    if args.json:
        args.json.write_text(json.dumps({"killed": killed, "judged": len(judged), "results": results}, indent=1))
    return 1 if harmful else 0


if __name__ == "__main__":
    sys.exit(main())
