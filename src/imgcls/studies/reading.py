"""The generated reading of a study's results: the winner, the gap to the runner-up and whether it is within noise,
the last variant, every variant against the baseline, the secondary metrics, and what the literature expects."""

from __future__ import annotations

from typing import Any

from imgcls.studies.definitions import StudyDefinition
from imgcls.studies.metrics import fmt_gap, fmt_value, metric_info
from imgcls.studies.stats import Summary, best_names, mean_test_n, rank, within_noise

#: metrics whose best and worst are also compared as a ratio ("1.52x")
_RATIO_METRICS = ("train_s", "total_s", "images_per_s")


def make_reading(study: StudyDefinition, summary: Summary, rows: list[dict[str, Any]]) -> str:
    """A short Markdown reading of the results: the winner, the gap to the runner-up, noise, the baseline
    comparison, the secondary metrics and what to expect."""
    metric = study.metric
    info = metric_info(metric, True)
    ranked = rank(summary, study.ranked, metric)
    if not ranked:
        return "No results."
    n_seeds = int(max(summary[n][metric]["n"] for n in ranked))
    n_test = mean_test_n(rows)
    seeds_text = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    best = ranked[0]
    b = summary[best][metric]
    if len(ranked) == 1:
        lines = [f"Only **{best}** ran: {info.label} {fmt_value(metric, b['mean'], b['std'])} ({seeds_text})."]
    else:
        lines = [_winner_sentence(metric, summary, ranked, n_test, seeds_text)]
        worst, second = ranked[-1], ranked[1]
        if worst != second and worst not in best_names(summary, ranked, metric):  # a tie has no last
            w = summary[worst][metric]
            lines.append(
                f"Last: **{worst}** ({fmt_value(metric, w['mean'], w['std'])}, "
                f"{fmt_gap(metric, w['mean'] - b['mean'])} vs the best)."
            )
        base = study.ranked[0]
        if base in summary and len(ranked) > 2:
            lines.append(_against_baseline(study, summary, n_test))
    lines += _secondary_lines(study, summary)
    if study.expect:
        lines.append(f"What to expect: {study.expect}")
    return "\n\n".join(lines)


def _winner_sentence(metric: str, summary: Summary, ranked: list[str], n_test: float | None, seeds_text: str) -> str:
    """The best variant, its gap to the runner-up (or the tie) and whether the gap is within noise."""
    info = metric_info(metric, True)
    best, second = ranked[0], ranked[1]
    b, s = summary[best][metric], summary[second][metric]
    gap = b["mean"] - s["mean"]
    tied = best_names(summary, ranked, metric)
    if len(tied) > 1:
        return (
            f"{', '.join(f'**{n}**' for n in tied)} tie on {info.label} at "
            f"{fmt_value(metric, b['mean'])} ({seeds_text})."
        )
    better = "higher" if info.higher else "lower"
    sent = (
        f"**{best}** has the best {info.label} ({better} is better): "
        f"{fmt_value(metric, b['mean'], b['std'])} over {seeds_text}, {fmt_gap(metric, gap)} vs the "
        f"runner-up **{second}** ({fmt_value(metric, s['mean'], s['std'])})."
    )
    within, noise, source = within_noise(metric, b, s, n_test)
    if within is None:
        return sent + " With one seed there is no noise estimate: rerun with `--seeds 3` before trusting a small gap."
    noise_text = fmt_gap(metric, noise).lstrip("+")
    if within:
        return sent + (
            f" That gap is **within noise** ({source}: {noise_text}): at this budget the two are not distinguishable."
        )
    return sent + f" The gap is larger than the noise ({source}: {noise_text})."


def _against_baseline(study: StudyDefinition, summary: Summary, n_test: float | None) -> str:
    """Every other ranked variant's change against the first ranked one, tagged within or beyond noise."""
    metric, base = study.metric, study.ranked[0]
    parts = []
    for n in study.ranked[1:]:
        if n not in summary:
            continue
        d = summary[n][metric]["mean"] - summary[base][metric]["mean"]
        w_in, _, _ = within_noise(metric, summary[n][metric], summary[base][metric], n_test)
        tag = "" if w_in is None else (" (within noise)" if w_in else " (beyond noise)")
        parts.append(f"{n} {fmt_gap(metric, d)}{tag}")
    return f"Against the baseline **{base}**: " + "; ".join(parts) + "."


def _secondary_lines(study: StudyDefinition, summary: Summary) -> list[str]:
    """One line per metric of ``study.also``: the values (unranked metrics) or the best and the worst variant."""
    lines = []
    for m in study.also:
        mi = metric_info(m)
        names = [n for n in study.ranked if n in summary and summary[n][m]["n"] > 0]
        if not names:
            continue
        if mi.higher is None:
            lines.append(
                f"{mi.label.capitalize()}: "
                + ", ".join(f"{n} {fmt_value(m, summary[n][m]['mean'])}" for n in names)
                + "."
            )
            continue
        order = rank(summary, names, m)
        top, bottom = order[0], order[-1]
        if top == bottom:
            continue
        t, w = summary[top][m]["mean"], summary[bottom][m]["mean"]
        tied = best_names(summary, names, m)
        if bottom in tied:
            lines.append(f"{mi.label.capitalize()}: all tie at {fmt_value(m, t)}.")
            continue
        ratio = f", {max(w, t) / max(1e-9, min(w, t)):.2f}x" if m in _RATIO_METRICS and t > 0 else ""
        tops = ", ".join(f"**{n}**" for n in tied) + (" (tie)" if len(tied) > 1 else "")
        lines.append(
            f"{mi.label.capitalize()}: best {tops} ({fmt_value(m, t)}), worst **{bottom}** ({fmt_value(m, w)}{ratio})."
        )
    return lines
