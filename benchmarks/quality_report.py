"""The quality benchmark's figures from raw scores (calibration, labelled rules) and its summary
and markdown report (see quality.py)."""

from __future__ import annotations

import math

import numpy as np

ALPHAS = (0.001, 0.01, 0.05)
DATASETS = ("mnist", "fashion-mnist")
PUBLISHED = {
    "pair": "likelihood ratio with PixelCNN++ 0.994 (Ren et al. 2019); "
    "raw PixelCNN likelihood about 0.09",
    "oneclass": {"mnist": "Deep SVDD 94.8, GEOM 98.0", "fashion-mnist": "GEOM 93.5"},
}
GOALS = {
    "pair": {"pixelcnn": 0.99, "vae": 0.98},
    "oneclass": {"mnist": 0.95, "fashion-mnist": 0.92},
}


# --- figures from scores ------------------------------------------------------------------------
def calibration_report(reference: np.ndarray, normal: np.ndarray) -> dict:
    """Measured FPR at each alpha on held-out normal scores, with the binomial 95% interval of a
    test set of this size at the target, and the exact conformal one (beta-binomial: the
    reference is finite too); KS test of the normal p-values against uniform."""
    from scipy import stats

    from detectors.calibration import conformal_p_values, conformal_threshold
    from detectors.drift import ks_uniform

    reference = np.sort(reference)
    n, m = len(reference), len(normal)
    p_values = conformal_p_values(normal, reference)
    rows = []
    for alpha in ALPHAS:
        flagged = int(np.sum(p_values <= alpha))
        assert flagged == int(np.sum(normal > conformal_threshold(reference, alpha)))
        level = math.floor(
            alpha * (n + 1) + 1e-9
        )  # flagged iff fewer than `level` references are >= s
        binomial = [float(v) / m for v in stats.binom.interval(0.95, m, alpha)]
        exact = (
            [float(v) / m for v in stats.betabinom.interval(0.95, m, level, n + 1 - level)]
            if level >= 1
            else [0.0, 0.0]
        )
        fpr = flagged / m
        rows.append(
            {
                "alpha": alpha,
                "fpr": fpr,
                "flagged": flagged,
                "n_normal": m,
                "binomial_95": binomial,
                "inside_binomial": binomial[0] <= fpr <= binomial[1],
                "conformal_95": exact,
                "inside_conformal": exact[0] <= fpr <= exact[1],
                "reference_too_small": level < 1,
            }
        )
    ks = ks_uniform(p_values, reference_size=n)
    ks2 = stats.ks_2samp(normal, reference)
    return {
        "n_reference": n,
        "rows": rows,
        "ks_statistic": ks.statistic,
        "ks_p_value": ks.p_value,
        "ks_one_sample_p_value": ks_uniform(p_values).p_value,
        "ks2_statistic": float(ks2.statistic),
        "ks2_p_value": float(ks2.pvalue),
    }


RULES = (("fpr", 0.01), ("fpr", 0.05), ("recall", 0.95), ("f1", None))


def labelled_report(normal: np.ndarray, anomalous: np.ndarray, seed: int) -> dict:
    """With half of the labelled test scores: each threshold rule and P(anomaly) map, fitted on
    that half and measured on the other (the estimators of detectors/estimator.py)."""
    from detectors.estimator import LabelledThresholdDetector

    rng = np.random.default_rng(seed)
    s = np.r_[normal, anomalous]
    y = np.r_[np.zeros(len(normal), int), np.ones(len(anomalous), int)]
    fit_half = np.zeros(len(s), bool)
    fit_half[rng.permutation(len(s))[: len(s) // 2]] = True
    held_s, held_y = s[~fit_half], y[~fit_half]
    rules = []
    for rule, target in RULES:
        detector = LabelledThresholdDetector(rule=rule, target=target, probability=None)
        choice = detector.fit(s[fit_half], y[fit_half]).choice_
        flagged = detector.predict(held_s) == -1
        tp, fp = int(np.sum(flagged & (held_y == 1))), int(np.sum(flagged & (held_y == 0)))
        recall = tp / max(1, int(np.sum(held_y == 1)))
        precision = tp / (tp + fp) if tp + fp else 1.0
        rules.append(
            {
                "rule": rule,
                "target": target,
                "threshold": choice.threshold,
                "fit": {"fpr": choice.fpr, "recall": choice.recall, "f1": choice.f1},
                "held_out": {
                    "fpr": fp / max(1, int(np.sum(held_y == 0))),
                    "recall": recall,
                    "f1": 2 * precision * recall / (precision + recall) if tp else 0.0,
                },
            }
        )
    maps = []
    for method in ("isotonic", "logistic"):
        detector = LabelledThresholdDetector(rule="f1", probability=method).fit(
            s[fit_half], y[fit_half]
        )
        p = detector.predict_proba(held_s)[:, 1]
        bins = np.minimum((p * 10).astype(int), 9)
        ece = sum(
            abs(p[bins == b].mean() - held_y[bins == b].mean()) * np.mean(bins == b)
            for b in range(10)
            if np.any(bins == b)
        )
        maps.append(
            {"method": method, "brier": float(np.mean((p - held_y) ** 2)), "ece": float(ece)}
        )
    return {
        "n_fit": int(fit_half.sum()),
        "n_held_out": int((~fit_half).sum()),
        "rules": rules,
        "probability": maps,
    }


# --- summary --------------------------------------------------------------------------------------
def summarize(records: list[dict]) -> dict:
    """Per kind and score: pair-1 AUROC, one-class mean AUROC per data set, and the worst."""
    table: dict = {}
    for record in records:
        unit = record["unit"]
        column = "pair" if unit["protocol"] == "pair" else f"oneclass-{unit['dataset']}"
        for name, metrics in record["scores"].items():
            table.setdefault(unit["kind"], {}).setdefault(name, {}).setdefault(column, []).append(
                metrics["auroc"]
            )
    summary = {}
    for kind, by_score in table.items():
        rows = {}
        for name, columns in by_score.items():
            means = {column: float(np.mean(values)) for column, values in columns.items()}
            rows[name] = {
                **means,
                "n_classes": {c: len(v) for c, v in columns.items()},
                "worst": min(means.values()),
                "mean": float(np.mean(list(means.values()))),
            }
        best = max(rows, key=lambda name: (rows[name]["worst"], rows[name]["mean"]))
        summary[kind] = {
            "scores": rows,
            "recommended_default": best,
            "rule": "highest worst-case AUROC over protocol 1 and the one-class means "
            "(ties: highest mean)",
        }
    return summary


def _fmt_interval(values: list[float]) -> str:
    return f"[{values[0]:.4f}, {values[1]:.4f}]"


def _pair_section(pair: list[dict]) -> list[str]:
    goal = GOALS["pair"]
    lines = [
        "## 1. Fashion-MNIST (normal) against MNIST test (anomalous)",
        "",
        f"Published: {PUBLISHED['pair']}. Goal for the default score: PixelCNN >= "
        f"{goal['pixelcnn']}, VAE >= {goal['vae']}.",
        "",
        "| model | score | AUROC | AUPRC | FPR@95%TPR |",
        "|---|---|---:|---:|---:|",
    ]
    for r in pair:
        for name, m in r["scores"].items():
            mark = " (default)" if name == r["default_score"] else ""
            lines.append(
                f"| {r['unit']['kind']} | {name}{mark} | {m['auroc']:.4f} | "
                f"{m['auprc']:.4f} | {m['fpr_at_95_tpr']:.4f} |"
            )
    lines += [
        "",
        "With labelled anomalies (default score; rule fitted on half of the test scores, "
        "measured on the other half; `LabelledThresholdDetector`):",
        "",
        "| model | rule | target | FPR fit / held out | recall fit / held out "
        "| F1 fit / held out |",
        "|---|---|---:|---|---|---|",
    ]
    for r in pair:
        report = r.get("labelled", {}).get(r["default_score"])
        for row in (report or {}).get("rules", []):
            fit, held = row["fit"], row["held_out"]
            lines.append(
                f"| {r['unit']['kind']} | {row['rule']} | {row['target'] or '-'} "
                f"| {fit['fpr']:.4f} / {held['fpr']:.4f} "
                f"| {fit['recall']:.4f} / {held['recall']:.4f} "
                f"| {fit['f1']:.4f} / {held['f1']:.4f} |"
            )
        for row in (report or {}).get("probability", []):
            lines.append(
                f"| {r['unit']['kind']} | P(anomaly) by {row['method']} | - "
                f"| Brier {row['brier']:.4f} | ECE {row['ece']:.4f} | |"
            )
    lines += ["", "Training budget:", ""]
    for r in pair:
        for role, t in r["training"].items():
            lines.append(
                f"- {r['key']} {role}: {t['parameters']} parameters, {t['n_train']} "
                f"training images, {t['epochs']} epoch(s) in a {t['budget_seconds']} s "
                f"budget ({t['stopped']}), validation "
                f"{t['validation_bits_per_dim']:.4f} bits/dim"
            )
        if "bundle_error" in r:
            lines.append(f"- {r['key']}: bundle NOT written: {r['bundle_error']}")
        if "parity_max_abs_diff" in r:
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in r["parity_max_abs_diff"].items())
            lines.append(f"- {r['key']}: ONNX Runtime (CPU) against torch, max |diff|: {diffs}")
    return [*lines, ""]


def _oneclass_section(oneclass: list[dict]) -> list[str]:
    lines = ["## 2. One-class protocol: AUROC (%) per normal class", ""]
    for dataset in DATASETS:
        for kind in ("pixelcnn", "vae"):
            rs = sorted(
                (
                    r
                    for r in oneclass
                    if r["unit"]["dataset"] == dataset and r["unit"]["kind"] == kind
                ),
                key=lambda r: r["unit"]["normal_class"],
            )
            if not rs:
                continue
            classes = [str(r["unit"]["normal_class"]) for r in rs]
            lines += [
                f"### {dataset}, {kind} (published: {PUBLISHED['oneclass'][dataset]}; "
                f"goal: mean >= {100 * GOALS['oneclass'][dataset]:.0f})",
                "",
                "| score | " + " | ".join(classes) + " | mean |",
                "|---|" + "---:|" * (len(classes) + 1),
            ]
            for name in rs[0]["scores"]:
                values = [100 * r["scores"][name]["auroc"] for r in rs]
                mark = " (default)" if name == rs[0]["default_score"] else ""
                cells = " | ".join(f"{v:.1f}" for v in values)
                lines.append(f"| {name}{mark} | {cells} | **{np.mean(values):.1f}** |")
            t = rs[0]["training"]["model"]
            epochs = [r["training"]["model"]["epochs"] for r in rs]
            extra = " (and as much for its background model)" if kind == "pixelcnn" else ""
            lines += [
                "",
                f"Budget per class: {t['budget_seconds']} s{extra}, about {t['n_train']} "
                f"training images, {t['parameters']} parameters, epochs {epochs}.",
                "",
            ]
    return lines


def _calibration_section(pair: list[dict], oneclass: list[dict]) -> list[str]:
    lines = [
        "## 3. Calibration on held-out normal test images",
        "",
        "FPR: share of normal test images with p <= alpha. Binomial: the 95% interval of the "
        "rate measured on this many test images if the true rate were alpha. Conformal: the "
        "exact 95% interval when the reference is finite too (beta-binomial). KS p: the "
        "p-values against uniform, with the effective size m n / (m + n) since all share one "
        "reference "
        "of n (`ks_uniform(..., reference_size=n)`); KS2 p: scipy's two-sample test of the "
        "test scores against the reference. Both should be uniform when nothing drifted.",
        "",
        "| model | score | n_ref | alpha | FPR | binomial 95% | conformal 95% | KS p | KS2 p |",
        "|---|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in pair:
        for name, m in r["scores"].items():
            c = m["calibration"]
            for row in c["rows"]:
                flag = "" if row["inside_binomial"] else " (outside)"
                conformal = (
                    "n/a" if row["reference_too_small"] else _fmt_interval(row["conformal_95"])
                )
                lines.append(
                    f"| {r['unit']['kind']} | {name} | {c['n_reference']} "
                    f"| {row['alpha']} "
                    f"| {row['fpr']:.4f}{flag} | {_fmt_interval(row['binomial_95'])} "
                    f"| {conformal} | {c['ks_p_value']:.3f} | {c['ks2_p_value']:.3f} |"
                )
    if oneclass:
        reports = [m["calibration"] for r in oneclass for m in r["scores"].values()]
        cells = [row for c in reports for row in c["rows"] if not row["reference_too_small"]]
        inside_b = sum(row["inside_binomial"] for row in cells)
        inside_c = sum(row["inside_conformal"] for row in cells)
        low_ks = sum(c["ks_p_value"] < 0.01 for c in reports)
        low_ks2 = sum(c["ks2_p_value"] < 0.01 for c in reports)
        lines += [
            "",
            f"One-class models ({len(oneclass)} units, every score, alpha in "
            f"{list(ALPHAS)}): {inside_b}/{len(cells)} measured FPRs inside the binomial "
            f"interval, {inside_c}/{len(cells)} inside the conformal one (about 95% is what "
            f"chance gives); KS p < 0.01 for {low_ks}/{len(reports)} scores, KS2 p < 0.01 "
            f"for {low_ks2}/{len(reports)}.",
        ]
    return [*lines, ""]


def _summary_section(summary: dict) -> list[str]:
    lines = [
        "## Default score per model kind",
        "",
        "Recommended: the highest worst-case AUROC across protocol 1 and the one-class means "
        "(not tuned to one pair).",
        "",
        "| model | score | pair | one-class MNIST | one-class Fashion-MNIST | worst |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kind, s in summary.items():
        for name, row in s["scores"].items():
            mark = " **(recommended)**" if name == s["recommended_default"] else ""
            cells = [row.get(c) for c in ("pair", "oneclass-mnist", "oneclass-fashion-mnist")]
            text = " | ".join("-" if v is None else f"{v:.4f}" for v in cells)
            lines.append(f"| {kind} | {name}{mark} | {text} | {row['worst']:.4f} |")
    return [*lines, ""]


def goals(records: list[dict]) -> list[dict]:
    """The issue's goals for the bundles' default scores, each with what was measured."""
    rows = []
    for r in records:
        if r["unit"]["protocol"] == "pair":
            kind = r["unit"]["kind"]
            auroc = r["scores"][r["default_score"]]["auroc"]
            rows.append(
                {
                    "goal": f"{kind} pair-1 AUROC ({r['default_score']})",
                    "target": GOALS["pair"][kind],
                    "measured": auroc,
                    "met": auroc >= GOALS["pair"][kind],
                }
            )
    for dataset in DATASETS:
        for kind in ("pixelcnn", "vae"):
            rs = [
                r
                for r in records
                if r["unit"]["protocol"] == "oneclass"
                and r["unit"]["dataset"] == dataset
                and r["unit"]["kind"] == kind
            ]
            if rs:
                mean = float(np.mean([r["scores"][r["default_score"]]["auroc"] for r in rs]))
                target = GOALS["oneclass"][dataset]
                rows.append(
                    {
                        "goal": f"{kind} one-class {dataset} mean AUROC "
                        f"({rs[0]['default_score']}, {len(rs)} classes)",
                        "target": target,
                        "measured": mean,
                        "met": mean >= target,
                    }
                )
    cells = [
        row
        for r in records
        for row in r["scores"][r["default_score"]]["calibration"]["rows"]
        if not row["reference_too_small"]
    ]
    if cells:
        # The binomial interval ignores that the reference is a sample too; with n_ref not much
        # larger than the test set, chance alone puts some cells outside it. The conformal
        # (beta-binomial) interval is the exact one: about 5% of cells fall outside by chance.
        for name, key in (("binomial", "inside_binomial"), ("conformal", "inside_conformal")):
            inside = sum(row[key] for row in cells)
            rows.append(
                {
                    "goal": f"default scores: measured FPR inside its {name} 95% interval",
                    "target": len(cells),
                    "measured": inside,
                    "met": inside >= 0.9 * len(cells),
                }
            )
    return rows


def _goals_section(records: list[dict]) -> list[str]:
    lines = [
        "## Goals (default scores)",
        "",
        "FPR rows count (model, alpha) cells; 'met' there means at least 90% of cells inside "
        "a 95% interval (some fall outside by chance).",
        "",
        "| goal | target | measured | met |",
        "|---|---:|---:|---|",
    ]
    for row in goals(records):
        measured = row["measured"]
        text = f"{measured:.4f}" if isinstance(measured, float) else str(measured)
        lines.append(
            f"| {row['goal']} | {row['target']} | {text} | {'yes' if row['met'] else '**no**'} |"
        )
    return [*lines, ""]


def markdown(results: dict) -> str:
    records = results["records"]
    settings = results["settings"]
    quick = (
        "QUICK (tiny models, subsets; not comparable with published figures); "
        if settings["quick"]
        else ""
    )
    lines = [
        "# normalcy quality benchmark",
        "",
        f"{results['created']}; device {results['device']}; scorer {settings['scorer']}; "
        f"{quick}budget {settings['seconds_per_model']} s per Fashion-MNIST model, "
        f"{settings['seconds_per_class_model']} s per one-class model, "
        f"{settings['workers']} at a time; wall {results.get('wall_seconds', 'n/a')} s.",
        "",
    ]
    pair = [r for r in records if r["unit"]["protocol"] == "pair"]
    oneclass = [r for r in records if r["unit"]["protocol"] == "oneclass"]
    if records:
        lines += _goals_section(records)
    if pair:
        lines += _pair_section(pair)
    if oneclass:
        lines += _oneclass_section(oneclass)
    if pair or oneclass:
        lines += _calibration_section(pair, oneclass)
    if results.get("summary"):
        lines += _summary_section(results["summary"])
    if results.get("errors"):
        lines += ["## Errors", ""]
        lines += [f"- {e['key']} {e['role']}: {e['error']}" for e in results["errors"]] + [""]
    if results.get("skipped"):
        lines += [f"Skipped for time: {', '.join(results['skipped'])}", ""]
    return "\n".join(lines)
