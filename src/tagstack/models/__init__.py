"""The networks: local CNNs (stage 1), aggregation (stage 2), the global classifier (stage 3),
the whole tagger as one module (:mod:`.tagging_model`) and its file format (:mod:`.file`)."""
