"""Usage records and cost: the per-node store (:mod:`.store`), prices
(:mod:`.prices`) and the ``/v1/usage`` document and its printing (:mod:`.report`).

Nothing is imported here: ``swarmctl`` imports :mod:`.report` alone and must
not pay for :mod:`sqlite3`.
"""
