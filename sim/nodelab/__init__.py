"""A complete two-node lab for end-to-end tests: namespaces, DRBD simulator, libvirt, BMCs, real daemons.

Import :class:`clever_cluster.sim.nodelab.lab.NodeLab`. This package file
stays empty on purpose: the helper processes of a node (``vmkeeper``,
``hook``) and the DRBD simulator import single modules of it and must start
fast.
"""
