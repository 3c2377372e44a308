"""Self-contained HTML reports: metrics table, poisoned samples, triggered predictions, training curves.

Figures are drawn with matplotlib's Agg backend and embedded as base64 PNG, so a report is one file that
opens anywhere with no network. ``html_page`` and ``figure_png`` are shared by the paper reproductions.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from backdoorlab.experiments.store import RunRecord
from backdoorlab.fileio import write_atomic

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.3rem .7rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.9rem} .muted{color:#888} img{max-width:100%}
pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.85rem}
"""


def figure_png(fig: plt.Figure, save_to: str | Path | None = None) -> str:
    """A matplotlib figure as an ``<img>`` tag with embedded PNG; closes the figure.

    ``save_to``: also write the same PNG there (atomically), for readers who want the plot as a file.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    if save_to is not None:
        write_atomic(save_to, buf.getvalue())
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def embed_figures(figs: dict[str, plt.Figure], plots: str | Path | None = None) -> dict[str, str]:
    """Each figure as an ``<img>`` tag (:func:`figure_png`), and as ``plots/<key>.png`` when ``plots`` is given."""
    return {k: figure_png(f, None if plots is None else Path(plots) / f"{k}.png") for k, f in figs.items()}


def html_page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )


def report_page(name: str, parts: Sequence[str], config: Any) -> str:
    """A whole report: ``parts`` (HTML fragments), then the config that produced them, as one page."""
    config_html = f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>"
    return html_page(f"backdoorlab · {name}", "\n".join([*parts, "<h2>Config</h2>", config_html]))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2%}" if 0 <= v <= 1 else f"{v:.3g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image_grid(
    images: torch.Tensor, titles: Sequence[str], ncols: int = 8, colors: Sequence[str] | None = None
) -> plt.Figure:
    """A grid of [0, 1] images (N×C×H×W) with a title under each."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.6 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].detach().cpu().clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0), interpolation="nearest")
        ax.set_title(titles[i], fontsize=7, color=(colors[i] if colors else "black"))
    fig.tight_layout()
    return fig


def training_curves(histories: dict[str, list[dict]]) -> plt.Figure:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.2))
    for label, hist in histories.items():
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        ax_loss.plot(epochs, [h["loss"] for h in hist], marker="o", ms=3, label=label)
        if "train_acc" in hist[0]:
            ax_acc.plot(epochs, [h["train_acc"] for h in hist], marker="o", ms=3, label=f"{label} (train)")
        if "val_acc" in hist[0]:
            ax_acc.plot(
                epochs, [h["val_acc"] for h in hist], marker="s", ms=3, ls="--", label=f"{label} (test)"
            )
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


_BASIC = ("clean_acc", "asr", "per_class_acc", "confusion")


def render_run_report(record: RunRecord, examples: dict[str, torch.Tensor]) -> str:
    """The HTML report of one experiment run."""
    m = record.metrics
    classes = m.get("classes", [])
    name = lambda i: classes[i] if 0 <= i < len(classes) else str(i)  # noqa: E731
    attack = record.config.get("attack")
    parts = [
        f"<h1>{html.escape(record.name)}</h1>",
        f"<p class='muted'>run {record.id} · {record.created_iso} · {record.seconds:.1f} s · "
        f"{m.get('n_train', '?')} training / {m.get('n_test', '?')} test images"
        + (f" · {m['n_poisoned']} poisoned ({m['poison_rate']:.1%})" if "n_poisoned" in m else "")
        + "</p>",
        "<h2>Metrics</h2>",
    ]
    rows = []
    models = [k for k in ("victim", "clean") if k in m]
    # an attack's own metrics (e.g. AdvTrojan's accuracy on PGD / AdvTrojan examples) get their own columns
    extra = (
        [k for k in m["victim"] if k not in _BASIC and isinstance(m["victim"][k], float)] if models else []
    )
    for label, key in (("poisoned model" if attack else "model", "victim"), ("clean reference", "clean")):
        if key in m:
            rows.append(
                [label, m[key]["clean_acc"], m[key].get("asr", "—"), *(m[key].get(k, "—") for k in extra)]
            )
    parts.append(table(["model", "clean accuracy", "attack success rate", *extra], rows))
    if attack:
        parts.append(f"<p class='note'>{html.escape(m.get('asr_convention', ''))}</p>")

    if "poison_images" in examples:
        titles = [
            f"{name(int(o))}→{name(int(p))}"
            for o, p in zip(examples["poison_original"].tolist(), examples["poison_labels"].tolist())
        ]
        parts += [
            "<h2>Poisoned training samples</h2>",
            "<p class='note'>original label → label after poisoning</p>",
            figure_png(image_grid(examples["poison_images"], titles)),
        ]
    if "test_triggered" in examples:
        n = len(examples["test_triggered"])
        both = torch.cat([examples["test_clean"], examples["test_triggered"]])
        titles = [f"clean: {name(int(p))}" for p in examples["test_pred_clean"].tolist()] + [
            f"trigger: {name(int(p))}" for p in examples["test_pred_triggered"].tolist()
        ]
        target = attack.get("target") if attack else None
        colors = ["black"] * n + [
            "firebrick" if target is not None and int(p) == int(target) else "black"
            for p in examples["test_pred_triggered"].tolist()
        ]
        parts += [
            "<h2>Test images: clean and triggered</h2>",
            "<p class='note'>the poisoned model's prediction under each image (red: the attack's target)</p>",
            figure_png(image_grid(both, titles, ncols=min(n, 8) or 1, colors=colors)),
        ]
    hist = m.get("history", {})
    if any(hist.values()):
        labels = {"victim": "poisoned" if attack else "model", "clean": "clean"}
        parts += [
            "<h2>Training curves</h2>",
            figure_png(training_curves({labels[k]: v for k, v in hist.items()})),
        ]
    if "confusion" in m.get("victim", {}):
        cm = torch.tensor(m["victim"]["confusion"], dtype=torch.float)
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.imshow(cm / cm.sum(1, keepdim=True).clamp_min(1), cmap="Blues", vmin=0, vmax=1)
        ax.set(xlabel="predicted", ylabel="true", title="confusion (clean test, poisoned model)")
        ax.set_xticks(range(len(cm)), [str(c)[:6] for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(len(cm)), [str(c)[:6] for c in classes], fontsize=7)
        parts += ["<h2>Confusion matrix</h2>", figure_png(fig)]
    return report_page(record.name, parts, record.config)
