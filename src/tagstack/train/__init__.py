"""Training: the one loop (:mod:`.loop`), what each stage trains on (:mod:`.stages`), and metrics (:mod:`.evaluation`)."""
