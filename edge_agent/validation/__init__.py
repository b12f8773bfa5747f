"""Local validation: a model measured on a site's own labelled series (``edge-agent validate``).

- :mod:`~edge_agent.validation.labels` — the data folder (headers only) and its labels (folders or CSV);
- :mod:`~edge_agent.validation.run` — every labelled series through the product's ``analyse_series``;
- :mod:`~edge_agent.validation.metrics` — AUC, CIs, sensitivity/specificity, thresholds (plain numpy);
- :mod:`~edge_agent.validation.summary` — the figures of ``report.json``;
- :mod:`~edge_agent.validation.report` / :mod:`~edge_agent.validation.plots` — report.json, report.html, the table.

docs/VALIDATION.md describes the labels, the metrics and how to read the report.
"""
