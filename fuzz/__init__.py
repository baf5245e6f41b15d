"""Time-budgeted fuzzing of the reply parser and the message writer.

``python -m fuzz --seconds 60`` runs every target for a share of the budget:
coverage-guided with atheris when it is installed (``pip install atheris``),
otherwise with the built-in mutation loop over ``fuzz/corpus/<target>/``.
A failing input is saved under ``fuzz/crashes/`` and the run exits non-zero.
The bounded, every-run properties are in ``tests/test_fuzz_properties.py``.
"""
