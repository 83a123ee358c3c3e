"""Evaluation, in one place: the metrics (:mod:`.metrics`) and scoring a model file on a labelled split (:mod:`.assess`).

Every number tagstack reports of a model comes from :mod:`.metrics`: the
validation score that picks the best epoch (``train``), a run's test metrics
and the paper's tables (``experiments``), and ``tagstack evaluate``
(:func:`.assess.evaluate_model`, which tags the clips with the same
:class:`~tagstack.inference.tagger.Tagger` as ``tagstack tag``). So the
package sits between ``train`` (which imports it) and ``inference`` (which it
imports); how a result is shown to a person is :mod:`tagstack.report`'s.
"""
