"""Recovery after pruning: what brings a member back toward its base. One module per method (refit.py,
distill.py), a registry of them (methods.py), the settings (settings.py) and the one prepare/apply that the family
build and check-criteria both call (apply.py); the launched distillation worker is `python -m hubprune.recover.worker`."""
