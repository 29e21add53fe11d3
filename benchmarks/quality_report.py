"""The quality benchmark's summary and markdown report (see quality.py), from its JSON results."""

from __future__ import annotations

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
    lines = ["## 1. Fashion-MNIST (normal) against MNIST test (anomalous)", "",
             f"Published: {PUBLISHED['pair']}. Goal for the default score: PixelCNN >= "
             f"{goal['pixelcnn']}, VAE >= {goal['vae']}.", "",
             "| model | score | AUROC | AUPRC | FPR@95%TPR |", "|---|---|---:|---:|---:|"]
    for r in pair:
        for name, m in r["scores"].items():
            mark = " (default)" if name == r["default_score"] else ""
            lines.append(f"| {r['unit']['kind']} | {name}{mark} | {m['auroc']:.4f} | "
                         f"{m['auprc']:.4f} | {m['fpr_at_95_tpr']:.4f} |")
    lines += ["", "With labelled anomalies (default score; rule fitted on half of the test scores, "
              "measured on the other half; `LabelledThresholdDetector`):", "",
              "| model | rule | target | FPR fit / held out | recall fit / held out "
              "| F1 fit / held out |", "|---|---|---:|---|---|---|"]
    for r in pair:
        report = r.get("labelled", {}).get(r["default_score"])
        for row in (report or {}).get("rules", []):
            fit, held = row["fit"], row["held_out"]
            lines.append(f"| {r['unit']['kind']} | {row['rule']} | {row['target'] or '-'} "
                         f"| {fit['fpr']:.4f} / {held['fpr']:.4f} "
                         f"| {fit['recall']:.4f} / {held['recall']:.4f} "
                         f"| {fit['f1']:.4f} / {held['f1']:.4f} |")
        for row in (report or {}).get("probability", []):
            lines.append(f"| {r['unit']['kind']} | P(anomaly) by {row['method']} | - "
                         f"| Brier {row['brier']:.4f} | ECE {row['ece']:.4f} | |")
    lines += ["", "Training budget:", ""]
    for r in pair:
        for role, t in r["training"].items():
            lines.append(f"- {r['key']} {role}: {t['parameters']} parameters, {t['n_train']} "
                         f"training images, {t['epochs']} epoch(s) in a {t['budget_seconds']} s "
                         f"budget ({t['stopped']}), validation "
                         f"{t['validation_bits_per_dim']:.4f} bits/dim")
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
            rs = sorted((r for r in oneclass
                         if r["unit"]["dataset"] == dataset and r["unit"]["kind"] == kind),
                        key=lambda r: r["unit"]["normal_class"])
            if not rs:
                continue
            classes = [str(r["unit"]["normal_class"]) for r in rs]
            lines += [f"### {dataset}, {kind} (published: {PUBLISHED['oneclass'][dataset]}; "
                      f"goal: mean >= {100 * GOALS['oneclass'][dataset]:.0f})", "",
                      "| score | " + " | ".join(classes) + " | mean |",
                      "|---|" + "---:|" * (len(classes) + 1)]
            for name in rs[0]["scores"]:
                values = [100 * r["scores"][name]["auroc"] for r in rs]
                mark = " (default)" if name == rs[0]["default_score"] else ""
                cells = " | ".join(f"{v:.1f}" for v in values)
                lines.append(f"| {name}{mark} | {cells} | **{np.mean(values):.1f}** |")
            t = rs[0]["training"]["model"]
            epochs = [r["training"]["model"]["epochs"] for r in rs]
            extra = " (and as much for its background model)" if kind == "pixelcnn" else ""
            lines += ["", f"Budget per class: {t['budget_seconds']} s{extra}, about {t['n_train']} "
                      f"training images, {t['parameters']} parameters, epochs {epochs}.", ""]
    return lines


def _calibration_section(pair: list[dict], oneclass: list[dict]) -> list[str]:
    lines = ["## 3. Calibration on held-out normal test images", "",
             "FPR: share of normal test images with p <= alpha. Binomial: the 95% interval of the "
             "rate measured on this many test images if the true rate were alpha. Conformal: the "
             "exact 95% interval when the reference is finite too (beta-binomial). KS p: the "
             "p-values against uniform, with the effective size m n / (m + n) since all share one "
             "reference "
             "of n (`ks_uniform(..., reference_size=n)`); KS2 p: scipy's two-sample test of the "
             "test scores against the reference. Both should be uniform when nothing drifted.", "",
             "| model | score | n_ref | alpha | FPR | binomial 95% | conformal 95% | KS p "
             "| KS2 p |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for r in pair:
        for name, m in r["scores"].items():
            c = m["calibration"]
            for row in c["rows"]:
                flag = "" if row["inside_binomial"] else " (outside)"
                conformal = ("n/a" if row["reference_too_small"]
                             else _fmt_interval(row["conformal_95"]))
                lines.append(f"| {r['unit']['kind']} | {name} | {c['n_reference']} "
                             f"| {row['alpha']} "
                             f"| {row['fpr']:.4f}{flag} | {_fmt_interval(row['binomial_95'])} "
                             f"| {conformal} | {c['ks_p_value']:.3f} | {c['ks2_p_value']:.3f} |")
    if oneclass:
        reports = [m["calibration"] for r in oneclass for m in r["scores"].values()]
        cells = [row for c in reports for row in c["rows"] if not row["reference_too_small"]]
        inside_b = sum(row["inside_binomial"] for row in cells)
        inside_c = sum(row["inside_conformal"] for row in cells)
        low_ks = sum(c["ks_p_value"] < 0.01 for c in reports)
        low_ks2 = sum(c["ks2_p_value"] < 0.01 for c in reports)
        lines += ["", f"One-class models ({len(oneclass)} units, every score, alpha in "
                  f"{list(ALPHAS)}): {inside_b}/{len(cells)} measured FPRs inside the binomial "
                  f"interval, {inside_c}/{len(cells)} inside the conformal one (about 95% is what "
                  f"chance gives); KS p < 0.01 for {low_ks}/{len(reports)} scores, KS2 p < 0.01 "
                  f"for {low_ks2}/{len(reports)}."]
    return [*lines, ""]


def _summary_section(summary: dict) -> list[str]:
    lines = ["## Default score per model kind", "",
             "Recommended: the highest worst-case AUROC across protocol 1 and the one-class means "
             "(not tuned to one pair).", "",
             "| model | score | pair | one-class MNIST | one-class Fashion-MNIST | worst |",
             "|---|---|---:|---:|---:|---:|"]
    for kind, s in summary.items():
        for name, row in s["scores"].items():
            mark = " **(recommended)**" if name == s["recommended_default"] else ""
            cells = [row.get(c) for c in ("pair", "oneclass-mnist", "oneclass-fashion-mnist")]
            text = " | ".join("-" if v is None else f"{v:.4f}" for v in cells)
            lines.append(f"| {kind} | {name}{mark} | {text} | {row['worst']:.4f} |")
    return [*lines, ""]


def markdown(results: dict) -> str:
    records = results["records"]
    settings = results["settings"]
    quick = "QUICK (tiny models, subsets; not comparable with published figures); " \
        if settings["quick"] else ""
    lines = ["# normalcy quality benchmark", "",
             f"{results['created']}; device {results['device']}; scorer {settings['scorer']}; "
             f"{quick}budget {settings['seconds_per_model']} s per Fashion-MNIST model, "
             f"{settings['seconds_per_class_model']} s per one-class model, "
             f"{settings['workers']} at a time; wall {results.get('wall_seconds', 'n/a')} s.", ""]
    pair = [r for r in records if r["unit"]["protocol"] == "pair"]
    oneclass = [r for r in records if r["unit"]["protocol"] == "oneclass"]
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
