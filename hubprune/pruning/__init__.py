"""Source to members: open a source (folder, Hub id, GGUF), read its architecture and shape, plan the widths,
score neurons, and write every member in one streaming pass (family.py); check-criteria compares criteria
on held-out text. Pure scoring and planning (importance.py, plan.py) touch no files."""
