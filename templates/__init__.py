"""hubprune's model-card templates (Jinja). Shipped in the wheel as the package `hubprune.templates`, so that
importlib.resources finds them installed or editable; `--template-dir` points hubprune at a copy to change."""
