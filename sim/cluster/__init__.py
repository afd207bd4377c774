"""The virtual-clock two-node cluster simulator (issue 3).

Both nodes run the real ``clever_cluster.policy.step`` with a model of the
executor; the network, gateways, DRBD, fence devices, power and daemons are
simulated on one virtual clock, and an independent oracle checks the safety
invariants at every tick. Modules: ``world`` (the tick loop), ``executor``
(executor and fencing coordinator models), ``node``, ``drbd``, ``fencedev``,
``config`` (timings), ``oracle``, ``script`` (the command language),
``scenario`` (scenario folders) and ``search`` (random, exhaustive, shrink).
"""
