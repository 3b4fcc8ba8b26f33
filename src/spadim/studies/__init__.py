"""The study's experiments on top of the run plumbing: the layer sweep (proposal 2), the mask sweep
(proposal 1), the regret of ``--layers auto`` and the whole study in one run. Each module's ``run``
writes tables, figures and a report; nothing below this package imports it."""
