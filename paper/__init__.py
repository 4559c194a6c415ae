"""The reproduction write-up: ``python -m paper.build`` turns the result files under ``results/``
into ``paper/paper.md`` and its figures (see :mod:`paper.build`).

Modules: :mod:`paper.files` (strict reading of result files), :mod:`paper.stats` (means, intervals
and the words a comparison may use), :mod:`paper.grid` (runs as a rows x columns table),
:mod:`paper.markdown`, :mod:`paper.reference` (the original paper's numbers), :mod:`paper.section`
and one module per section in :mod:`paper.sections`.
"""
