"""Evaluation and tuning: what a steering setting does on a model and a data set.

- :mod:`~sarsteer_guard.evaluation.datasets`: released audio safety sets into manifests.
- :mod:`~sarsteer_guard.evaluation.plan`: items, arms and the one policy serving them.
- :mod:`~sarsteer_guard.evaluation.runner`: arms x items through one Guard, then judging.
- :mod:`~sarsteer_guard.evaluation.results`: the resumable per-item results file.
- :mod:`~sarsteer_guard.evaluation.judges`: did the model answer? (keywords, the
  reference's string match, local models, an OpenAI-compatible endpoint).
- :mod:`~sarsteer_guard.evaluation.metrics`: attack success / benign response rates with
  Wilson intervals.
- :mod:`~sarsteer_guard.evaluation.sweep`: grids, the trade-off frontier, recommendations.
- :mod:`~sarsteer_guard.evaluation.evaluate`: one run end to end.

The CLI commands are ``sarsteer-guard eval``, ``sweep`` and ``dataset``; see
docs/evaluation.md. Modules import torch only where they run the model or a judge.
"""
