"""Per-paper experiments (``pNN_name.py``), their harness and ``run_all.py``.

A package so that ``from experiments.run_all import run_all`` and
``python -m experiments.pNN_name`` work from the repository root; not shipped with tokjax.
"""
