"""Training: the one loop (:mod:`.loop`) and what each stage computes (:mod:`.stages`: stages 1 and 3, stage 2's
feature extraction, joint fine-tuning); its metrics are :mod:`tagstack.evaluation`'s."""
