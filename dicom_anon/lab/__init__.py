"""The face lab: evaluation, pool building, encoder training - work that makes or judges the models
the service uses, never run by it.

The service path (``service/``, ``faces.pipeline``, ``deid``, ``rules test``, the trial and the web
console) must not import this package (tests/lab/test_layout.py checks it), so that what a site runs
is only what the pipeline needs and lab code can change without touching it. docs/research/ holds
the record of what this code measured.
"""
