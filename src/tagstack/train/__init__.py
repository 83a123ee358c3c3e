"""Training: the one loop (:mod:`.loop`) and what each stage trains on (:mod:`.stages`); its metrics are
:mod:`tagstack.evaluation`'s."""
