"""Experiments: configuration (:mod:`.experiment_config`), the one orchestrator (:mod:`.run`), the paper's
comparisons (:mod:`.reproduce`) and the demo (:mod:`.demo`)."""
