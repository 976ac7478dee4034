"""``model_metrics.html``: the page arcgis.learn writes beside a saved model, with our full metrics."""

from __future__ import annotations

from html import escape


def metrics_html(metrics: dict, info: dict[str, str], loss_graph: str | None, results: str | None) -> str:
    """A self-contained HTML page; ``loss_graph``/``results`` are image paths relative to the page."""
    rows = "".join(
        f"<tr><td>{p['value']}</td><td>{escape(p['name'])}</td><td>{p['precision']:.4f}</td>"
        f"<td>{p['recall']:.4f}</td><td>{p['f1']:.4f}</td><td>{p['iou']:.4f}</td><td>{p['support']}</td></tr>"
        for p in metrics["per_class"]
    )
    labels = metrics["labels"]
    cm_head = "".join(f"<th>{escape(name)}</th>" for name in labels)
    cm_rows = "".join(
        f"<tr><th>{escape(labels[i])}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for i, row in enumerate(metrics["confusion_matrix"]) if i > 0  # row 0 (truth = no data) is never counted
    )
    facts = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in info.items())
    figures = ""
    if loss_graph:
        figures += f'<h2>Training and validation loss</h2><img src="{escape(loss_graph)}" alt="loss graph">'
    if results:
        figures += f'<h2>Sample results</h2><img src="{escape(results)}" alt="image, truth, prediction">'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model metrics</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:right}} img{{max-width:100%}}</style></head><body>
<h1>Model metrics</h1>
<table>{facts}
<tr><th>Overall accuracy</th><td>{metrics['accuracy']:.4f}</td></tr>
<tr><th>Mean IoU</th><td>{metrics['miou']:.4f}</td></tr>
<tr><th>Kappa</th><td>{metrics['kappa']:.4f}</td></tr>
<tr><th>Labelled validation pixels</th><td>{metrics['pixels']}</td></tr></table>
<h2>Per-class metrics (validation set)</h2>
<table><tr><th>Value</th><th>Class</th><th>Precision</th><th>Recall</th><th>F1</th><th>IoU</th><th>Pixels</th></tr>
{rows}</table>
<h2>Confusion matrix (rows: truth, columns: prediction, pixels)</h2>
<table><tr><th></th>{cm_head}</tr>{cm_rows}</table>
{figures}
</body></html>
"""
