"""What the members are worth: benchmarks through lm-eval (evaluate.py, offline_tasks.py) and efficiency
(profile.py orchestrates rounds of fresh processes, each running efficiency.py), with the device rules, the
energy counters and the lookup of the base model's local copy that both stages share."""
