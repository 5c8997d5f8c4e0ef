"""The report as one self-contained HTML page (figures inlined as base64 PNG), and its PDF.

Jinja2 with autoescaping: request ids and model names come from users. The PDF is the same
page rendered by xhtml2pdf (pure Python, no browser), so the two never disagree.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from jinja2 import Environment, select_autoescape

from unlearning_core.errors import LetheError

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Erasure report: {{ r.model_name }} v{{ r.version }}</title>
<style>
body { font-family: Helvetica, Arial, sans-serif; font-size: 12px; color: #222; margin: 24px; }
h1 { font-size: 20px; } h2 { font-size: 15px; border-bottom: 1px solid #ccc; margin-top: 22px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: left; }
td.num { text-align: right; font-family: monospace; } code { font-size: 10px; }
.note { color: #666; } img { max-width: 100%; }
</style></head><body>
<h1>Erasure report: {{ r.model_name }} version {{ r.version }}</h1>
<p class="note">Generated {{ r.generated_at }} by Lethe. Run <code>{{ r.run_id }}</code>;
version {{ r.version }} (parent {{ r.parent }}) published {{ r.created_at }}.</p>

<section id="requests"><h2>Requests answered</h2>
{% if r.requests %}<table><tr><th>request id</th><th>data subject</th><th>samples</th></tr>
{% for q in r.requests %}<tr><td><code>{{ q.id }}</code></td><td>{{ q.subject_id or "-" }}</td><td class="num">{{ q.samples }}</td></tr>{% endfor %}
</table>{% else %}<p>No service request: erased from the command line ({{ r.forget }}).</p>{% endif %}
<p>Forget set: {{ r.forget }}; {{ r.forget_samples }} training samples of class(es) {{ r.forget_classes|join(", ") or "-" }}.</p>
</section>

<section id="method"><h2>Method and guarantee</h2>
<table><tr><th>method</th><td>{{ r.method }}</td></tr>
<tr><th>guarantee</th><td>{{ r.guarantee }}{% if r.guarantee == "exact" %}: the weights are those of a model never trained on the forget set{% else %}: the forget set's influence is removed approximately; the metrics below are the evidence{% endif %}</td></tr>
<tr><th>what it does</th><td>{{ r.method_summary }}</td></tr>
{% if r.recovery_steps %}<tr><th>recovery fine-tune</th><td>{{ r.recovery_steps }} steps on retained data</td></tr>{% endif %}
{% if r.method_options %}<tr><th>options</th><td>{% for name, value in r.method_options.items() %}<code>{{ name }}={{ value }}</code>{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>{% endif %}
</table></section>

<section id="metrics"><h2>Efficacy metrics</h2>
<table><tr><th>metric</th>{% for h in r.metric_columns %}<th>{{ h }}</th>{% endfor %}<th>better</th></tr>
{% for row in r.metric_rows %}<tr><td>{{ row.label }} <code>{{ row.name }}</code></td>{% for v in row["values"] %}<td class="num">{{ v }}</td>{% endfor %}<td class="note">{{ row.better }}</td></tr>{% endfor %}
</table>
<p class="note">forget/retain/test accuracy are fractions; mia_auc 0.5 means forget samples look like unseen data;
"closer to retrain" means the value of a model retrained without the forget set is the target;
the previous column is the parent version measured on this version's forget set.</p></section>

<section id="layer-distance"><h2>Layer-wise distance</h2>
{% if r.figures.layer_distance %}<img alt="layer distance" src="data:image/png;base64,{{ r.figures.layer_distance }}">
{% else %}<p class="note">{{ r.notes.layer_distance or "not measured" }}</p>{% endif %}</section>

<section id="gradcam"><h2>Class activation maps (Grad-CAM)</h2>
{% if r.figures.gradcam %}<img alt="Grad-CAM grid" src="data:image/png;base64,{{ r.figures.gradcam }}">
<p class="note">Fixed panel of test images of the forgotten class(es); heat shows where each model finds evidence for the image's true class.</p>
{% else %}<p class="note">{{ r.notes.gradcam }}</p>{% endif %}</section>

<section id="timeline"><h2>Accuracy timeline</h2>
{% if r.figures.timeline %}<img alt="accuracy timeline" src="data:image/png;base64,{{ r.figures.timeline }}">
{% else %}<p class="note">{{ r.notes.timeline or "no timeline was recorded for this run" }}</p>{% endif %}</section>

<section id="blobs"><h2>Blobs (sha256)</h2>
<table><tr><th>what</th><th>key</th><th>sha256</th><th>bytes</th></tr>
{% for b in r.blobs %}<tr><td>{{ b.label }}</td><td><code>{{ b.key }}</code></td><td><code>{{ b.sha256 }}</code></td><td class="num">{{ b.size }}</td></tr>{% endfor %}
</table></section>

<section id="audit"><h2>Audit-chain position</h2>
{% if r.audit %}<table><tr><th>event</th><td>{{ r.audit.kind }} (id {{ r.audit.id }})</td></tr>
<tr><th>position (seq)</th><td>{{ r.audit.seq }}</td></tr>
<tr><th>hash</th><td><code>{{ r.audit.hash }}</code></td></tr>
<tr><th>previous hash</th><td><code>{{ r.audit.prev_hash }}</code></td></tr></table>
<p class="note">Verify with <code>GET /admin/audit/verify</code> or <code>lethe audit verify</code>.</p>
{% else %}<p class="note">Not in an audit chain: this version was published from the command line, outside the service.</p>{% endif %}
</section>
</body></html>
"""

_env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_template = _env.from_string(TEMPLATE)


def b64(png: bytes | None) -> str | None:
    return base64.b64encode(png).decode() if png else None


def render_html(context: dict[str, Any]) -> str:
    """The page for ``context`` (see :mod:`unlearning_core.report.build`)."""
    return _template.render(r=context)


def render_pdf(html: str) -> bytes:
    """The same page as PDF (xhtml2pdf understands the inlined data: URIs)."""
    from xhtml2pdf import pisa

    out = io.BytesIO()
    status = pisa.CreatePDF(html, dest=out)
    if status.err:
        raise LetheError(f"PDF rendering failed with {status.err} error(s)")
    return out.getvalue()
